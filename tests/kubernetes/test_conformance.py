"""Upstream's own network tests (e2e.test under ginkgo) judge weft on a real cluster.

A Kubernetes lab of its own (3 nodes over 2 subnets), in the same xdist group as the
other cluster tests, so the two clusters never run at once on a 2-core machine.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from weft.lab.kube import e2e, layout
from weft.lab.state import LabState, load

from .test_cluster import assert_nothing_left

pytestmark = [pytest.mark.kubernetes, pytest.mark.integration,
              pytest.mark.xdist_group("kubernetes")]

# [sig-network] specs tagged [Conformance] in Kubernetes 1.37.2
# (test/conformance/testdata/conformance.yaml).
CONFORMANCE_SPECS = 47


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    if not (layout.default_bin_dir() / "e2e.test").exists():
        pytest.skip("the Kubernetes build is missing: run 'weft lab build-kubernetes'")
    name = f"c{uuid.uuid4().hex[:6]}"
    up = subprocess.run([sys.executable, "-m", "weft", "lab", "up", "--kubernetes",
                         "--name", name, "--pods-per-node", "0"],
                        capture_output=True, text=True, timeout=1200)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        state = load(name)
        assert state is not None
        yield state
    finally:
        subprocess.run([sys.executable, "-m", "weft", "lab", "down", "--name", name],
                       capture_output=True, timeout=300, check=True)
        assert_nothing_left(name)


def run_e2e(lab: LabState, *flags: str) -> list[tuple[str, str, float]]:
    proc = subprocess.run([sys.executable, "-m", "weft", "lab", "e2e", "--name", lab.name,
                           "--procs", "4", *flags], capture_output=True, text=True,
                          timeout=3600)
    junit = next(line.rsplit("JUnit: ", 1)[1].strip() for line in proc.stdout.splitlines()
                 if "JUnit: " in line)
    specs = [s for s in e2e.results(Path(junit)) if s[1] != "skipped"]
    failed = [name for name, result, _ in specs if result == "failed"]
    assert proc.returncode == 0 and failed == [], (failed, proc.stdout[-4000:])
    assert "SUCCESS!" in proc.stdout
    return specs


def test_every_sig_network_conformance_spec_passes(lab):
    specs = run_e2e(lab)
    assert len(specs) == CONFORMANCE_SPECS, [name for name, _, _ in specs]


def test_granular_service_checks_pass(lab):
    specs = run_e2e(lab, "--focus", r"\[sig-network\] Networking Granular Checks: Services",
                    "--skip", r"\[Slow\]|\[Disruptive\]|\[Feature:")
    # pod, node and endpoint to Service over http and udp, endpoint updates, ...
    assert len(specs) >= 14, [name for name, _, _ in specs]
