"""Where a Kubernetes lab keeps its files, and what it names things.

Small state (certificates, kubeconfigs, logs) lives with the rest of the lab in
/run/weft-lab/<name>/kube; what grows (etcd, each node's root overlay, containerd's
images and kubelet's pods) on disk in /var/lib/weft-lab/<name>. `weft lab down`
removes both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from weft.lab import topology
from weft.lab.state import lab_root

DISK_ROOT = Path(os.environ.get("WEFT_LAB_DISK_ROOT", "/var/lib/weft-lab"))
CACHE = Path(os.environ.get("WEFT_KUBE_CACHE", "/var/cache/weft/kubernetes"))
API_PORT = 6443
SERVICE_CIDR = "10.96.0.0/16"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
# The API server's name in manifests/weft.yaml's ConfigMap; every node of every lab
# resolves it to its own lab's control plane (/etc/hosts in the node's root).
CONTROL_PLANE_HOST = "weft-control-plane"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class KubeLayout:
    name: str
    bin_dir: Path
    images_dir: Path

    @property
    def state_dir(self) -> Path:
        return lab_root(self.name) / "kube"

    @property
    def disk_dir(self) -> Path:
        return DISK_ROOT / self.name

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state_dir / "admin.conf"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def node_dir(self, node: str) -> Path:
        return self.disk_dir / "nodes" / node

    @property
    def control_plane(self) -> str:
        return f"{self.name}-cp"


def control_plane_address(plan: topology.LabPlan) -> str:
    """The control plane's address: on the first subnet, below the nodes' (.10 up)."""
    return str(plan.subnets[0].cidr[5])


def api_server_url(plan: topology.LabPlan) -> str:
    return f"https://{control_plane_address(plan)}:{API_PORT}"


def default_bin_dir() -> Path:
    return CACHE / "current" / "bin"


def node_cgroup(node: str) -> str:
    """kubelet's cgroupRoot: one per node, so no kubelet touches another's pods."""
    return f"/weft-lab-{node}"
