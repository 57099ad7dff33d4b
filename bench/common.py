"""Shared pieces of the benchmarks: a throwaway node namespace and statistics."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import uuid
from collections.abc import Iterator

from weft.lab import netns


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {"p50": percentile(samples, 50), "p90": percentile(samples, 90),
            "mean": statistics.fmean(samples)}


def machine() -> str:
    cpu = "unknown cpu"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{platform.node()}: {os.cpu_count()} cores ({cpu}), kernel {platform.release()}, "
            f"Python {platform.python_version()}")


@contextlib.contextmanager
def namespace(prefix: str = "wb") -> Iterator[str]:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def reexec_inside(ns: str, argv: list[str]) -> int:
    """Run this benchmark again inside `ns`, so plugins are exec'd as kubelet does it."""
    return subprocess.call(["nsenter", f"--net={netns.path(ns)}", sys.executable, *argv])
