"""One Kubernetes lab node: its root filesystem, containerd and kubelet.

A node is the lab's node namespace plus a mount namespace of its own (node-root.sh),
so it has what a real node has at the usual paths: /etc/cni/net.d, /opt/cni/bin with
the reference plugins a node image ships, /var/lib/kubelet, /run/containerd, and
/etc/hosts naming its control plane. containerd and kubelet join both namespaces
with nsenter, so kubelet's volume mounts are containerd's too. Each kubelet has its
own cgroup root: two kubelets under one /kubepods kill each other's pods.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from weft.lab import topology
from weft.lab.kube import components, layout
from weft.lab.kube.controlplane import node_identity
from weft.lab.kube.layout import KubeLayout
from weft.lab.kube.pki import ClusterPKI

NODE_ROOT_SCRIPT = Path(__file__).parent / "node-root.sh"
REFERENCE_PLUGINS = Path("/usr/lib/cni")
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
# The cgroup v1 hierarchies kubelet's cgroupfs driver writes in.
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio",
                      "pids", "systemd", "hugetlb", "net_cls", "perf_event")


def containerd_config() -> str:
    runc = shutil.which("runc") or "/usr/sbin/runc"
    return f"""version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  # Nothing can be pulled here: every image is imported at node start.
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{components.PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  # Root here lacks CAP_SYS_RESOURCE, so no process may lower its OOM score: kubelet
  # asks -998 for every sandbox, which runc cannot set. Keep scores at containerd's own.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
"""


def kubelet_config(node: str) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # This machine's cgroups are v1 (hybrid): kubelet 1.35+ refuses them by default.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": layout.node_cgroup(node),
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}},
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [layout.DNS_SERVICE_IP],
        "clusterDomain": layout.CLUSTER_DOMAIN,
        "resolvConf": "/etc/kubernetes/resolv.conf",
        "failSwapOn": False,
        # A preloaded image can never be pulled again: never collect or evict for disk.
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {"nodefs.available": "0%", "nodefs.inodesFree": "0%",
                         "imagefs.available": "0%"},
        "serializeImagePulls": False,
        "healthzBindAddress": "127.0.0.1",
        "readOnlyPort": 0,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "staticPodPath": "",
    }


def prepare(kube: KubeLayout, plan: topology.LabPlan, node: topology.NodePlan,
            pki: ClusterPKI) -> None:
    """The node's files, written into its overlay's upper layer before it is mounted."""
    directory = kube.node_dir(node.name)
    upper = directory / "upper"
    data = directory / "data"
    etc = upper / "etc"
    (etc / "kubernetes" / "pki").mkdir(parents=True, exist_ok=True)
    (etc / "containerd").mkdir(parents=True, exist_ok=True)
    identity = node_identity(node.name)
    for name in ("ca.crt", f"{identity.file}.crt", f"{identity.file}.key"):
        shutil.copy2(pki.path(name), etc / "kubernetes" / "pki" / name)
    pki.kubeconfig(etc / "kubernetes" / "kubelet.conf", identity, layout.api_server_url(plan),
                   files_at=Path("/etc/kubernetes/pki"))
    # No resolver exists in the lab: CoreDNS answers for the cluster and for nothing else,
    # and the node itself (containerd, should it try a pull) asks no one outside.
    for resolv in (etc / "kubernetes" / "resolv.conf", etc / "resolv.conf"):
        resolv.write_text("# the lab has no upstream resolver\n")
    cp = layout.control_plane_address(plan)
    (etc / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{node.address}\t{node.name}\n{cp}\t{layout.CONTROL_PLANE_HOST} "
        f"{plan.name}-control-plane\n")
    (etc / "hostname").write_text(f"{node.name}\n")
    (etc / "containerd" / "config.toml").write_text(containerd_config())
    kubelet_dir = data / "var" / "lib" / "kubelet"
    kubelet_dir.mkdir(parents=True, exist_ok=True)
    (kubelet_dir / "config.yaml").write_text(
        yaml.safe_dump(kubelet_config(node.name), sort_keys=False))
    # The reference plugins a node image ships (portmap, loopback, ...).
    plugins = data / "opt" / "cni" / "bin"
    plugins.mkdir(parents=True, exist_ok=True)
    for plugin in REFERENCE_PLUGINS.iterdir():
        shutil.copy2(plugin, plugins / plugin.name)
    make_cgroup_root(layout.node_cgroup(node.name))


def root_command(kube: KubeLayout, node: str) -> list[str]:
    """The node's root holder, run in its network namespace."""
    shared = sorted({str(kube.bin_dir.resolve()), str(kube.images_dir.resolve())})
    return ["unshare", "--mount", "--propagation", "private", "sh", str(NODE_ROOT_SCRIPT),
            str(kube.node_dir(node)), *shared]


def enter(holder: int) -> list[str]:
    """The prefix that runs a command on the node: its network and mount namespaces."""
    return ["nsenter", "-t", str(holder), "-n", "-m"]


def wait_root(holder: int, timeout: float = 30) -> None:
    """Until the holder has mounted the node's root and sleeps on it."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{holder}/comm").read_text().strip() == "sleep":
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the node's root filesystem was not mounted")
        time.sleep(0.05)


def in_root(holder: int, path: str) -> Path:
    """A path inside the node, seen from the machine."""
    return Path(f"/proc/{holder}/root{path}")


def containerd_command(kube: KubeLayout) -> list[str]:
    return [str(kube.bin_dir / "containerd"), "--config", "/etc/containerd/config.toml"]


def kubelet_command(kube: KubeLayout, node: topology.NodePlan) -> list[str]:
    return [str(kube.bin_dir / "kubelet"), "--config", "/var/lib/kubelet/config.yaml",
            "--kubeconfig", "/etc/kubernetes/kubelet.conf",
            "--hostname-override", node.name, "--node-ip", node.address, "--v", "1"]


def environment(kube: KubeLayout) -> dict[str, str]:
    """containerd finds its shim on PATH."""
    return {**os.environ, "PATH": f"{kube.bin_dir}:{os.environ.get('PATH', '')}"}


def _hierarchies(cgroup: str) -> Iterator[tuple[Path, Path]]:
    """(hierarchy, the cgroup in it) for each v1 hierarchy this machine mounts."""
    for controller in CGROUP_CONTROLLERS:
        hierarchy = layout.CGROUP_ROOT / controller
        if hierarchy.is_dir():
            yield hierarchy, hierarchy / cgroup.lstrip("/")


def make_cgroup_root(cgroup: str) -> None:
    for hierarchy, target in _hierarchies(cgroup):
        target.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            # A new v1 cpuset has no CPUs and no memory nodes until it is given its parent's.
            for key in ("cpuset.cpus", "cpuset.mems"):
                (target / key).write_text((hierarchy / key).read_text())


def cgroup_processes(cgroup: str) -> set[int]:
    """Every process under the node's cgroup root (its pods' containers)."""
    pids: set[int] = set()
    for _, top in _hierarchies(cgroup):
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_cgroup_root(cgroup: str, timeout: float = 10) -> list[str]:
    """Remove the node's cgroups, deepest first; returns the ones still busy."""
    left = []
    for _, top in _hierarchies(cgroup):
        if not top.is_dir():
            continue
        below = sorted((p for p in top.rglob("*") if p.is_dir()),
                       key=lambda p: len(p.parts), reverse=True)
        directories = [*below, top]
        for directory in directories:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        left.append(str(directory))
                        break
                    time.sleep(0.1)
    return left
