"""Notice when someone deletes one of weft's kernel entries, cheaply.

Every pod ADD and DEL makes a burst of link, address, route and neighbour
notifications in the node's namespace. Decoding each with pyroute2 cost the
agent ~3 ms of CPU per pod, under the same GIL that serves the CNI socket; so
only the netlink header and the fixed part of each message are read here, and
pyroute2 decodes just the link deletions, to see whether it was the tunnel.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Iterator

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from weft.agent.dataplane import PROTO
from weft.agent.routes import VXLAN_DEVICE

RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x40
RTM_DELLINK, RTM_DELROUTE, RTM_DELNEIGH = 17, 25, 29
NUD_PERMANENT = 0x80
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port
RTMSG_PROTOCOL = NLMSG_HEADER.size + 5  # family, dst_len, src_len, tos, table, protocol
NDMSG_STATE = struct.Struct("=H")
NDMSG_STATE_OFFSET = NLMSG_HEADER.size + 8  # family, pad, pad, ifindex, then state


def messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, whole message) for each netlink message in one datagram."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind = NLMSG_HEADER.unpack_from(data, offset)[:2]
        if length < NLMSG_HEADER.size:
            return
        yield kind, data[offset:offset + length]
        offset += (length + 3) & ~3


def deletes_weft_entry(kind: int, message: bytes) -> bool:
    """True for the deletion of a route weft programmed, a permanent neighbour or FDB
    entry (weft's are the only permanent ones on its tunnel), or the tunnel itself."""
    if kind == RTM_DELROUTE:
        return len(message) > RTMSG_PROTOCOL and message[RTMSG_PROTOCOL] == PROTO
    if kind == RTM_DELNEIGH:
        if len(message) < NDMSG_STATE_OFFSET + NDMSG_STATE.size:
            return False
        return bool(NDMSG_STATE.unpack_from(message, NDMSG_STATE_OFFSET)[0] & NUD_PERMANENT)
    if kind == RTM_DELLINK:
        link = ifinfmsg(message)
        link.decode()
        return link.get("ifname") == VXLAN_DEVICE
    return False


def watch(on_deletion: Callable[[], None]) -> None:
    """Call `on_deletion` for every deletion of a weft entry in this namespace; never returns."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as events:
        events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        events.bind((0, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE))
        while True:
            try:
                data = events.recv(1 << 16)
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                on_deletion()  # notifications were lost: look at everything
                continue
            if any(deletes_weft_entry(kind, message) for kind, message in messages(data)):
                on_deletion()
