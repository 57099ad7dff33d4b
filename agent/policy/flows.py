"""Stop the established flows a policy change denies: delete their conntrack entries.

The tables accept what conntrack already knows before any policy lookup (a packet of
an allowed connection costs one lookup), so a connection that a new policy denies
would live on for as long as it keeps talking. After a change that may narrow what a
pod is allowed, every entry to or from that pod is judged again with the same grants
the tables were made from. The denied ones are revoked first (their 5-tuples go in the
tables' `revoked` set, so no packet of theirs passes either way while their entries
go), then deleted: the flow's next packet is refused, and an answer that was in flight
cannot recreate the entry the other way round.

The kernel filters the dump by the pods' addresses: pyroute2 decodes an entry in about
half a millisecond, and a busy node holds tens of thousands (closed TCP connections
stay two minutes), so a whole dump per change would cost seconds of CPU.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import (
    TCP_CONNTRACK_CLOSE,
    TCP_CONNTRACK_TIME_WAIT,
    NFCTAttrTuple,
)

from weft.agent.policy.model import EGRESS, INGRESS, Grant

log = logging.getLogger(__name__)

CLOSED = (TCP_CONNTRACK_TIME_WAIT, TCP_CONNTRACK_CLOSE)
# Each filtered dump walks the whole table in the kernel (tens of ms on a busy node):
# past this many pods' directions, one dump of everything costs less.
FILTERED_DUMPS_UP_TO = 16
PROTOCOL_NAMES = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP",
                  socket.IPPROTO_SCTP: "SCTP"}
# (local pod address, direction) -> its grants, or None when it is not isolated
GrantsOf = Callable[[str, str], list[Grant] | None]
# puts `client . server . protocol . client port . server port` elements in `revoked`
Revoke = Callable[[list[str]], None]
RemoveDenied = Callable[[GrantsOf, Revoke, list[tuple[str, str]] | None], int]


def allowed(grants: list[Grant] | None, peer: str, protocol: str, port: int | None) -> bool:
    return grants is None or any(g.allows(peer, protocol, port) for g in grants)


def narrowed(old: Mapping[tuple[str, str], list[Grant] | None],
             new: Mapping[tuple[str, str], list[Grant] | None],
             changed: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Of the `changed` (pod address, direction), those whose change may deny something
    it allowed: newly isolated, or with a grant that no new grant covers. (A policy that
    only allows more, as most new policies do, needs no look at conntrack.)"""
    return [key for key in sorted(set(changed)) if new.get(key) is not None and (
        old.get(key) is None or
        not all(any(n.covers(o) for n in new[key]) for o in old[key]))]


def remove_denied(grants_of: GrantsOf, revoke: Revoke,
                  pods: Iterable[tuple[str, str]] | None = None) -> int:
    """Revoke and delete the entries of flows the grants deny; returns how many went.
    `pods`: the (address, direction) whose grants may have narrowed; None: every entry."""
    deleted = 0
    seen: set[tuple] = set()
    with Conntrack() as ct:
        for chosen in _filters(pods):
            # The whole dump first: a delete amid one broke pyroute2's socket ("Event
            # loop is closed") for every later call in that thread.
            flows = [f for f in map(_flow, list(ct.dump(**chosen))) if f and f.key not in seen]
            seen.update(flow.key for flow in flows)
            denied = [flow for flow in flows if not (
                allowed(grants_of(flow.source, EGRESS), flow.destination, flow.protocol,
                        flow.port) and
                allowed(grants_of(flow.destination, INGRESS), flow.source, flow.protocol,
                        flow.port))]
            revoke([flow.revoked for flow in denied if flow.revoked])
            for flow in denied:
                try:
                    ct.delete(flow.orig)
                    deleted += 1
                except Exception as err:  # it may have ended meanwhile
                    log.debug("could not delete the conntrack entry of %s -> %s: %s",
                              flow.source, flow.destination, err)
    if deleted:
        log.info("stopped %d flow%s that policy now denies", deleted, "" if deleted == 1 else "s")
    return deleted


@dataclass(frozen=True)
class Flow:
    """A conntrack entry as the tables judge it: after DNAT, so the destination is the
    endpoint that answers, and the port the one it answers from."""

    orig: NFCTAttrTuple  # what deletes it
    source: str
    destination: str
    protocol: str  # TCP, UDP, SCTP; "" for a flow without ports
    port: int | None
    revoked: str  # its element of `revoked`, "" for a flow without ports

    @property
    def key(self) -> tuple:
        o = self.orig
        return (o.saddr, o.daddr, o.proto, o.sport, o.dport, o.icmp_id)


def _flow(message) -> Flow | None:
    """A dumped entry's flow; None for what is not a live IPv4 flow. Its TCP state is
    read before its tuples, which cost most to decode: a closed TCP connection stays
    two minutes, and a new SYN of its 5-tuple is judged anew anyway."""
    if message.get("nfgen_family") != socket.AF_INET:
        return None
    protoinfo = message.get_attr("CTA_PROTOINFO")
    tcp = protoinfo.get_attr("CTA_PROTOINFO_TCP") if protoinfo else None
    if tcp is not None and tcp.get_attr("CTA_PROTOINFO_TCP_STATE") in CLOSED:
        return None
    orig = NFCTAttrTuple.from_netlink(socket.AF_INET, message.get_attr("CTA_TUPLE_ORIG"))
    reply = NFCTAttrTuple.from_netlink(socket.AF_INET, message.get_attr("CTA_TUPLE_REPLY"))
    if not orig.saddr or not reply.saddr:
        return None
    protocol = PROTOCOL_NAMES.get(orig.proto, "")
    port = reply.sport if protocol else None
    revoked = (f"{orig.saddr} . {reply.saddr} . {protocol.lower()} . {orig.sport} . {port}"
               if protocol else "")
    return Flow(orig, orig.saddr, reply.saddr, protocol, port, revoked)


def _filters(pods: Iterable[tuple[str, str]] | None) -> list[dict]:
    """The dumps that hold the pods' flows: a pod's egress flows are the ones it began;
    its ingress flows the ones that reach it, straight (by the original destination:
    these come first) or through a Service (by who answers). Many pods: one dump."""
    if pods is None:
        return [{}]
    chosen = sorted(set(pods))
    if len(chosen) > FILTERED_DUMPS_UP_TO:
        return [{}]
    return ([{"tuple_orig": NFCTAttrTuple(saddr=a)} for a, d in chosen if d == EGRESS] +
            [{"tuple_orig": NFCTAttrTuple(daddr=a)} for a, d in chosen if d == INGRESS] +
            [{"tuple_reply": NFCTAttrTuple(saddr=a)} for a, d in chosen if d == INGRESS])
