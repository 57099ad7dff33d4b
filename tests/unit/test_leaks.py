from weft.agent.leaks import leaked
from weft.cni.names import host_ifname
from weft.ipam.allocator import TUNNEL_HANDLE, Allocation


def alloc(cid, pod="", created=0.0):
    return Allocation(f"10.0.0.{len(cid)}", f"{cid}/eth0", cid, "eth0", "default", pod, created)


def test_released_only_when_gone_from_the_api_and_the_node():
    in_api = alloc("a", "web")
    on_node = alloc("bb")
    both_gone = alloc("ccc", "old")
    nameless_gone = alloc("dddd")
    found = leaked([in_api, on_node, both_gone, nameless_gone], pods={("default", "web")},
                   links={host_ifname("bb", "eth0")}, now=1000)
    assert [a.container_id for a in found] == ["ccc", "dddd"]


def test_young_allocations_and_node_addresses_are_never_leaks():
    young = alloc("a", "web", created=990)
    tunnel = Allocation("10.0.0.1", TUNNEL_HANDLE)
    assert leaked([young, tunnel], pods=set(), links=set(), now=1000) == []
