"""kube-proxy's iptables rules for weft's service ports: pure functions.

nat:    PREROUTING, OUTPUT -> WEFT-SERVICES
        WEFT-SERVICES   cluster IP / external IP -> WEFT-SVC-* / WEFT-EXT-*; local
                        addresses -> WEFT-NODEPORTS (last)
        WEFT-NODEPORTS  node port -> WEFT-EXT-*
        WEFT-EXT-*      mark for masquerade, then WEFT-SVC-*
        WEFT-SVC-*      mark traffic from outside the cluster CIDR; pick an endpoint:
                        ClientIP affinity first, then -m statistic 1/(n-i)
        WEFT-SVL-*      the same over this node's endpoints, for the cluster IP of a
                        Service with internalTrafficPolicy: Local and node ports
        WEFT-SEP-*      mark hairpin traffic (an endpoint reaching itself), DNAT
        WEFT-MARK-MASQ  set the masquerade mark; the agent's WEFT-POSTROUTING
                        masquerades what carries it
filter: FORWARD, OUTPUT -> WEFT-SERVICES: REJECT service ports with no endpoints
        INPUT, FORWARD -> WEFT-EXTERNAL-SERVICES: the same for node ports

Chain names are a prefix and a hash of the service port (and endpoint), at most
28 characters. Each service port renders on its own, so a sync can reuse the
rules of every service port that did not change.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from weft.agent.iptables import Jump
from weft.agent.nat import MASQ_MARK
from weft.agent.proxy.model import ServicePort

SERVICES = "WEFT-SERVICES"
NODEPORTS = "WEFT-NODEPORTS"
MARK_MASQ = "WEFT-MARK-MASQ"
EXTERNAL_SERVICES = "WEFT-EXTERNAL-SERVICES"
NEW = "-m conntrack --ctstate NEW"
JUMPS = (
    Jump("nat", "PREROUTING", SERVICES, "weft service portals"),
    Jump("nat", "OUTPUT", SERVICES, "weft service portals"),
    Jump("filter", "FORWARD", SERVICES, "weft services without endpoints", NEW),
    Jump("filter", "OUTPUT", SERVICES, "weft services without endpoints", NEW),
    Jump("filter", "INPUT", EXTERNAL_SERVICES, "weft node ports without endpoints", NEW),
    Jump("filter", "FORWARD", EXTERNAL_SERVICES, "weft node ports without endpoints", NEW),
)


def chain_name(prefix: str, *parts: str) -> str:
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


@dataclass
class PortRules:
    """What one service port contributes: its own chains and its lines in shared ones."""

    chains: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (table, chain)
    services: list[str] = field(default_factory=list)  # nat WEFT-SERVICES
    nodeports: list[str] = field(default_factory=list)  # nat WEFT-NODEPORTS
    rejects: list[str] = field(default_factory=list)  # filter WEFT-SERVICES
    external_rejects: list[str] = field(default_factory=list)  # filter WEFT-EXTERNAL-SERVICES

    def shared(self) -> tuple[list[str], ...]:
        """Its lines in the shared chains: only when these change are those written."""
        return self.services, self.nodeports, self.rejects, self.external_rejects


def render_port(sp: ServicePort, node: str, cluster_cidr: str) -> PortRules:
    """internalTrafficPolicy: Local narrows the cluster IP to this node's endpoints;
    node ports and external IPs keep every endpoint (externalTrafficPolicy: Cluster),
    as in kube-proxy: such a port gets a second pick chain, WEFT-SVL-*."""
    out = PortRules()
    proto = sp.protocol.lower()
    match = f"-p {proto} -m {proto}"
    comment = f'-m comment --comment "{sp.key}'
    internal, external = sp.usable_endpoints(node), sp.endpoints
    svc = chain_name("WEFT-SVC-", sp.key, sp.protocol)
    svl = chain_name("WEFT-SVL-", sp.key, sp.protocol) if internal != external else svc
    ext = chain_name("WEFT-EXT-", sp.key, sp.protocol)
    seps = {e: chain_name("WEFT-SEP-", sp.key, sp.protocol, f"{e.ip}:{e.port}")
            for e in external}
    if internal:
        out.services.append(f"-A {SERVICES} -d {sp.cluster_ip}/32 {match} --dport {sp.port} "
                            f'{comment} cluster IP" -j {svl}')
        out.chains[("nat", svl)] = [
            f"-A {svl} ! -s {cluster_cidr} -d {sp.cluster_ip}/32 {match} --dport {sp.port} "
            f'{comment} cluster IP from outside the pods" -j {MARK_MASQ}',
            *_pick(svl, [seps[e] for e in internal], sp.affinity_seconds)]
    else:
        why = "has no local endpoints" if external else "has no endpoints"
        out.rejects.append(f"-A {SERVICES} -d {sp.cluster_ip}/32 {match} --dport {sp.port} "
                           f'{comment} {why}" -j REJECT --reject-with icmp-port-unreachable')
    if not external:
        for ip in sp.external_ips:
            out.rejects.append(f"-A {SERVICES} -d {ip}/32 {match} --dport {sp.port} "
                               f'{comment} has no endpoints" -j REJECT --reject-with '
                               "icmp-port-unreachable")
        if sp.node_port:
            out.external_rejects.append(
                f"-A {EXTERNAL_SERVICES} -m addrtype --dst-type LOCAL {match} --dport "
                f'{sp.node_port} {comment} has no endpoints" -j REJECT --reject-with '
                "icmp-port-unreachable")
        return out
    for ip in sp.external_ips:
        out.services.append(f"-A {SERVICES} -d {ip}/32 {match} --dport {sp.port} "
                            f'{comment} external IP" -j {ext}')
    if sp.node_port:
        out.nodeports.append(f"-A {NODEPORTS} {match} --dport {sp.node_port} "
                             f'{comment} node port" -j {ext}')
    if sp.external_ips or sp.node_port:
        out.chains[("nat", ext)] = [f"-A {ext} -j {MARK_MASQ}", f"-A {ext} -j {svc}"]
        if svc != svl:
            out.chains[("nat", svc)] = _pick(svc, list(seps.values()), sp.affinity_seconds)
    used = set(internal) | set(external if sp.external_ips or sp.node_port else ())
    for endpoint, sep in seps.items():
        if endpoint not in used:
            continue
        recent = f"-m recent --name {sep} --set " if sp.affinity_seconds else ""
        out.chains[("nat", sep)] = [
            f"-A {sep} -s {endpoint.ip}/32 -j {MARK_MASQ}",
            f"-A {sep} {match} {recent}-j DNAT --to-destination {endpoint.ip}:{endpoint.port}",
        ]
    return out


def _pick(chain: str, seps: list[str], affinity_seconds: int) -> list[str]:
    """Rules choosing one endpoint chain: ClientIP affinity first, then at random."""
    rules = []
    if affinity_seconds:
        rules += [f"-A {chain} -m recent --name {sep} --rcheck --seconds {affinity_seconds} "
                  f"--reap -j {sep}" for sep in seps]
    for i, sep in enumerate(seps):
        if i < len(seps) - 1:
            rules.append(f"-A {chain} -m statistic --mode random --probability "
                         f"{1 / (len(seps) - i):.11f} -j {sep}")
        else:
            rules.append(f"-A {chain} -j {sep}")
    return rules


def shared_chains(parts: Iterable[PortRules]) -> dict[tuple[str, str], list[str]]:
    """{(table, chain): rules} of the chains every service port adds lines to, and
    WEFT-MARK-MASQ."""
    lines: tuple[list[str], ...] = ([], [], [], [])
    for part in parts:
        for into, more in zip(lines, part.shared(), strict=True):
            into += more
    services, nodeports, rejects, external_rejects = lines
    services.append(f"-A {SERVICES} -m addrtype --dst-type LOCAL -m comment --comment "
                    f'"weft node ports; must be last" -j {NODEPORTS}')
    return {("nat", SERVICES): services, ("nat", NODEPORTS): nodeports,
            ("nat", MARK_MASQ): [f"-A {MARK_MASQ} -j MARK --or-mark {MASQ_MARK}"],
            ("filter", SERVICES): rejects, ("filter", EXTERNAL_SERVICES): external_rejects}


def assemble(parts: Sequence[PortRules]) -> dict[str, dict[str, list[str]]]:
    """{table: {chain: rules}} of every chain the proxy owns."""
    out: dict[str, dict[str, list[str]]] = {"nat": {}, "filter": {}}
    for part in (shared_chains(parts), *(p.chains for p in parts)):
        for (table, chain), rules in part.items():
            out[table][chain] = rules
    return out
