"""The NetworkPolicy renderer's promises, without a kernel: disjoint interval elements
that allow exactly the grants, chains shared by pods with the same grants, and a
fail-closed in-process ADD. (That the scripts do what they say, nft judges:
tests/integration/test_policy_tables.py.)"""

from __future__ import annotations

import itertools
import json

import netaddr
import pytest

from weft.agent.policy import ranges
from weft.agent.policy.model import cluster_from_objects
from weft.agent.policy.render import render
from weft.cni import plugin
from weft.cni.config import parse_env, parse_netconf
from weft.cni.errors import TRY_AGAIN_LATER, CNIError


def pod(namespace: str, name: str, ip: str, labels: dict, ports: dict | None = None) -> dict:
    return {"metadata": {"namespace": namespace, "name": name, "labels": labels},
            "spec": {"containers": [{"ports": [
                {"name": n, "containerPort": p, "protocol": proto}
                for n, (proto, p) in (ports or {}).items()]}]},
            "status": {"podIP": ip}}


def policy(name: str, spec: dict, namespace: str = "x") -> dict:
    return {"metadata": {"namespace": namespace, "name": name}, "spec": spec}


PODS = [pod("x", "a", "10.244.1.2", {"pod": "a"}, {"web": ("TCP", 8080)}),
        pod("x", "b", "10.244.1.3", {"pod": "b"}),
        pod("y", "c", "10.244.2.9", {"pod": "c"})]
NAMESPACES = [{"metadata": {"name": "x"}}, {"metadata": {"name": "y"}}]
OVERLAPPING = [
    policy("range", {"podSelector": {}, "ingress": [
        {"ports": [{"port": 80, "endPort": 90}]}]}),
    policy("from-b", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
         "ports": [{"port": 85}, {"port": "web"}, {"port": 8000, "endPort": 9000}]}]}),
    policy("block", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.3/32"]}}],
         "ports": [{"port": 88, "endPort": 100}]}]}),
]


def _boxes(elements: tuple[str, ...]) -> dict[str, list[tuple[range, range]]]:
    """Per protocol, each element as (address range, port range)."""
    out: dict[str, list[tuple[range, range]]] = {}
    for element in elements:
        span, protocol, ports = (part.strip() for part in element.split(" . "))
        if "-" in span:
            first, last = (int(netaddr.IPAddress(a)) for a in span.split("-"))
        else:
            network = netaddr.IPNetwork(span)
            first, last = network.first, network.last
        low, _, high = ports.partition("-")
        out.setdefault(protocol, []).append(
            (range(first, last + 1), range(int(low), int(high or low) + 1)))
    return out


def test_port_elements_never_overlap_and_allow_exactly_the_grants() -> None:
    cluster, problems = cluster_from_objects(PODS, NAMESPACES, OVERLAPPING)
    assert problems == []
    rendered = render(cluster, [cluster.find("x/a"), cluster.find("x/b")])
    chain = rendered.ruleset.chains[rendered.ruleset.pods["ingress"]["10.244.1.2"]]
    boxes = _boxes(chain.ports)
    for protocol, pieces in boxes.items():
        for (a1, p1), (a2, p2) in itertools.combinations(pieces, 2):
            overlap = (a1.start < a2.stop and a2.start < a1.stop and
                       p1.start < p2.stop and p2.start < p1.stop)
            assert not overlap, f"{protocol}: {a1}/{p1} overlaps {a2}/{p2}"
    # What the elements allow is what the grants allow, probe by probe.
    peers = ["10.244.1.3", "10.244.2.9", "10.9.9.9"]
    for peer, port in itertools.product(peers, [79, 80, 85, 88, 95, 100, 101, 8080, 8500]):
        value = int(netaddr.IPAddress(peer))
        by_sets = any(value in a and port in p for a, p in boxes.get("tcp", []))
        by_grants = any(g.allows(peer, "TCP", port) for g in rendered.grants[("10.244.1.2",
                                                                               "ingress")])
        assert by_sets == by_grants, (peer, port)


def test_pods_with_the_same_grants_share_a_chain_and_others_do_not() -> None:
    cluster, _ = cluster_from_objects(PODS, NAMESPACES, OVERLAPPING[:1])
    ruleset = render(cluster, [cluster.find("x/a"), cluster.find("x/b")]).ruleset
    assert ruleset.pods["ingress"]["10.244.1.2"] == ruleset.pods["ingress"]["10.244.1.3"]
    assert len(ruleset.chains) == 1
    cluster, _ = cluster_from_objects(PODS, NAMESPACES, OVERLAPPING)
    ruleset = render(cluster, [cluster.find("x/a"), cluster.find("x/b")]).ruleset
    assert ruleset.pods["ingress"]["10.244.1.2"] != ruleset.pods["ingress"]["10.244.1.3"]
    assert set(ruleset.chains) == set(ruleset.pods["ingress"].values())


def test_ranges_subtract_and_print_as_nft_elements() -> None:
    kept = ranges.of_cidrs(["10.0.0.0/24"], ["10.0.0.0/26", "10.0.0.200/32"])
    assert ranges.spans(kept) == ["10.0.0.64-10.0.0.199", "10.0.0.201-10.0.0.255"]
    assert ranges.spans(ranges.of_cidrs(["10.0.0.0/24"], ["10.0.0.128/25"])) == ["10.0.0.0/25"]
    assert ranges.contains(kept, "10.0.0.64") and not ranges.contains(kept, "10.0.0.200")


def test_in_process_add_fails_closed_where_the_agent_enforces_policy(tmp_path) -> None:
    """The agent's socket did not answer: the pod is refused, nothing is allocated."""
    conf = {"cniVersion": "1.0.0", "name": "weft", "type": "weft", "networkPolicy": True,
            "datastore": "local", "datastorePath": str(tmp_path / "ds"),
            "stateDir": str(tmp_path / "state"), "ipam": {"type": "weft-ipam"}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a"}
    with pytest.raises(CNIError) as caught:
        plugin.add(parse_netconf(json.dumps(conf).encode()), parse_env(env))
    assert caught.value.code == TRY_AGAIN_LATER
    assert "x/a" in caught.value.msg and "agent is not running" in caught.value.msg
    assert not (tmp_path / "state").exists()
