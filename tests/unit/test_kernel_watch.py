"""The agent's cheap reading of kernel notifications: which deletions wake it."""

from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_DELNEIGH, RTM_DELROUTE, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from weft.agent import kernel_watch
from weft.agent.dataplane import PROTO
from weft.agent.routes import VXLAN_DEVICE
from weft.cni.rtnl import messages_of


def _encoded(message, kind: int) -> bytes:
    message["header"]["type"] = kind
    message.encode()
    return bytes(message.data)


def route(kind: int, proto: int) -> bytes:
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"], msg["proto"] = 2, 26, 254, proto
    msg["attrs"] = [("RTA_DST", "10.244.1.0")]
    return _encoded(msg, kind)


def neighbour(state: int) -> bytes:
    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"] = 2, 7, state
    msg["attrs"] = [("NDA_DST", "10.244.1.0")]
    return _encoded(msg, RTM_DELNEIGH)


def link(name: str) -> bytes:
    msg = ifinfmsg()
    msg["index"] = 9
    msg["attrs"] = [("IFLA_IFNAME", name)]
    return _encoded(msg, RTM_DELLINK)


def wakes(data: bytes) -> bool:
    return any(kernel_watch.deletes_weft_entry(kind, message)
               for kind, _, message in messages_of(data))


def test_only_deletions_of_weft_entries_wake_the_agent():
    assert wakes(route(RTM_DELROUTE, PROTO))
    assert not wakes(route(RTM_DELROUTE, 3))  # a pod's host route, gone with its veth
    assert not wakes(route(RTM_NEWROUTE, PROTO))
    assert wakes(neighbour(0x80))  # permanent: weft's tunnel neighbours and FDB
    assert not wakes(neighbour(0x02))  # a reachable neighbour aging out
    assert wakes(link(VXLAN_DEVICE))
    assert not wakes(link("weft0123456789a"))


def test_every_message_of_a_datagram_is_read():
    assert wakes(link("weft0123456789a") + route(RTM_NEWROUTE, PROTO) + neighbour(0x80))
    assert not wakes(link("weft0123456789a") + route(RTM_DELROUTE, 3))
    assert not wakes(b"\x00" * 8)  # a truncated header is ignored
