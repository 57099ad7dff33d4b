"""Traffic probes run from inside namespaces (or containers): ping, and TCP through
busybox nc.

busybox is what a pod image has, so the same probes work in bare namespaces and
in podman containers. (busybox-static's wget crashes here; nc does not.)
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from weft.lab import netns


def ping(ns: str, address: str, count: int = 1, wait: float = 2, size: int | None = None,
         dont_fragment: bool = False, prefix: Sequence[str] | None = None) -> bool:
    """True when `address` answers an ICMP echo from namespace `ns`."""
    # Options both iputils' and busybox's ping know; -M only iputils (bare namespaces).
    command = ["ping", "-q", "-c", str(count), "-W", str(wait), "-i", "0.2"]
    if size is not None:
        command += ["-s", str(size)]
    if dont_fragment:
        command += ["-M", "do"]
    return _run(ns, [*command, address], prefix, timeout=count * wait + 5).returncode == 0


def tcp_request(ns: str, address: str, port: int, wait: int = 2,
                prefix: Sequence[str] | None = None) -> str:
    """What the server at address:port answers, or '' when nothing does."""
    proc = _run(ns, ["busybox", "nc", "-w", str(wait), address, str(port)], prefix,
                timeout=wait + 5)
    return proc.stdout.decode(errors="replace").strip()


def _run(ns: str, command: Sequence[str], prefix: Sequence[str] | None,
         timeout: float) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run([*(prefix or netns.prefix_command(ns)), *command],
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, b"", b"")
