"""The NetworkPolicy table scripts, judged by nft in a namespace of their own: a change
script leaves the kernel with what the new table written whole gives, and a change
to no policy leaves only the fixed chains."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from weft.agent.policy.model import cluster_from_objects
from weft.agent.policy.render import (
    FAMILY,
    TABLE,
    Cache,
    Ruleset,
    change_script,
    full_script,
    render,
)
from weft.lab import netns

pytestmark = pytest.mark.integration


def pod(name: str, ip: str, labels: dict) -> dict:
    return {"metadata": {"namespace": "x", "name": name, "labels": labels},
            "spec": {"containers": []}, "status": {"podIP": ip}}


def policy(name: str, spec: dict) -> dict:
    return {"metadata": {"namespace": "x", "name": name}, "spec": spec}


PODS = [pod(f"p{i}", f"10.244.1.{i + 2}", {"pod": f"p{i}", "tier": "web" if i % 2 else "db"})
        for i in range(6)]
WEB_FROM_DB = policy("web-from-db", {
    "podSelector": {"matchLabels": {"tier": "web"}},
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "db"}}},
                          {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}}],
                 "ports": [{"port": 80, "endPort": 90}, {"port": 53, "protocol": "UDP"}]}]})
DB_DENY = policy("db-deny", {"podSelector": {"matchLabels": {"tier": "db"}},
                             "policyTypes": ["Ingress", "Egress"]})
P0_OUT = policy("p0-out", {"podSelector": {"matchLabels": {"pod": "p0"}},
                           "policyTypes": ["Egress"],
                           "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]})
STEPS = [[], [WEB_FROM_DB], [WEB_FROM_DB, DB_DENY], [DB_DENY, P0_OUT], [P0_OUT], []]


def ruleset(policies: list[dict], cache: Cache) -> Ruleset:
    cluster, problems = cluster_from_objects(PODS, [{"metadata": {"name": "x"}}], policies,
                                             interned=cache.interned)
    assert problems == []
    return render(cluster, [cluster.find(f"x/p{i}") for i in range(0, 6)], cache).ruleset


def nft(namespace: str, script: str) -> None:
    proc = netns.run(namespace, ["nft", "-f", "-"], input=script.encode(), check=False)
    assert proc.returncode == 0, f"nft refused:\n{proc.stderr.decode()}\n{script}"


def table(namespace: str) -> list[dict]:
    """The table as nft lists it, without handles (which differ between histories)."""
    listed = json.loads(netns.run(namespace, ["nft", "-j", "list", "table", FAMILY,
                                              TABLE]).stdout)["nftables"]
    items = []
    for item in listed:
        (kind, body), = item.items()
        if kind != "metainfo":
            items.append({kind: {k: v for k, v in body.items() if k != "handle"}})
    return sorted(items, key=lambda i: json.dumps(i, sort_keys=True))


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    names = (f"wpt{uuid.uuid4().hex[:8]}", f"wpt{uuid.uuid4().hex[:8]}")
    try:
        for name in names:
            netns.create(name)
        yield names
    finally:
        for name in names:
            netns.remove(name)


def test_each_change_script_gives_what_the_whole_table_gives(
        namespaces: tuple[str, str]) -> None:
    changed, whole = namespaces
    cache = Cache()
    old = ruleset(STEPS[0], cache)
    nft(changed, full_script(old))
    for number, policies in enumerate(STEPS[1:], 1):
        new = ruleset(policies, cache)
        nft(changed, change_script(old, new))
        nft(whole, full_script(new))
        assert table(changed) == table(whole), f"step {number}: the tables differ"
        old = new


def test_no_policy_leaves_only_the_fixed_chains(namespaces: tuple[str, str]) -> None:
    changed, _ = namespaces
    cache = Cache()
    busy = ruleset([WEB_FROM_DB, DB_DENY, P0_OUT], cache)
    nft(changed, full_script(busy))
    assert len(busy.chains) == 4  # web and db ingress, db and p0 egress
    nft(changed, change_script(busy, ruleset([], cache)))
    kinds = {(kind, body["name"]) for item in table(changed) for kind, body in item.items()
             if kind != "rule"}
    assert kinds == {("table", TABLE), ("chain", "forward"), ("chain", "input"),
                     ("chain", "output"), ("chain", "refuse"), ("set", "revoked"),
                     ("map", "in-pods"), ("map", "out-pods"), ("map", "in-denied"),
                     ("map", "out-denied")}
