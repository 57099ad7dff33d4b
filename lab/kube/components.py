"""What `weft lab build-kubernetes` builds: upstream components, their versions and packages.

Kubernetes 1.37 is the newest release the module proxy serves, and it still starts
on a cgroup v1 host when the kubelet says `failCgroupV1: false` (removal is planned
for 1.38 at the earliest, KEP-5573). containerd 2.4 is the line tested against
1.37; etcd 3.7 is what 1.37's own client libraries are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KUBERNETES_VERSION = "1.37.2"


@dataclass(frozen=True)
class Component:
    """One wrapper module under lab/kube/gomod/<name>: what it requires, what it builds."""

    name: str
    module: str
    version: str
    # binary name -> Go package
    binaries: dict[str, str]
    tags: tuple[str, ...] = ()
    # binary name -> Go package whose tests it is (`go test -c`)
    tests: dict[str, str] = field(default_factory=dict)


def kubernetes(version: str) -> Component:
    return Component("kubernetes", "k8s.io/kubernetes", f"v{version}", {
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        "kubelet": "k8s.io/kubernetes/cmd/kubelet",
        "kubectl": "k8s.io/kubernetes/cmd/kubectl",
        # What a kind node runs besides kubelet: kind's kubeadm makes the control plane,
        # and kube-proxy runs when the kind config says kubeProxyMode: iptables.
        "kubeadm": "k8s.io/kubernetes/cmd/kubeadm",
        "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
        "agnhost": "k8s.io/kubernetes/test/images/agnhost",
        # At the version k8s.io/kubernetes pins, as upstream's e2e runs do.
        "ginkgo": "github.com/onsi/ginkgo/v2/ginkgo",
    }, tests={"e2e.test": "k8s.io/kubernetes/test/e2e"})


ETCD = Component("etcd", "go.etcd.io/etcd/server/v3", "v3.7.3",
                 {"etcd": "go.etcd.io/etcd/server/v3"})
# The tags leave out snapshotters that need cgo and libraries a node does not have.
CONTAINERD = Component("containerd", "github.com/containerd/containerd/v2", "v2.4.2", {
    "containerd": "github.com/containerd/containerd/v2/cmd/containerd",
    "containerd-shim-runc-v2": "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
    "ctr": "github.com/containerd/containerd/v2/cmd/ctr",
}, tags=("no_btrfs", "no_devmapper", "no_zfs"))
CRI_TOOLS = Component("cri-tools", "sigs.k8s.io/cri-tools", "v1.37.0",
                      {"crictl": "sigs.k8s.io/cri-tools/cmd/crictl"})
COREDNS = Component("coredns", "github.com/coredns/coredns", "v1.15.0",
                    {"coredns": "github.com/coredns/coredns"})
# kind's CLI, and the node files its node image carries (images/base in its module).
KIND = Component("kind", "sigs.k8s.io/kind", "v0.33.0", {"kind": "sigs.k8s.io/kind"})
# The etcd and CoreDNS that kubeadm 1.37.2 deploys (`kubeadm config images list`), for
# the kind node image only: older than the lab's own, so built apart from them.
KIND_ETCD = Component("kind-etcd", "go.etcd.io/etcd/server/v3", "v3.7.0",
                      {"etcd": "go.etcd.io/etcd/server/v3"})
KIND_COREDNS = Component("kind-coredns", "github.com/coredns/coredns", "v1.14.6",
                         {"coredns": "github.com/coredns/coredns"})

# What upstream e2e of 1.37 runs (test/images/agnhost/VERSION), and the tag
# manifests/examples/connectivity.yaml uses.
AGNHOST_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
# The other images upstream's network e2e specs of 1.37 run (test/utils/image/manifest.go).
BUSYBOX_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
NGINX_IMAGE = "registry.k8s.io/e2e-test-images/nginx:1.27.0-2"
GLIBC_DNS_IMAGE = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1"
# containerd 2.4's default sandbox image, from build/pause of the same Kubernetes.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"
COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.15.0"
# manifests/weft.yaml says weft:dev, which containerd reads as docker.io/library/weft:dev.
WEFT_IMAGE = "docker.io/library/weft:dev"


def all_components(version: str) -> list[Component]:
    return [kubernetes(version), ETCD, CONTAINERD, CRI_TOOLS, COREDNS, KIND]
