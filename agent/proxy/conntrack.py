"""Delete stale UDP conntrack entries, reconciled against the services' endpoints.

A UDP "connection" (a DNS client's socket, say) keeps following its conntrack
entry to an endpoint that is gone, or keeps missing the service when the entry
was made while it had no endpoints. Every UDP entry whose original destination
is a service's frontend, and whose reply comes from anything but one of that
service's current endpoints, is deleted.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable

from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from weft.agent.proxy.model import ServicePort

log = logging.getLogger(__name__)


def frontends(ports: Iterable[ServicePort], node: str) -> dict[tuple[str, int], set[str]]:
    """{(frontend IP, port): endpoint IPs} for UDP service ports (node ports: IP '*')."""
    valid: dict[tuple[str, int], set[str]] = {}
    for sp in ports:
        if sp.protocol != "UDP":
            continue
        ips = {e.ip for e in sp.usable_endpoints(node)}
        for ip in (sp.cluster_ip, *sp.external_ips):
            valid[(ip, sp.port)] = ips
        if sp.node_port:
            valid[("*", sp.node_port)] = ips
    return valid


def reconcile(ports: Iterable[ServicePort], node: str, known_frontends: set[tuple[str, int]],
              ) -> int:
    """Delete stale entries; `known_frontends` adds services that just went away."""
    valid = frontends(ports, node)
    for gone in known_frontends - set(valid):
        valid[gone] = set()
    if not valid:
        return 0
    deleted = 0
    with Conntrack() as ct:
        stale = []
        # The whole dump first: a delete amid it broke pyroute2's socket ("Event loop is
        # closed") for every later call in that thread.
        for entry in ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP)):
            orig, reply = entry.tuple_orig, entry.tuple_reply
            key = (orig.daddr, orig.dport)
            allowed = valid.get(key)
            if allowed is None:
                allowed = valid.get(("*", orig.dport))
            if allowed is not None and reply.saddr not in allowed:
                stale.append(entry)
        for entry in stale:
            try:
                ct.delete(entry)
                deleted += 1
            except Exception as err:  # it may have expired meanwhile
                log.debug("could not delete conntrack entry %s: %s", entry, err)
    if deleted:
        log.info("deleted %d stale UDP conntrack entries", deleted)
    return deleted
