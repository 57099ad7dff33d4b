"""Taking a Kubernetes lab's nodes apart: what `weft lab down` does beyond a netns lab.

The order matters: kubelets first (so nothing is restarted), then the pods'
processes, found by the node's cgroups since they live in pods' own namespaces; the
namespaces and processes go as in any lab; then the cgroups, the disk directory,
and the machine-wide sysctls kubelet changed, put back by the last lab to go.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from weft.lab import topology
from weft.lab.kube import layout, node
from weft.lab.processes import alive, processes_in, stop
from weft.lab.state import LabState

Progress = Callable[[str], None]
# What kubelet sets machine-wide at start (not per namespace): put back at the last down.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                   "kernel/keys/root_maxbytes")
SAVED_SYSCTLS = layout.DISK_ROOT / "machine-sysctls.json"


def stop_node(state: LabState, name: str) -> None:
    """One node's kubelet, pods, containerd and root, in that order."""
    kubelet = state.processes.pop(f"kubelet-{name}", 0)
    stop({kubelet} - {0}, grace=0, sig=signal.SIGKILL)
    stop(node.cgroup_processes(layout.node_cgroup(name)), grace=2)
    stop(processes_in([name]) | {state.processes.pop(f"{p}-{name}", 0)
                                 for p in ("containerd", "root")} - {0})
    state.save()


def stop_nodes(name: str, state: LabState | None, progress: Progress) -> None:
    """Before the namespaces go: kubelets first (so nothing restarts), then every
    pod's processes (they live in the node's cgroups, in pods' own namespaces)."""
    kubelets = {pid for key, pid in (state.processes.items() if state else ())
                if key.startswith("kubelet-") and alive(pid)}
    stop(kubelets, grace=0, sig=signal.SIGKILL)
    pods = set()
    for cgroup in node_cgroups(name):
        pods |= node.cgroup_processes(cgroup)
    if pods:
        progress(f"stopping {len(pods)} container processes")
        stop(pods, grace=2)


def remove_node_state(name: str, progress: Progress) -> None:
    """After every process is gone: cgroups, the disk directory, the machine's sysctls."""
    for cgroup in node_cgroups(name):
        busy = node.remove_cgroup_root(cgroup)
        if busy:
            progress(f"cgroups still busy: {', '.join(busy)}")
    disk = layout.DISK_ROOT / name
    if disk.exists():
        progress(f"removing {disk}")
        subprocess.run(["rm", "-rf", "--one-file-system", str(disk)], check=False)
    _restore_machine_sysctls()


def node_cgroups(name: str) -> list[str]:
    """The cgroup roots of lab `name`'s nodes, found on the machine (so also after a
    failed up whose state is gone)."""
    found = set()
    for controller in node.CGROUP_CONTROLLERS:
        with contextlib.suppress(OSError):
            for entry in (layout.CGROUP_ROOT / controller).iterdir():
                node_name = entry.name.removeprefix("weft-lab-")
                if node_name != entry.name and topology.owned_by(name, node_name):
                    found.add(f"/{entry.name}")
    return sorted(found)


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


def save_machine_sysctls() -> None:
    """The first Kubernetes lab on the machine saves what kubelet will change."""
    if SAVED_SYSCTLS.exists():
        return
    values = {key: _sysctl_path(key).read_text().strip() for key in KUBELET_SYSCTLS
              if _sysctl_path(key).exists()}
    SAVED_SYSCTLS.parent.mkdir(parents=True, exist_ok=True)
    SAVED_SYSCTLS.write_text(json.dumps(values, indent=1) + "\n")


def _restore_machine_sysctls() -> None:
    """The last Kubernetes lab to go puts them back."""
    others = [d for d in layout.DISK_ROOT.iterdir() if d.is_dir()] \
        if layout.DISK_ROOT.exists() else []
    if others or not SAVED_SYSCTLS.exists():
        return
    for key, value in json.loads(SAVED_SYSCTLS.read_text()).items():
        with contextlib.suppress(OSError):
            _sysctl_path(key).write_text(value)
    SAVED_SYSCTLS.unlink()
    with contextlib.suppress(OSError):
        os.rmdir(layout.DISK_ROOT)
