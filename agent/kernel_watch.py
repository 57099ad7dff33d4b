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
from collections.abc import Callable

from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
)
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from weft.agent.dataplane import NUD_PERMANENT, PROTO
from weft.agent.routes import VXLAN_DEVICE
from weft.cni.rtnl import HEADER, messages_of

RTMSG_PROTOCOL = HEADER.size + 5  # family, dst_len, src_len, tos, table, protocol
NDMSG_STATE = struct.Struct("=H")
NDMSG_STATE_OFFSET = HEADER.size + 8  # family, pad, pad, ifindex, then state


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
            if any(deletes_weft_entry(kind, message) for kind, _, message in messages_of(data)):
                on_deletion()
