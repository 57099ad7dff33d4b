"""weft on kind, as docs/kind.md tells users: kind with podman, the node image of
`weft lab build-kind-image`, weft's image from the Dockerfile.

Each test makes its own cluster (a unique name, a podman network of its own) and
deletes it after, also when it fails; all tests run in one xdist worker, so no two
kind clusters run at once on a 2-core machine. Traffic stays on the cluster's own
podman network: pods, Services and NodePorts are reached from inside the nodes.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import netaddr
import pytest
import yaml

from weft.lab.kind import nodeimage
from weft.lab.kind import podman as kind_podman
from weft.lab.kube import components, images, layout

pytestmark = [pytest.mark.kind, pytest.mark.integration, pytest.mark.xdist_group("kind")]

REPO = Path(__file__).resolve().parents[2]
BIN = layout.default_bin_dir()
IMAGES = BIN.parent / "images"
POD_POOL = netaddr.IPNetwork("10.244.0.0/16")
CLUSTER_LABEL = "io.x-k8s.kind.cluster"
READY_SECONDS = 300
# What the uninstall in docs/kind.md removes from every node.
WEFT_FILES = ("/opt/weft", "/opt/cni/bin/weft", "/opt/cni/bin/weft-ipam", "/opt/cni/bin/.weft",
              "/etc/cni/net.d/10-weft.conflist", "/etc/cni/net.d/weft-kubeconfig",
              "/var/lib/weft", "/run/weft")


@dataclass
class Kind:
    name: str
    env: dict[str, str]
    work: Path
    kube_proxy_mode: str

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        out = self._run(args, timeout)
        if check:
            assert out.returncode == 0, (f"{' '.join(args)}:\n"
                                         f"{out.stdout[-2000:]}{out.stderr[-3000:]}")
        return out.stdout

    def succeeds(self, *args: str, timeout: float = 600) -> bool:
        return self._run(args, timeout).returncode == 0

    def _run(self, args: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def kind(self, *args: str, **kw) -> str:
        return self.run(str(BIN / "kind"), *args, "--name", self.name, **kw)

    def kubectl(self, *args: str, **kw) -> str:
        return self.run(str(BIN / "kubectl"), *args, **kw)

    def on_node(self, node: str, *args: str, **kw) -> str:
        return self.run("podman", "exec", node, *args, **kw)

    def nodes(self) -> list[str]:
        return self.kind("get", "nodes").split()


def _missing() -> str | None:
    if not (BIN / "kind").exists():
        return "kind is not built: run 'weft lab build-kind-image'"
    podman = images.Podman(layout.CACHE)
    if podman("image", "exists", nodeimage.image_name(components.KUBERNETES_VERSION),
              check=False).returncode != 0:
        return "the kind node image is missing: run 'weft lab build-kind-image'"
    if not Path("/usr/lib/podman/aardvark-dns").exists():
        return "kind on podman needs netavark and aardvark-dns (apt-get install aardvark-dns)"
    return None


@pytest.fixture(params=["none", "iptables"], ids=["weft-proxy", "kube-proxy"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kind]:
    """A kind cluster made from manifests/kind.yaml, with kubeProxyMode as given."""
    if reason := _missing():
        pytest.skip(reason)
    name = f"wk{uuid.uuid4().hex[:6]}"
    kind = Kind(name, {**kind_podman.environment(f"{name}-net"),
                       "KUBECONFIG": str(tmp_path / "kubeconfig")}, tmp_path, request.param)
    config = yaml.safe_load((REPO / "manifests" / "kind.yaml").read_text())
    config["networking"]["kubeProxyMode"] = request.param
    (tmp_path / "kind.yaml").write_text(yaml.safe_dump(config))
    # kind mounts the host's /lib/modules into every node; a host without modules
    # (this VM's kernel has none built as modules) has no such directory.
    modules = Path("/lib/modules")
    made_modules = not modules.exists()
    modules.mkdir(exist_ok=True)
    try:
        kind.kind("create", "cluster", "--config", str(tmp_path / "kind.yaml"),
                  "--image", nodeimage.image_name(components.KUBERNETES_VERSION), timeout=900)
        yield kind
    finally:
        containers = kind.run("podman", "ps", "-aq", "--filter", f"label={CLUSTER_LABEL}={name}",
                              check=False).split()
        made = [kind.run("podman", "inspect", "--format",
                         "{{.Id}} {{.Name}} {{.NetworkSettings.SandboxKey}}", c).split()
                for c in containers]
        kind.kind("delete", "cluster", timeout=300, check=False)
        kind_podman.delete_network(f"{name}-net")
        if made_modules:
            modules.rmdir()
        assert_nothing_left(kind, made)


def assert_nothing_left(kind: Kind, made: list[list[str]]) -> None:
    """kind delete cluster and the network's removal leave none of the nodes' containers,
    volumes, network namespaces or cgroups, nor the network (nor, with no netavark
    network left, netavark's chains)."""
    assert kind.run("podman", "ps", "-aq", "--filter", f"label={CLUSTER_LABEL}={kind.name}") == ""
    for _, node, *sandbox in made:
        # kind labels each node's /var volume with the node's name.
        assert kind.run("podman", "volume", "ls", "-q", "--filter", f"label={node}") == ""
        assert not any(Path(netns).exists() for netns in sandbox)
    assert subprocess.run(["podman", "network", "exists", f"{kind.name}-net"], env=kind.env,
                          capture_output=True).returncode != 0
    networks = set(kind.run("podman", "network", "ls", "--format", "{{.Name}}").split())
    if networks <= {kind_podman.DEFAULT_NETWORK}:
        for tool in ("iptables", "ip6tables"):
            for table in ("nat", "filter"):
                assert "NETAVARK" not in kind.run(tool, "-t", table, "-S")
    cgroups = [p for c, *_ in made for p in Path("/sys/fs/cgroup").glob(f"*/libpod_parent/*{c}*")]
    assert cgroups == []


def test_weft_on_kind(cluster: Kind) -> None:
    """docs/kind.md, step by step."""
    kube_proxy = cluster.kube_proxy_mode == "iptables"
    # Install: weft's image from the Dockerfile (weft lab build-kubernetes built it),
    # loaded with kind load image-archive; agnhost too, as nothing can be pulled here.
    for archive in ("weft.tar", "agnhost.tar"):
        cluster.kind("load", "image-archive", str(IMAGES / archive))
    started = time.monotonic()
    cluster.kubectl("apply", "-f", str(weft_manifest(cluster)))
    if kube_proxy:
        cluster.kubectl("-n", "kube-system", "delete", "daemonset", "weft-proxy")
    daemonsets = ["weft-node"] + ([] if kube_proxy else ["weft-proxy"])
    waits = [["-n", "kube-system", "rollout", "status", f"ds/{ds}", "--timeout=5m"]
             for ds in daemonsets] + [["wait", "--for=condition=Ready", "nodes", "--all",
                                        "--timeout=5m"]]
    for wait in waits:
        if not cluster.succeeds(str(BIN / "kubectl"), *wait):
            pytest.fail(f"kubectl {' '.join(wait)} failed after "
                        f"{time.monotonic() - started:.0f}s:\n{diagnosis(cluster)}")
    assert time.monotonic() - started < READY_SECONDS
    nodes = cluster.nodes()
    assert len(nodes) == 3
    blocks = kubectl_json(cluster, "get", "ipamblocks")["items"]
    assert {b["spec"]["node"] for b in blocks} == set(nodes)
    assert kubectl_json(cluster, "get", "ippools", "default")["spec"]["cidr"] == "10.244.0.0/16"
    if kube_proxy:
        ds = kubectl_json(cluster, "-n", "kube-system", "get", "ds", "kube-proxy")
        assert ds["status"]["numberReady"] == 3

    # Check it with a workload.
    cluster.kubectl("apply", "-f", str(REPO / "manifests" / "examples" / "connectivity.yaml"))
    cluster.kubectl("-n", "weft-check", "rollout", "status", "deploy/echo", "--timeout=5m")
    pods = {p["metadata"]["name"]: (p["status"]["podIP"], p["spec"]["nodeName"])
            for p in kubectl_json(cluster, "-n", "weft-check", "get", "pods", "-l", "app=echo")
            ["items"]}
    assert {node for _, node in pods.values()} == set(nodes)
    assert all(netaddr.IPAddress(ip) in POD_POOL for ip, _ in pods.values())
    by_ip = {ip: name for name, (ip, _) in pods.items()}
    failed = [(pod, ip) for pod in pods for ip, answering in by_ip.items()
              if curl(cluster, pod, f"http://{ip}:8080/hostname") != answering]
    if failed:
        dataplane = node_dataplane(cluster, nodes)
        time.sleep(30)
        later = [(pod, ip) for pod, ip in failed
                 if curl(cluster, pod, f"http://{ip}:8080/hostname") != by_ip[ip]]
        pytest.fail(f"pod to pod failed: {failed} ({pods}); 30 s later still {later}; "
                    f"the nodes then:\n{dataplane}\n{diagnosis(cluster)}")
    for pod in pods:
        assert {curl(cluster, pod, "http://echo/hostname") for _ in range(6)} <= set(pods)
    node_ips = {n["metadata"]["name"]: internal_ip(n)
                for n in kubectl_json(cluster, "get", "nodes")["items"]}
    control_plane = f"{cluster.name}-control-plane"
    worker = f"{cluster.name}-worker"
    answer = cluster.on_node(control_plane, "curl", "-s", "--max-time", "3",
                             f"http://{node_ips[worker]}:30080/hostname")
    assert answer in pods

    # What weft did on a node.
    assert cluster.on_node(worker, "ip", "route", "show", "proto", "88").strip()
    assert "WEFT-POSTROUTING" in cluster.on_node(worker, "iptables-nft-save")
    # The runtime the CNI shim falls back to when no agent answers starts on a node
    # that has no Python and none of the libraries Python loads.
    loaded = cluster.on_node(worker, "env", "LD_LIBRARY_PATH=/opt/weft/current/lib",
                             "/opt/weft/current/bin/python3", "-c",
                             "import pyexpat, ssl, sqlite3, ctypes, weft.cli; print('loaded')")
    assert loaded.strip() == "loaded"

    # Uninstall, keeping the cluster.
    cluster.kubectl("delete", "-f", str(REPO / "manifests" / "examples" / "connectivity.yaml"),
                    "--timeout=3m")
    cluster.kubectl("-n", "kube-system", "scale", "deployment", "coredns", "--replicas=0")
    cluster.kubectl("-n", "kube-system", "wait", "--for=delete", "pod", "-l", "k8s-app=kube-dns",
                    "--timeout=3m")
    cluster.kubectl("delete", "-f", str(weft_manifest(cluster)), "--ignore-not-found",
                    "--timeout=3m")
    for node in nodes:
        for what in ("agent", "proxy"):
            cluster.on_node(node, "ctr", "-n", "k8s.io", "run", "--rm", "--net-host",
                            "--privileged", components.WEFT_IMAGE, "weft-cleanup",
                            "weft", what, "cleanup")
        cluster.on_node(node, "rm", "-rf", *WEFT_FILES)
    for node in nodes:
        assert cluster.on_node(node, "ip", "route", "show", "proto", "88") == ""
        assert "weft" not in cluster.on_node(node, "ip", "-o", "link", "show")
        # weft's image writes with iptables-nft; kind's entrypoint may set the node's
        # own iptables to legacy (it does on podman: no rules of either kind at start).
        for save in ("iptables-nft-save", "iptables-legacy-save"):
            assert "WEFT" not in cluster.on_node(node, save)
        present = cluster.on_node(node, "ls", "-d", *WEFT_FILES, check=False)
        assert present == ""


def weft_manifest(cluster: Kind) -> Path:
    """manifests/weft.yaml with the API server of this cluster's name, as docs/kind.md
    says to do for a cluster not named weft."""
    path = cluster.work / "weft.yaml"
    if not path.exists():
        docs = list(yaml.safe_load_all((REPO / "manifests" / "weft.yaml").read_text()))
        for doc in docs:
            if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "weft-config":
                doc["data"]["KUBERNETES_SERVICE_HOST"] = f"{cluster.name}-control-plane"
        path.write_text(yaml.safe_dump_all(docs))
    return path


def diagnosis(cluster: Kind) -> str:
    """What a failed wait shows: kube-system's pods, the Nodes, the agents' last words."""
    parts = [cluster.kubectl("get", "nodes", "-o", "wide", check=False),
             cluster.kubectl("-n", "kube-system", "get", "pods", "-o", "wide", check=False),
             cluster.kubectl("-n", "kube-system", "logs", "-l", "app.kubernetes.io/name=weft-node",
                             "-c", "agent", "--tail=20", "--prefix", check=False),
             subprocess.run(["uptime"], capture_output=True, text=True).stdout]
    return "\n".join(str(p) for p in parts)


def node_dataplane(cluster: Kind, nodes: list[str]) -> str:
    """What a failed probe shows: each node's routes, links, rules and policy table."""
    looks = [("ip", "route"), ("ip", "-br", "link"), ("ip", "-br", "addr"),
             ("iptables-nft-save",), ("nft", "list", "table", "inet", "weft"),
             ("sysctl", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter")]
    return "\n".join(f"--- {node}: {' '.join(look)}\n{cluster.on_node(node, *look, check=False)}"
                     for node in nodes for look in looks)


def kubectl_json(cluster: Kind, *args: str) -> dict:
    return json.loads(cluster.kubectl(*args, "-o", "json"))


def internal_ip(node: dict) -> str:
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


def curl(cluster: Kind, pod: str, url: str) -> str:
    """What the pod got from the URL; empty when it got nothing."""
    return cluster.kubectl("-n", "weft-check", "exec", pod, "--", "curl", "-s",
                           "--max-time", "3", url, timeout=30, check=False)
