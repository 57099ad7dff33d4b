"""The service proxy in a lab: ClusterIPs, NodePorts, affinity, hairpin, UDP conntrack."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid

import pytest

from weft.agent.proxy import render
from weft.agent.proxy.model import service_ports
from weft.ipam.local import LocalStore
from weft.lab import build, netns, processes, services
from weft.lab.matrix import ask

from ..waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab():
    name = f"s{uuid.uuid4().hex[:7]}"
    state = build.up(name, 3, 2, 2, "netns", lambda _m: None)
    try:
        yield state
    finally:
        build.down(name, lambda _m: None)


def pods_on(state, node: str) -> list[str]:
    return [p for p, info in state.pods.items() if info["node"] == f"{state.name}-{node}"]


def short(state, pod: str) -> str:
    return pod.removeprefix(f"{state.name}-")


def publish(state, name: str, cluster_ip: str, pods: list[str], **spec) -> None:
    """A Service over `pods` (TCP 80 -> http, UDP 53 -> dns) and its EndpointSlice."""
    store = LocalStore(state.datastore)
    svc = services.echo_service()
    svc["metadata"]["name"] = name
    svc["spec"].update({"type": "ClusterIP", "clusterIP": cluster_ip, **spec})
    for port in svc["spec"]["ports"]:
        port.pop("nodePort", None)
    store.apply(svc)
    store.apply(services.endpoint_slice(name, {p: state.pods[p] for p in pods}))


def unpublish(state, name: str) -> None:
    store = LocalStore(state.datastore)
    store.delete("EndpointSlice", f"{name}-lab", "default")
    store.delete("Service", name, "default")


def answers(state, pod: str, ip: str, protocol: str = "tcp", count: int = 1,
            source_port: int = 0) -> list[str]:
    port = services.TCP_PORT if protocol == "tcp" else services.UDP_PORT
    out = ask(state.pods[pod]["netns"], protocol, ip, port, source_port=source_port,
              count=count)
    return [line.split(" ")[0] for line in out.split("\n")]  # '' for each failed ask




def test_tcp_cluster_ip_from_every_node_reaches_endpoints_on_all_nodes(lab):
    seen = []
    for node in ("node1", "node2", "node3"):
        seen += answers(lab, pods_on(lab, node)[0], services.CLUSTER_IP, count=20)
    assert len(seen) == 60 and all(seen)
    answering_nodes = {name.split("-")[0] for name in seen}
    assert answering_nodes == {"node1", "node2", "node3"}
    assert len(set(seen)) >= 2


def test_udp_dns_keeps_answering_within_a_second_when_its_endpoint_moves(lab):
    ip = "10.96.1.53"
    client = pods_on(lab, "node1")[0]
    first, second = pods_on(lab, "node2")[0], pods_on(lab, "node3")[0]
    publish(lab, "dns", ip, [first])
    try:
        assert eventually(lambda: answers(lab, client, ip, "udp", source_port=40053) ==
                          [short(lab, first)])
        # One resolver-like client: the same source port, so the same conntrack entry
        # unless the proxy deletes it; each answer stamped with the shared monotonic clock.
        asker = subprocess.Popen(
            ["nsenter", f"--net={lab.pods[client]['netns']}", sys.executable, "-m",
             "weft.lab.echo", "ask", "udp", ip, "53", "--source-port", "40053", "--count",
             "60", "--interval", "0.05", "--timeout", "0.2", "--timestamps"],
            stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        moved = time.monotonic()
        LocalStore(lab.datastore).apply(services.endpoint_slice("dns", {second: lab.pods[second]}))
        out, _ = asker.communicate(timeout=60)
        stamps = [(float(t), who.split(" ")[0]) for t, _, who in
                  (line.partition(" ") for line in out.splitlines())]
        recovered = [t for t, who in stamps if t > moved and who == short(lab, second)]
        assert recovered, out
        assert recovered[0] - moved < 1.0, f"answered by the new endpoint after " \
                                           f"{recovered[0] - moved:.2f}s"
    finally:
        unpublish(lab, "dns")


def test_a_service_without_endpoints_refuses_at_once(lab):
    ip = "10.96.1.1"
    publish(lab, "empty", ip, [])
    try:
        node1 = f"{lab.name}-node1"
        assert eventually(lambda: ip in netns.run(node1, ["iptables-save", "-t", "filter"])
                          .stdout.decode())
        started = time.monotonic()
        out = ask(lab.pods[pods_on(lab, "node1")[0]]["netns"], "tcp", ip, 80, timeout=5)
        assert out == "" and time.monotonic() - started < 1.5
    finally:
        unpublish(lab, "empty")


def test_a_pod_reaches_itself_through_its_service(lab):
    ip = "10.96.1.2"
    pod = pods_on(lab, "node2")[1]
    publish(lab, "self", ip, [pod])
    try:
        assert eventually(lambda: answers(lab, pod, ip) == [short(lab, pod)])
        assert answers(lab, pod, ip, "udp") == [short(lab, pod)]
    finally:
        unpublish(lab, "self")


def test_client_ip_affinity_keeps_a_client_on_one_endpoint(lab):
    ip = "10.96.1.3"
    publish(lab, "sticky", ip, list(lab.pods), sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 300}})
    try:
        assert eventually(lambda: all(answers(lab, pods_on(lab, "node1")[0], ip)))
        for node in ("node1", "node3"):
            seen = answers(lab, pods_on(lab, node)[0], ip, count=15)
            assert len(seen) == 15 and len(set(seen)) == 1
    finally:
        unpublish(lab, "sticky")


def test_internal_traffic_policy_local_uses_only_local_endpoints(lab):
    ip = "10.96.1.4"
    publish(lab, "local", ip, list(lab.pods), internalTrafficPolicy="Local")
    try:
        assert eventually(lambda: all(answers(lab, pods_on(lab, "node3")[0], ip)))
        seen = set(answers(lab, pods_on(lab, "node3")[0], ip, count=12))
        assert seen <= {short(lab, p) for p in pods_on(lab, "node3")}
    finally:
        unpublish(lab, "local")


def test_proxy_show_lists_service_ports_endpoints_and_rules(lab):
    out = subprocess.run([sys.executable, "-m", "weft", "proxy", "show", "--datastore-path",
                          str(lab.datastore), "--node-name", f"{lab.name}-node1"],
                         capture_output=True, text=True, check=True).stdout
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["SERVICE", "PORT", "PROTO", "FRONTEND"]
    http = next(r for r in rows if r.startswith("default/echo:http"))
    assert "10.96.0.10:80 node:30080" in http
    assert all(info["ip"] in http for info in lab.pods.values())


def test_node_port_on_every_node_answers_the_internet(lab):
    internet = netns.path(lab.plan.internet)
    for node in lab.nodes_present:
        out = ask(internet, "tcp", node.address, services.NODE_PORT, count=3)
        assert len(out.split("\n")) == 3
        assert all(line.split(" ")[0] in {short(lab, p) for p in lab.pods}
                   for line in out.splitlines())


def owned_chains(state, node: str) -> set[str]:
    saved = netns.run(f"{state.name}-{node}", ["iptables-save"]).stdout.decode()
    return {m for m in re.findall(r"^:(WEFT-(?:SVC|SEP|EXT)-\S+)", saved, re.M)}


def expected_chains(state, node: str) -> set[str]:
    store = LocalStore(state.datastore)
    ports = service_ports(store.list("Service"), store.list("EndpointSlice"))
    rules = render.assemble([render.render_port(p, f"{state.name}-{node}", "10.244.0.0/16")
                             for p in ports])
    return {c for table in rules.values() for c in table
            if c.startswith(("WEFT-SVC-", "WEFT-SEP-", "WEFT-EXT-"))}


def test_scaling_and_deleting_leave_exactly_the_chains_needed(lab):
    ip = "10.96.1.5"
    pods = list(lab.pods)
    try:
        for count in (1, 4, 6, 2):
            publish(lab, "scale", ip, pods[:count])
            for node in ("node1", "node3"):
                assert eventually(lambda n=node: owned_chains(lab, n) ==
                                  expected_chains(lab, n)), (node, count)
    finally:
        unpublish(lab, "scale")
    for node in ("node1", "node2", "node3"):
        assert eventually(lambda n=node: owned_chains(lab, n) == expected_chains(lab, n))
        assert not [c for c in owned_chains(lab, node) if ip in c]


def test_another_programs_prerouting_rule_survives_every_sync(lab):
    node = f"{lab.name}-node1"
    rule = ["-s", "192.0.2.0/24", "-m", "comment", "--comment", "another program", "-j",
            "RETURN"]
    netns.run(node, ["iptables", "-t", "nat", "-A", "PREROUTING", *rule])
    try:
        publish(lab, "churn", "10.96.1.6", list(lab.pods)[:2])
        publish(lab, "churn", "10.96.1.6", list(lab.pods)[:3])
        time.sleep(1)
        # A restarted proxy's first sync is a full one.
        pid = lab.processes[f"proxy-{node}"]
        subprocess.run(["kill", str(pid)], check=True)
        processes.stop({pid})
        lab.processes[f"proxy-{node}"] = build._spawn(
            netns.path(node), ["python3", "-m", "weft", "proxy", "--node-name", node,
                               "--datastore-path", str(lab.datastore), "--health-address",
                               "127.0.0.1:9646", "--min-sync-interval", "0.2"],
            lab.node_dir(node) / "proxy.log")
        unpublish(lab, "churn")
        assert eventually(lambda: owned_chains(lab, "node1") == expected_chains(lab, "node1"))
        check = netns.run(node, ["iptables", "-t", "nat", "-C", "PREROUTING", *rule],
                          check=False)
        assert check.returncode == 0
        # The restarted proxy's full sync found its jump and did not add another.
        prerouting = netns.run(node, ["iptables", "-t", "nat", "-S", "PREROUTING"]).stdout
        assert prerouting.decode().count("-j WEFT-SERVICES") == 1
        assert all(answers(lab, pods_on(lab, "node1")[0], services.CLUSTER_IP, count=3))
    finally:
        netns.run(node, ["iptables", "-t", "nat", "-D", "PREROUTING", *rule], check=False)
