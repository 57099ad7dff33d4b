"""The fakes behave like the real things: one sequence of operations, both sides compared."""

from __future__ import annotations

import uuid

import pytest

from weft.agent.dataplane import FakeDataplane, LinuxDataplane
from weft.agent.iptables import FakeIptables, Iptables, Jump
from weft.agent.routes import VXLAN_DEVICE, Desired, Fdb, Neighbour, Route, diff
from weft.cni.netns import entered
from weft.lab import netns, wiring

pytestmark = pytest.mark.integration


@pytest.fixture
def node_ns():
    name = f"wf{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        wiring.stub_underlay(name, "172.31.3.1")
        netns.run(name, ["ip", "link", "add", VXLAN_DEVICE, "type", "vxlan", "id", "4096",
                         "dstport", "4789", "local", "172.31.3.1", "dev", "eth0",
                         "nolearning"])
        netns.run(name, ["ip", "link", "set", VXLAN_DEVICE, "up"])
        yield name
    finally:
        netns.remove(name)


STATES = [
    Desired(routes={"10.244.0.0/26": Route("10.244.0.0/26", "blackhole"),
                    "10.244.1.0/26": Route("10.244.1.0/26", "direct", "172.31.3.2", "eth0"),
                    "10.244.2.0/26": Route("10.244.2.0/26", "vxlan", "10.244.2.1",
                                           VXLAN_DEVICE)},
            neighbours={"10.244.2.1": Neighbour("10.244.2.1", "02:00:00:00:00:02")},
            fdb={"02:00:00:00:00:02": Fdb("02:00:00:00:00:02", "172.18.2.12")}),
    # a peer moved: new node IP for the same MAC, a new block, one block gone
    Desired(routes={"10.244.0.0/26": Route("10.244.0.0/26", "blackhole"),
                    "10.244.2.0/26": Route("10.244.2.0/26", "vxlan", "10.244.2.1",
                                           VXLAN_DEVICE),
                    "10.244.3.0/26": Route("10.244.3.0/26", "vxlan", "10.244.3.1",
                                           VXLAN_DEVICE)},
            neighbours={"10.244.2.1": Neighbour("10.244.2.1", "02:00:00:00:00:02"),
                        "10.244.3.1": Neighbour("10.244.3.1", "02:00:00:00:00:03")},
            fdb={"02:00:00:00:00:02": Fdb("02:00:00:00:00:02", "172.18.2.99"),
                 "02:00:00:00:00:03": Fdb("02:00:00:00:00:03", "172.18.2.13")}),
    Desired(),
]


def test_linux_and_fake_dataplanes_end_in_the_same_state(node_ns):
    fake = FakeDataplane()
    with netns.iproute(node_ns) as ipr:
        real = LinuxDataplane(ipr)
        for want in STATES:
            for plane in (real, fake):
                assert plane.apply(diff(want, plane.current())) == []
            assert real.current() == fake.current() == want


JUMP = Jump("nat", "PREROUTING", "WEFT-TEST", "weft alike test")


def test_real_and_fake_iptables_end_in_the_same_state(node_ns):
    fake = FakeIptables()
    steps = [
        lambda t: t.restore("nat", {"WEFT-TEST": ["-A WEFT-TEST -d 10.96.0.1/32 -j RETURN"],
                                    "WEFT-OTHER": ["-A WEFT-OTHER -j RETURN"]}),
        lambda t: t.ensure_jump(JUMP),
        lambda t: t.ensure_jump(JUMP),
        lambda t: t.restore("nat", {"WEFT-TEST": ["-A WEFT-TEST -j WEFT-OTHER"]}),
        lambda t: t.restore("nat", {"WEFT-TEST": []}, delete=["WEFT-OTHER"]),
        lambda t: t.remove_jump(JUMP),
        lambda t: t.restore("nat", {}, delete=["WEFT-TEST"]),
    ]
    with entered(netns.path(node_ns)):
        real = Iptables()
        for step in steps:
            assert step(real) == step(fake)

            def weft(chains: dict[str, list[str]]) -> dict[str, list[str]]:
                return {c: [r for r in rules if "WEFT" in r] for c, rules in chains.items()
                        if "WEFT" in c or any("WEFT" in r for r in rules)}
            assert weft(real.chains("nat")) == weft(fake.chains("nat"))
