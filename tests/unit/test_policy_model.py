"""The NetworkPolicy model: what a policy, as written, isolates and allows."""

import pytest

from weft.agent.policy.model import EGRESS, INGRESS, Cluster, Pod, parse_policy
from weft.agent.policy.render import render


def policy(name="p", **spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "x"},
            "spec": {"podSelector": {}, **spec}}


def cluster(*policies):
    pods = [Pod("x", "a", "10.244.0.2", {"pod": "a"}), Pod("x", "b", "10.244.0.3", {"pod": "b"})]
    return Cluster(pods, {"x": {"kubernetes.io/metadata.name": "x"}},
                   [parse_policy(p) for p in policies])


@pytest.mark.parametrize("spec", [{}, {"policyTypes": []}, {"egress": []},
                                  {"policyTypes": [], "egress": []}])
def test_without_policy_types_a_policy_isolates_ingress_and_egress_only_with_egress_rules(spec):
    # The API server's defaulting: an empty policyTypes is no policyTypes, and an
    # empty egress list adds no Egress (the local datastore has no API server).
    model = cluster(policy(**spec))
    a = model.find("x/a")
    assert [p.key for p in model.selecting(a, INGRESS)] == ["x/p"]
    assert model.selecting(a, EGRESS) == []
    assert model.grants(a, INGRESS) == []
    assert model.grants(a, EGRESS) is None


def test_egress_rules_without_policy_types_isolate_egress_too():
    model = cluster(policy(egress=[{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]))
    a = model.find("x/a")
    assert model.grants(a, INGRESS) == []
    (grant,) = model.grants(a, EGRESS)
    assert grant.allows("10.244.0.3", "TCP", 80)
    assert not grant.allows("10.244.0.4", "TCP", 80)


def test_an_ipv6_block_allows_no_ipv4_address_and_renders_nothing():
    # Rendered into the IPv4 sets, "::/0" made nft refuse the whole table: no policy
    # applied, and every pod ADD on the node failed.
    v6 = {"ipBlock": {"cidr": "::/0"}}
    only_v6 = cluster(policy(policyTypes=["Egress"], egress=[{"to": [v6]}]))
    a = only_v6.find("x/a")
    assert only_v6.grants(a, EGRESS) == []  # isolated, and nothing allowed: not "anywhere"
    both = cluster(policy(policyTypes=["Egress"],
                          egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, v6]}]))
    ruleset = render(both, both.pods).ruleset
    (chain,) = ruleset.chains.values()  # the two pods' grants are the same
    assert (chain.anywhere, chain.ports) == (("0.0.0.0/0",), ())
    assert ruleset.pods[EGRESS] == {"10.244.0.2": chain.name, "10.244.0.3": chain.name}


def test_only_a_change_that_may_deny_something_sends_the_agent_to_conntrack():
    from weft.agent.policy import flows, ranges
    from weft.agent.policy.model import ANY, Grant

    pods = ranges.of_cidrs(["10.244.0.0/24"])
    one_pod = ranges.of_cidrs(["10.244.0.3/32"])
    web = Grant("x/web", 0, one_pod, "TCP", 80, 80)
    wider = Grant("x/wide", 0, pods, "TCP", 80, 443)
    anything = Grant("x/any", 0, pods, ANY)
    before = {("10.244.0.2", INGRESS): [web], ("10.244.0.2", EGRESS): None}
    both = list(before)

    def narrowed(old: dict, new: dict) -> list:
        return flows.narrowed(old, new, both)

    assert narrowed(before, before) == []
    assert narrowed(before, {**before, ("10.244.0.2", INGRESS): [wider]}) == []
    assert narrowed(before, {**before, ("10.244.0.2", INGRESS): [anything]}) == []
    # narrower, or newly isolated: judged again
    assert narrowed({**before, ("10.244.0.2", INGRESS): [wider]}, before) == [
        ("10.244.0.2", INGRESS)]
    assert narrowed(before, {**before, ("10.244.0.2", EGRESS): []}) == [
        ("10.244.0.2", EGRESS)]
    assert not Grant("x/udp", 0, pods, "UDP", 80, 80).covers(web)
    assert not web.covers(anything)
