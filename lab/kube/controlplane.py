"""The lab's control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

All four run in the control plane's namespace (`<lab>-cp`, on the first subnet), as
on a kubeadm control-plane node: the API server with RBAC, the Node authorizer and
NodeRestriction; service account tokens signed by the lab's key; the controller
manager running every default controller (EndpointSlices, garbage collection, node
lifecycle) with per-controller credentials.
"""

from __future__ import annotations

from pathlib import Path

import netaddr

from weft.lab import topology
from weft.lab.kube import layout
from weft.lab.kube.layout import KubeLayout
from weft.lab.kube.pki import ClusterPKI, Identity

ADMIN = Identity("admin", "kubernetes-admin", ("system:masters",))
CONTROLLER_MANAGER = Identity("controller-manager", "system:kube-controller-manager")
SCHEDULER = Identity("scheduler", "system:kube-scheduler")
# The API server's client certificate towards kubelets (logs, exec, port-forward).
KUBELET_CLIENT = Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                          ("system:masters",))


def api_server_identity(plan: topology.LabPlan) -> Identity:
    names = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
             f"kubernetes.default.svc.{layout.CLUSTER_DOMAIN}", layout.CONTROL_PLANE_HOST,
             f"{plan.name}-control-plane", "localhost", "127.0.0.1",
             layout.control_plane_address(plan), _first_service_ip())
    return Identity("apiserver", "kube-apiserver", server_names=names)


def node_identity(node: str) -> Identity:
    """A kubelet as the Node authorizer knows it."""
    return Identity(f"kubelet-{node}", f"system:node:{node}", ("system:nodes",))


def _first_service_ip() -> str:
    return str(netaddr.IPNetwork(layout.SERVICE_CIDR)[1])


def make_pki(kube: KubeLayout, plan: topology.LabPlan) -> ClusterPKI:
    """The CA, every identity's certificate, and the control plane's kubeconfigs."""
    pki = ClusterPKI(kube.pki_dir)
    pki.create_ca()
    server = layout.api_server_url(plan)
    for identity in (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KUBELET_CLIENT,
                     api_server_identity(plan), *(node_identity(n.name) for n in plan.nodes)):
        pki.issue(identity)
    pki.kubeconfig(kube.admin_kubeconfig, ADMIN, server)
    for identity in (CONTROLLER_MANAGER, SCHEDULER):
        # In the control plane's own namespace: straight to the local API server.
        pki.kubeconfig(kube.state_dir / f"{identity.file}.conf", identity,
                       f"https://127.0.0.1:{layout.API_PORT}")
    return pki


def etcd_command(kube: KubeLayout) -> list[str]:
    local = "http://127.0.0.1"
    return [str(kube.bin_dir / "etcd"), "--name", "cp",
            "--data-dir", str(kube.disk_dir / "etcd"),
            "--listen-client-urls", f"{local}:2379", "--advertise-client-urls", f"{local}:2379",
            "--listen-peer-urls", f"{local}:2380",
            "--initial-advertise-peer-urls", f"{local}:2380",
            "--initial-cluster", f"cp={local}:2380", "--listen-metrics-urls", f"{local}:2381",
            "--log-level", "warn"]


def api_server_command(kube: KubeLayout, plan: topology.LabPlan) -> list[str]:
    pki = kube.pki_dir
    return [str(kube.bin_dir / "kube-apiserver"),
            "--etcd-servers", "http://127.0.0.1:2379",
            "--bind-address", "0.0.0.0", "--secure-port", str(layout.API_PORT),
            "--advertise-address", layout.control_plane_address(plan),
            "--service-cluster-ip-range", layout.SERVICE_CIDR,
            "--tls-cert-file", str(pki / "apiserver.crt"),
            "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--kubelet-client-certificate", str(pki / "apiserver-kubelet-client.crt"),
            "--kubelet-client-key", str(pki / "apiserver-kubelet-client.key"),
            "--kubelet-preferred-address-types", "InternalIP",
            "--service-account-issuer",
            f"https://kubernetes.default.svc.{layout.CLUSTER_DOMAIN}",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--authorization-mode", "Node,RBAC",
            "--enable-admission-plugins", "NodeRestriction",
            "--allow-privileged=true",
            "--profiling=false",
            "--v", "1"]


def controller_manager_command(kube: KubeLayout) -> list[str]:
    pki = kube.pki_dir
    conf = str(kube.state_dir / "controller-manager.conf")
    return [str(kube.bin_dir / "kube-controller-manager"),
            "--kubeconfig", conf, "--authentication-kubeconfig", conf,
            "--authorization-kubeconfig", conf,
            "--bind-address", "127.0.0.1", "--leader-elect=false",
            "--use-service-account-credentials=true",
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(pki / "ca.crt"),
            "--cluster-signing-cert-file", str(pki / "ca.crt"),
            "--cluster-signing-key-file", str(pki / "ca.key"),
            "--service-cluster-ip-range", layout.SERVICE_CIDR,
            # weft hands out pod addresses itself: no podCIDR per Node.
            "--allocate-node-cidrs=false",
            "--controllers", "*", "--v", "1"]


def scheduler_command(kube: KubeLayout) -> list[str]:
    conf = str(kube.state_dir / "scheduler.conf")
    return [str(kube.bin_dir / "kube-scheduler"), "--kubeconfig", conf,
            "--authentication-kubeconfig", conf, "--authorization-kubeconfig", conf,
            "--bind-address", "127.0.0.1", "--leader-elect=false", "--v", "1"]


def log(kube: KubeLayout, component: str) -> Path:
    return kube.log_dir / f"{component}.log"
