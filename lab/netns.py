"""Named network namespaces for the lab and the tests, and running commands in them.

Commands run through `nsenter --net=` rather than `ip netns exec`: the latter
remounts /sys and hides the cgroup mounts a container runtime needs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from weft.cni.netns import entered

NETNS_DIR = "/run/netns"


def path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def create(name: str) -> str:
    """Create a namespace with its loopback up; returns its path."""
    pr_netns.create(name)
    run(name, ["ip", "link", "set", "lo", "up"])
    return path(name)


def remove(name: str) -> None:
    """Remove a namespace; links inside it go with it. Missing is fine."""
    with contextlib.suppress(FileNotFoundError):
        pr_netns.remove(name)


def listed(prefix: str) -> list[str]:
    return sorted(n for n in pr_netns.listnetns() if n.startswith(prefix))


def prefix_command(name: str) -> list[str]:
    return ["nsenter", f"--net={path(name)}"]


def run(name: str, command: Sequence[str], *, check: bool = True, timeout: float = 60,
        env: Mapping[str, str] | None = None, input: bytes | None = None,
        ) -> subprocess.CompletedProcess[bytes]:
    """Run a command inside namespace `name` and capture its output."""
    return subprocess.run([*prefix_command(name), *command], check=check, timeout=timeout,
                          env=dict(env) if env is not None else None, input=input,
                          capture_output=True)


def popen(name: str, command: Sequence[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*prefix_command(name), *command], **kwargs)


@contextlib.contextmanager
def iproute(name: str) -> Iterator[IPRoute]:
    """A netlink socket bound to namespace `name` (this thread leaves it at once)."""
    with entered(path(name)):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def link(name: str, ifname: str) -> dict[str, Any]:
    """An interface's attributes in namespace `name`: ifname, mtu, address, state."""
    with iproute(name) as ipr:
        msg = ipr.link("get", ifname=ifname)[0]
    return {"ifname": msg.get("ifname"), "mtu": msg.get("mtu"), "address": msg.get("address"),
            "state": msg.get("state"), "index": msg["index"]}
