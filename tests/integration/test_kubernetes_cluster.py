"""Agents and a proxy on the `kubernetes` datastore, against kmock's emulator.

The emulator serves from an "apiserver" namespace on the nodes' switch, so real
`weft agent` and `weft proxy` processes in their node namespaces reach it over
the wire, as they reach the API server in a cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import netaddr
import pytest

from weft.agent.dataplane import LinuxDataplane
from weft.agent.install import install_binaries
from weft.cni.netns import entered
from weft.ipam.kubernetes import KubernetesStore
from weft.lab import netns, services, wiring

from ..kmock_api import Emulator
from ..waiting import eventually

pytestmark = pytest.mark.integration

API_ADDRESS = "172.18.9.2"
POLICY_CALLS = {("", "namespaces", "list"), ("", "namespaces", "watch"),
                ("networking.k8s.io", "networkpolicies", "list"),
                ("networking.k8s.io", "networkpolicies", "watch"),
                ("", "pods", "get"), ("", "pods", "watch")}


@dataclass
class Cluster:
    name: str
    root: Path
    emulator: Emulator
    store: KubernetesStore
    kubeconfig: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def api(self):
        """Run datastore calls from inside the apiserver namespace (its loopback)."""
        return entered(netns.path(f"{self.name}-api"))

    def node(self, i: int) -> str:
        return f"{self.name}-n{i}"

    def start(self, node: str, *command: str, env: dict[str, str] | None = None) -> None:
        log = open(self.root / f"{node}-{command[0]}.log", "ab")  # noqa: SIM115
        # kmock cannot serve /api/v1/namespaces (it reads "namespaces" as a namespace
        # prefix), so NetworkPolicy, which needs Namespaces, is left to the real cluster
        # of tests/kubernetes.
        self.processes.append(netns.popen(node, [sys.executable, "-m", "weft", *command],
                                          stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, "WEFT_NETWORK_POLICY": "off",
                                               **(env or {})}))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    name = f"k{uuid.uuid4().hex[:6]}"
    spaces = [f"{name}-sw", f"{name}-api", f"{name}-n1", f"{name}-n2"]
    for ns in spaces:
        netns.create(ns)
    try:
        wiring.switch(f"{name}-sw")
        wiring.wire(f"{name}-api", "eth0", f"{name}-sw", "api", f"{name}-sw")
        wiring.address(f"{name}-api", "eth0", f"{API_ADDRESS}/24")
        for i in (1, 2):
            node = f"{name}-n{i}"
            wiring.wire(node, "eth0", f"{name}-sw", f"n{i}", f"{name}-sw")
            wiring.address(node, "eth0", f"172.18.9.{10 + i}/24")
            wiring.default_route(node, API_ADDRESS)  # the apiserver does not forward
            wiring.sysctls(node, {"net/ipv4/ip_forward": "1"})
        with Emulator(netns=netns.path(f"{name}-api"), host="0.0.0.0") as emulator:
            port = int(emulator.url.rsplit(":", 1)[1])
            local = tmp_path / "kubeconfig-local"
            emulator.url = f"http://127.0.0.1:{port}"
            emulator.kubeconfig(local, token="admin")
            emulator.url = f"http://{API_ADDRESS}:{port}"  # as the nodes reach it
            kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig", token="weft-node")
            store = KubernetesStore(str(local))
            the_cluster = Cluster(name, tmp_path, emulator, store, kubeconfig)
            try:
                yield the_cluster
            finally:
                for proc in the_cluster.processes:
                    proc.terminate()
                for proc in the_cluster.processes:
                    proc.wait(10)
                store.close()
    finally:
        for ns in spaces:
            netns.remove(ns)




def test_two_agents_claim_blocks_publish_annotations_and_route(cluster):
    with cluster.api():
        cluster.store.create({"apiVersion": "weft.dev/v1", "kind": "IPPool",
                              "metadata": {"name": "default"},
                              "spec": {"cidr": "10.244.0.0/16", "blockSize": 26,
                                       "vxlanMode": "CrossSubnet", "natOutgoing": True}})
        for i in (1, 2):
            cluster.store.create({"apiVersion": "v1", "kind": "Node",
                                  "metadata": {"name": cluster.node(i)}})
    for i in (1, 2):
        node = cluster.node(i)
        cluster.start(node, "agent", "--node-name", node, "--datastore", "kubernetes",
                      "--kubeconfig", str(cluster.kubeconfig),
                      "--state-dir", str(cluster.root / node / "state"),
                      "--socket", str(cluster.root / node / "cni.sock"),
                      "--cni-conf-dir", str(cluster.root / node / "net.d"),
                      "--default-pool", "none", "--health-address", "127.0.0.1:9645")
    for i in (1, 2):
        ready = cluster.root / cluster.node(i) / "net.d" / "10-weft.conflist"
        assert eventually(ready.exists, seconds=30), (cluster.root / f"{cluster.node(i)}-agent.log"
                                          ).read_text()

    with cluster.api():
        blocks = cluster.store.list("IPAMBlock")
        nodes = {n["metadata"]["name"]: n for n in cluster.store.list("Node")}
    owners = {b["spec"]["node"]: b for b in blocks}
    assert set(owners) == {cluster.node(1), cluster.node(2)}
    cidrs = [netaddr.IPNetwork(b["spec"]["cidr"]) for b in blocks]
    assert not netaddr.IPSet([cidrs[0]]) & netaddr.IPSet([cidrs[1]])
    for i in (1, 2):
        block, node = owners[cluster.node(i)], nodes[cluster.node(i)]
        assert block["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
        notes = node["metadata"]["annotations"]
        assert notes["weft.dev/node-ip"] == f"172.18.9.{10 + i}"
        assert netaddr.IPAddress(notes["weft.dev/vtep-ip"]) in netaddr.IPNetwork(
            block["spec"]["cidr"])
        assert re.fullmatch(r"[0-9a-f:]{17}", notes["weft.dev/vtep-mac"])

    def routed() -> bool:
        with netns.iproute(cluster.node(1)) as ipr:
            routes = LinuxDataplane(ipr).current().routes
        other = owners[cluster.node(2)]["spec"]["cidr"]
        return other in routes and routes[other].gateway == "172.18.9.12"
    assert eventually(routed, seconds=20)


def test_a_proxy_renders_services_created_through_the_api(cluster):
    node = cluster.node(1)
    cluster.start(node, "proxy", "--node-name", node, "--datastore", "kubernetes",
                  "--kubeconfig", str(cluster.kubeconfig), "--cluster-cidr", "10.244.0.0/16",
                  "--health-address", "127.0.0.1:9646", "--min-sync-interval", "0.2")
    pods = {"web-a": {"ip": "10.244.1.5", "node": node},
            "web-b": {"ip": "10.244.2.6", "node": cluster.node(2)}}
    with cluster.api():
        cluster.store.apply(services.echo_service())
        cluster.store.apply(services.endpoint_slice("echo", pods))

    def programmed() -> bool:
        nat = netns.run(node, ["iptables-save", "-t", "nat"]).stdout.decode()
        return (f"-d {services.CLUSTER_IP}/32" in nat and "10.244.1.5:8080" in nat
                and "10.244.2.6:8080" in nat and "--dport 30080" in nat)
    assert eventually(programmed, seconds=20), (cluster.root / f"{node}-proxy.log").read_text()

    with cluster.api():
        cluster.store.apply(services.endpoint_slice("echo", {"web-a": pods["web-a"]}))
    assert eventually(lambda: "10.244.2.6" not in netns.run(
        node, ["iptables-save", "-t", "nat"]).stdout.decode())


WEFT_YAML = Path(__file__).resolve().parents[2] / "manifests" / "weft.yaml"


def api_calls(calls, token: str) -> set[tuple[str, str, str]]:
    """(API group, resource[/subresource], verb) of every request made with `token`."""
    found = set()
    for auth, method, path, query in calls:
        if auth != f"Bearer {token}":
            continue
        parts = path.strip("/").split("/")
        group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
        if rest[:1] == ["namespaces"] and len(rest) > 2:
            rest = rest[2:]
        resource, name, sub = rest[0], rest[1] if len(rest) > 1 else "", rest[2:]
        if method == "GET":
            verb = "get" if name else "watch" if query.get("watch") in ("true", "1") \
                else "list"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete" if name else "deletecollection"}[method]
        found.add((group, "/".join([resource, *sub]), verb))
    return found


def granted(account: str) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) the manifests grant a ServiceAccount."""
    import yaml

    docs = [d for d in yaml.safe_load_all(WEFT_YAML.read_text()) if d]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    bound = [roles[d["roleRef"]["name"]] for d in docs if d["kind"] == "ClusterRoleBinding"
             and any(s["name"] == account for s in d["subjects"])]
    return {(group, resource, verb) for role in bound for rule in role["rules"]
            for group in rule.get("apiGroups", []) for resource in rule["resources"]
            for verb in rule["verbs"]}


