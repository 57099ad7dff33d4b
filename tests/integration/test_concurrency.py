"""Many pods at once, through the agent and in-process together."""

from __future__ import annotations

import fcntl
from concurrent.futures import ThreadPoolExecutor

import netaddr
import pytest

from weft.lab import netns

pytestmark = pytest.mark.integration

PODS = 64


def test_64_adds_at_once_then_64_dels_leave_nothing(node):
    node.start_agent()
    # /27 blocks hold 32 addresses: 64 pods must claim a second (and third) block.
    conf = node.netconf(ipam={"type": "weft-ipam",
                              "pools": [{"cidr": "10.244.0.0/16", "blockSize": 27}]})
    via_agent = node.runtime([conf])
    # The other half bypasses the agent: a socket path where nothing listens.
    in_process = node.runtime([{**conf, "socket": str(node.root / "no-agent.sock")}])
    pods = [node.new_pod() for _ in range(PODS)]

    def add(i: int) -> str:
        runtime = via_agent if i % 2 else in_process
        result = runtime.add(f"ctr-{i}", netns.path(pods[i]))
        return result["ips"][0]["address"]

    with ThreadPoolExecutor(max_workers=PODS) as pool:
        addresses = list(pool.map(add, range(PODS)))

    assert len(set(addresses)) == PODS
    blocks = {netaddr.IPNetwork(f"{a['address']}/27").cidr for a in node.allocations()}
    assert len(blocks) >= 2
    assert len(list((node.datastore_path / "ipamblocks").glob("*.yaml"))) >= 2
    assert len(node.links()) == PODS
    # Half were served by the agent, half in-process, and each path logged its own.
    assert (node.root / "agent.log").read_text().count("ADD ctr-") == PODS // 2
    assert (node.state_dir / "cni.log").read_text().count("ADD ctr-") == PODS // 2

    def delete(i: int) -> None:
        runtime = via_agent if i % 2 else in_process
        runtime.delete(f"ctr-{i}", netns.path(pods[i]))

    with ThreadPoolExecutor(max_workers=PODS) as pool:
        list(pool.map(delete, range(PODS)))

    assert node.links() == []
    assert node.allocations() == []
    with netns.iproute(node.name) as ipr:
        pod_routes = [r for r in ipr.get_routes(family=2, table=254)
                      if r["dst_len"] == 32 and (r.get("dst") or "").startswith("10.244.")]
    assert pod_routes == []
    leftovers = sorted(p.name for p in (node.state_dir / "ipam").rglob("*")
                       if p.is_file() and p.name.startswith(".tmp"))
    assert leftovers == []
    with open(node.state_dir / "ipam" / "lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody still holds it
