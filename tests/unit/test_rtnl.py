"""The requests weft packs itself are the bytes pyroute2's message classes encode."""

from __future__ import annotations

import socket

import pytest
from pyroute2.netlink.rtnl import RTM_DELNEIGH, RTM_DELROUTE, RTM_NEWNEIGH, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from weft.cni import rtnl

SEQUENCE = 7
MAC = "02:00:0a:f4:01:02"


def encoded(message, kind: int, request: int, **fields) -> bytes:
    """The message as pyroute2 encodes it: header `kind` and `request` flags, `fields`."""
    message["header"]["type"], message["header"]["flags"] = kind, request
    message["header"]["sequence_number"] = SEQUENCE
    attrs = fields.pop("attrs")
    for key, value in fields.items():
        message[key] = value
    message["attrs"] = attrs
    message.encode()
    return bytes(message.data)


ROUTE = dict(table=rtnl.MAIN_TABLE, type=rtnl.RTN_UNICAST)
CASES = {
    "a route to a remote block through the tunnel": (
        rtnl.replace_route(socket.AF_INET, "10.244.3.0", 26, 88, oif=9, gateway="10.244.3.1",
                           flags=4),
        encoded(rtmsg(), RTM_NEWROUTE, rtnl.REPLACE, family=socket.AF_INET, dst_len=26,
                proto=88, flags=4, **ROUTE, attrs=[("RTA_DST", "10.244.3.0"), ("RTA_OIF", 9),
                                                   ("RTA_GATEWAY", "10.244.3.1")])),
    "a blackhole for the node's own block": (
        rtnl.replace_route(socket.AF_INET, "10.244.0.0", 26, 88, blackhole=True),
        encoded(rtmsg(), RTM_NEWROUTE, rtnl.REPLACE, family=socket.AF_INET, dst_len=26,
                proto=88, table=rtnl.MAIN_TABLE, type=rtnl.RTN_BLACKHOLE,
                attrs=[("RTA_DST", "10.244.0.0")])),
    "a route's deletion": (
        rtnl.del_route(socket.AF_INET, "10.244.3.0", 26, 88),
        encoded(rtmsg(), RTM_DELROUTE, rtnl.REQUEST, family=socket.AF_INET, dst_len=26,
                proto=88, **ROUTE, attrs=[("RTA_DST", "10.244.3.0")])),
    "a pod's IPv6 default route": (
        rtnl.add_route(socket.AF_INET6, "", 0, 2, 0, "fe80::1"),
        encoded(rtmsg(), RTM_NEWROUTE, rtnl.CREATE, family=socket.AF_INET6,
                proto=rtnl.RTPROT_BOOT, **ROUTE, attrs=[("RTA_OIF", 2),
                                                        ("RTA_GATEWAY", "fe80::1")])),
    "a pod's link-scope route": (
        rtnl.add_route(socket.AF_INET, "169.254.1.1", 32, 2, 253),
        encoded(rtmsg(), RTM_NEWROUTE, rtnl.CREATE, family=socket.AF_INET, dst_len=32,
                proto=rtnl.RTPROT_BOOT, scope=253, **ROUTE,
                attrs=[("RTA_DST", "169.254.1.1"), ("RTA_OIF", 2)])),
    "a VTEP's neighbour": (
        rtnl.add_neighbour(9, socket.AF_INET, "10.244.3.1", MAC, 128, rtnl.REPLACE),
        encoded(ndmsg(), RTM_NEWNEIGH, rtnl.REPLACE, family=socket.AF_INET, ifindex=9,
                state=128, attrs=[("NDA_DST", "10.244.3.1"), ("NDA_LLADDR", MAC)])),
    "an IPv6 neighbour": (
        rtnl.add_neighbour(2, socket.AF_INET6, "fe80::1", MAC, 128),
        encoded(ndmsg(), RTM_NEWNEIGH, rtnl.CREATE, family=socket.AF_INET6, ifindex=2,
                state=128, attrs=[("NDA_DST", "fe80::1"), ("NDA_LLADDR", MAC)])),
    "a neighbour's deletion": (
        rtnl.del_neighbour(9, socket.AF_INET, "10.244.3.1"),
        encoded(ndmsg(), RTM_DELNEIGH, rtnl.REQUEST, family=socket.AF_INET, ifindex=9,
                attrs=[("NDA_DST", "10.244.3.1")])),
    "a VTEP's FDB entry": (
        rtnl.add_fdb(9, MAC, "172.31.2.2", 128),
        encoded(ndmsg(), RTM_NEWNEIGH, rtnl.CREATE, family=socket.AF_BRIDGE, ifindex=9,
                state=128, flags=rtnl.NTF_SELF, attrs=[("NDA_LLADDR", MAC),
                                                       ("NDA_DST", "172.31.2.2")])),
    "an FDB entry's deletion, whatever it points at": (
        rtnl.del_fdb(9, MAC),
        encoded(ndmsg(), RTM_DELNEIGH, rtnl.REQUEST, family=socket.AF_BRIDGE, ifindex=9,
                flags=rtnl.NTF_SELF, attrs=[("NDA_LLADDR", MAC)])),
    "an FDB entry's deletion, by where it points": (
        rtnl.del_fdb(9, MAC, "172.31.2.2"),
        encoded(ndmsg(), RTM_DELNEIGH, rtnl.REQUEST, family=socket.AF_BRIDGE, ifindex=9,
                flags=rtnl.NTF_SELF, attrs=[("NDA_LLADDR", MAC), ("NDA_DST", "172.31.2.2")])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_packed_request_is_what_pyroute2_encodes(case: str) -> None:
    packed, reference = CASES[case]
    assert packed.packed(SEQUENCE) == reference