def deployed_env() -> dict[str, str]:
    """The environment the DaemonSets give weft: the ConfigMap in manifests/weft.yaml."""
    import yaml

    docs = [d for d in yaml.safe_load_all(WEFT_YAML.read_text()) if d]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and
                 d["metadata"]["name"] == "weft-config"]
    return {k: v for k, v in config["data"].items() if k.startswith("WEFT_")}


def test_rbac_grants_exactly_the_calls_the_code_makes(cluster):
    """Run what runs on a node as the manifests run it (agents, the proxy, the CNI binary
    doing an ADD and a DEL itself) against the API, record every request, and compare
    with the ClusterRoles."""
    with cluster.api():
        for i in (1, 2):
            cluster.store.create({"apiVersion": "v1", "kind": "Node",
                                  "metadata": {"name": cluster.node(i)}})
        cluster.store.apply(services.echo_service())
        cluster.store.apply(services.endpoint_slice(
            "echo", {"a": {"ip": "10.244.1.5", "node": cluster.node(1)}}))
    env = {**deployed_env(), "WEFT_CNI_KUBECONFIG": str(cluster.root / "cni-kubeconfig")}
    proxy_config = cluster.emulator.kubeconfig(cluster.root / "proxy-kubeconfig", "weft-proxy")
    for i in (1, 2):
        node = cluster.node(i)
        cluster.start(node, "agent", "--node-name", node, "--kubeconfig", str(cluster.kubeconfig),
                      "--state-dir", str(cluster.root / node / "state"),
                      "--socket", str(cluster.root / node / "cni.sock"),
                      "--cni-conf-dir", str(cluster.root / node / "net.d"),
                      "--health-address", "127.0.0.1:9645", "--leak-check-seconds", "1",
                      env=env)
    cluster.start(cluster.node(1), "proxy", "--node-name", cluster.node(1), "--kubeconfig",
                  str(proxy_config), "--health-address", "127.0.0.1:9646", env=env)
    ready = cluster.root / cluster.node(1) / "net.d" / "10-weft.conflist"
    assert eventually(ready.exists, seconds=30)

    # The CNI binary doing the work itself (no agent socket), as the install step sets it up.
    bin_dir = cluster.root / "cni-bin"
    install_binaries(bin_dir)
    pod = f"{cluster.name}-p1"
    netns.create(pod)
    try:
        conf = json.dumps({"cniVersion": "1.0.0", "name": "weft", "type": "weft",
                           "datastore": "kubernetes", "kubeconfig": str(cluster.kubeconfig),
                           "nodeName": cluster.node(1), "socket": "/nonexistent",
                           "stateDir": str(cluster.root / "cni-state"),
                           "ipam": {"type": "weft-ipam"}}).encode()
        for command in ("ADD", "DEL"):
            proc = netns.run(cluster.node(1), [str(bin_dir / "weft")], input=conf, env={
                "PATH": "/usr/sbin:/usr/bin:/bin", "CNI_COMMAND": command,
                "CNI_CONTAINERID": "rbac", "CNI_NETNS": netns.path(pod), "CNI_IFNAME": "eth0",
                "CNI_PATH": str(bin_dir)}, check=False)
            assert proc.returncode == 0, proc.stdout.decode()
    finally:
        netns.remove(pod)
    time.sleep(2.5)  # a leak check, watches and a proxy sync have run by now

    calls = cluster.emulator.api.calls
    # NetworkPolicy is off against kmock (see Cluster.start); what it reads is granted
    # for it, and exercised by the real cluster's Netpol specs (tests/kubernetes).
    assert api_calls(calls, "weft-node") == granted("weft-node") - POLICY_CALLS
    assert api_calls(calls, "weft-proxy") == granted("weft-proxy")
