"""Stop the established flows a policy change denies: delete their conntrack entries.

The tables accept what conntrack already knows before any policy lookup (a packet of
an allowed connection costs one lookup), so a connection that a new policy denies
would live on for as long as it keeps talking. After a change that narrows what is
allowed, every entry to or from an isolated local pod is judged again with the same
grants the tables were made from. The denied ones are revoked first (their 5-tuples go
in the tables' `revoked` set, so no packet of theirs passes either way while their
entries go), then deleted: the flow's next packet is refused, and an answer that was in
flight cannot recreate the entry the other way round.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from pyroute2 import Conntrack

from weft.agent.policy.model import EGRESS, INGRESS, Grant

log = logging.getLogger(__name__)

PROTOCOL_NAMES = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP",
                  socket.IPPROTO_SCTP: "SCTP"}
# (local pod address, direction) -> its grants, or None when it is not isolated
GrantsOf = Callable[[str, str], list[Grant] | None]
# puts `client . server . protocol . client port . server port` elements in `revoked`
Revoke = Callable[[list[str]], None]


def allowed(grants: list[Grant] | None, peer: str, protocol: str, port: int | None) -> bool:
    return grants is None or any(g.allows(peer, protocol, port) for g in grants)


def remove_denied(grants_of: GrantsOf, revoke: Revoke) -> int:
    """Revoke and delete the entries of flows the grants deny; returns how many went."""
    deleted = 0
    with Conntrack() as ct:
        denied, revoked = [], []
        # The whole dump first: a delete amid it broke pyroute2's socket ("Event loop is
        # closed") for every later call in that thread.
        for entry in ct.dump_entries():
            orig, reply = entry.tuple_orig, entry.tuple_reply
            if orig is None or reply is None or not orig.saddr or ":" in orig.saddr:
                continue
            # Judged as the tables judge it: after DNAT, so the destination is the
            # endpoint that answers, and the port the one it answers from.
            source, destination = orig.saddr, reply.saddr
            protocol = PROTOCOL_NAMES.get(orig.proto, "")
            port = reply.sport if protocol else None
            if not (allowed(grants_of(source, EGRESS), destination, protocol, port) and
                    allowed(grants_of(destination, INGRESS), source, protocol, port)):
                denied.append((entry, source, destination))
                if protocol:
                    revoked.append(f"{source} . {destination} . {protocol.lower()} . "
                                   f"{orig.sport} . {port}")
        revoke(revoked)
        for entry, source, destination in denied:
            try:
                ct.delete(entry)
                deleted += 1
            except Exception as err:  # it may have ended meanwhile
                log.debug("could not delete the conntrack entry of %s -> %s: %s",
                          source, destination, err)
    if deleted:
        log.info("stopped %d flow%s that policy now denies", deleted, "" if deleted == 1 else "s")
    return deleted
