"""The node's NetworkPolicy as nftables: weft's own table, fixed chains, and sets.

Every decision is a set lookup, so a packet costs the same with 1 policy or 1,000:

    forward (hook)   a revoked flow's packet, either way: refuse or drop
                     established/related: accept
                     source is a local pod isolated for egress:     jump egress
                     destination is one isolated for ingress:       jump ingress
    input (hook)     the same for egress to the node itself
    egress           (pod . destination) in out-any, or
                     (pod . destination . protocol . port) in out-ports: return
                     else count against the pod, refuse
    ingress          the same with (pod . source ...) in in-any / in-ports

A revoked flow is one whose conntrack entry the agent deleted because policy now
denies it (flows.py). Its 5-tuple stays in `revoked` for a while, so neither a packet
in flight nor a reply the server was still sending recreates the entry the other way
round (server to client: allowed, and the client's packets would then be its replies).

Refused means a TCP reset or an ICMP admin-prohibited: a client learns at once that
policy stopped it, instead of waiting out a timeout (a drop looks like a dead pod).

The elements of an interval set must not overlap, so each pod's grants are cut
into disjoint pieces: per protocol, the port axis is split where any grant starts
or ends, and each piece takes the union of the addresses of the grants covering it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from weft.agent.policy import ranges
from weft.agent.policy.model import ANY, EGRESS, INGRESS, Cluster, Grant, Pod

TABLE = "weft"
FAMILY = "inet"
PRIORITY = "filter - 5"  # before iptables' filter chains: a refusal there is final anyway

ISOLATED = {INGRESS: "in-isolated", EGRESS: "out-isolated"}
ANY_SET = {INGRESS: "in-any", EGRESS: "out-any"}
PORTS_SET = {INGRESS: "in-ports", EGRESS: "out-ports"}
DENIED_MAP = {INGRESS: "in-denied", EGRESS: "out-denied"}
REVOKED = "revoked"
# Long enough for what was in flight and for a slow server's last answers; a flow
# silent for longer is judged anew (conntrack forgets an idle UDP flow after 30 s).
REVOKED_SECONDS = 30
FLOW = "ip saddr . ip daddr . meta l4proto . th sport . th dport"
REVERSED_FLOW = "ip daddr . ip saddr . meta l4proto . th dport . th sport"
SETS = {
    **{name: "type ipv4_addr;" for name in ISOLATED.values()},
    **{name: "type ipv4_addr . ipv4_addr; flags interval;" for name in ANY_SET.values()},
    **{name: "type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval;"
       for name in PORTS_SET.values()},
    **{name: "type ipv4_addr : counter;" for name in DENIED_MAP.values()},
}

CHAINS = f"""\
  set {REVOKED} {{
    type ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service;
    flags timeout; timeout {REVOKED_SECONDS}s;
  }}
  chain forward {{
    type filter hook forward priority {PRIORITY}; policy accept;
    {FLOW} @{REVOKED} goto refuse
    {REVERSED_FLOW} @{REVOKED} drop
    ct state established,related accept
    ip saddr @{ISOLATED[EGRESS]} jump egress
    ip daddr @{ISOLATED[INGRESS]} jump ingress
  }}
  chain input {{
    type filter hook input priority {PRIORITY}; policy accept;
    {FLOW} @{REVOKED} goto refuse
    ct state established,related accept
    ip saddr @{ISOLATED[EGRESS]} jump egress
  }}
  chain output {{
    type filter hook output priority {PRIORITY}; policy accept;
    {REVERSED_FLOW} @{REVOKED} drop
  }}
  chain egress {{
    ip saddr . ip daddr @{ANY_SET[EGRESS]} return
    ip saddr . ip daddr . meta l4proto . th dport @{PORTS_SET[EGRESS]} return
    counter name ip saddr map @{DENIED_MAP[EGRESS]}
    goto refuse
  }}
  chain ingress {{
    ip daddr . ip saddr @{ANY_SET[INGRESS]} return
    ip daddr . ip saddr . meta l4proto . th dport @{PORTS_SET[INGRESS]} return
    counter name ip daddr map @{DENIED_MAP[INGRESS]}
    goto refuse
  }}
  chain refuse {{
    meta l4proto tcp reject with tcp reset
    reject with icmpx admin-prohibited
  }}
"""


@dataclass
class Ruleset:
    """The elements of every set and map, and the counters the maps name."""

    elements: dict[str, frozenset[str]] = field(default_factory=lambda: {
        name: frozenset() for name in SETS})
    counters: frozenset[str] = frozenset()


@dataclass
class Rendered:
    ruleset: Ruleset
    # per local pod and direction, its grants (None: not isolated): what conntrack
    # cleanup and the metrics judge by
    grants: dict[tuple[str, str], list[Grant] | None]
    pods: dict[str, Pod]  # local pods by address


def counter_name(direction: str, address: str) -> str:
    return f"{'in' if direction == INGRESS else 'out'}-denied-{address.replace('.', '-')}"


class Cache:
    """A pod's elements by what its grants are, across pods and syncs: pods that the same
    policies select get the same pieces, and a sync recomputes only what changed. Keys
    hold the identity of interned address sets, so the model's `interned` dict must live
    as long as this cache (the enforcer keeps both and drops both when they grow)."""

    LIMIT = 20_000

    def __init__(self) -> None:
        self.interned: dict[ranges.Ranges, ranges.Ranges] = {}
        self.pieces: dict[tuple, tuple[list[str], list[str]]] = {}

    def trim(self) -> None:
        if len(self.pieces) > self.LIMIT or len(self.interned) > self.LIMIT:
            self.interned.clear()
            self.pieces.clear()


def render(cluster: Cluster, local: Iterable[Pod], cache: Cache | None = None) -> Rendered:
    cache = cache or Cache()
    elements: dict[str, set[str]] = {name: set() for name in SETS}
    counters: set[str] = set()
    grants: dict[tuple[str, str], list[Grant] | None] = {}
    pods = {}
    for pod in local:
        if not pod.ip or pod.host_network:
            continue
        pods[pod.ip] = pod
        for direction in (INGRESS, EGRESS):
            granted = cluster.grants(pod, direction)
            grants[(pod.ip, direction)] = granted
            if granted is None:
                continue
            counter = counter_name(direction, pod.ip)
            counters.add(counter)
            elements[ISOLATED[direction]].add(pod.ip)
            elements[DENIED_MAP[direction]].add(f'{pod.ip} : "{counter}"')
            key = tuple((g.protocol, g.low, g.high, id(g.addresses)) for g in granted)
            if key not in cache.pieces:
                cache.pieces[key] = _pieces(granted)
            anywhere, ports = cache.pieces[key]
            elements[ANY_SET[direction]].update(f"{pod.ip} . {span}" for span in anywhere)
            elements[PORTS_SET[direction]].update(f"{pod.ip} . {piece}" for piece in ports)
    ruleset = Ruleset({name: frozenset(v) for name, v in elements.items()}, frozenset(counters))
    return Rendered(ruleset, grants, pods)


def _pieces(granted: list[Grant]) -> tuple[list[str], list[str]]:
    """One pod's grants as what follows its address in the any and ports sets."""
    anywhere = ranges.merge(r for g in granted if g.protocol == ANY for r in g.addresses)
    by_protocol: dict[str, list[Grant]] = {}
    for grant in granted:
        if grant.protocol != ANY:
            by_protocol.setdefault(grant.protocol, []).append(grant)
    ports = []
    for protocol, pieces in by_protocol.items():
        for low, high, addresses in _disjoint(pieces):
            numbers = str(low) if low == high else f"{low}-{high}"
            ports += [f"{span} . {protocol.lower()} . {numbers}"
                      for span in ranges.spans(addresses)]
    return ranges.spans(anywhere), ports


def full_script(ruleset: Ruleset) -> str:
    """Replace weft's table whole, in one transaction (packets see old or new)."""
    body = [f"  counter {name} {{ }}" for name in sorted(ruleset.counters)]
    for name, kind in SETS.items():
        items = sorted(ruleset.elements[name])
        contents = f" elements = {{ {', '.join(items)} }}" if items else ""
        word = "map" if ":" in kind.split(";")[0] else "set"
        body.append(f"  {word} {name} {{ {kind}{contents} }}")
    return (f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
            f"table {FAMILY} {TABLE} {{\n" + "\n".join(body) + "\n" + CHAINS + "}\n")


def change_script(old: Ruleset, new: Ruleset) -> str:
    """What turns `old` into `new`, in one transaction: removals first (map entries
    before the counters they name), then additions (counters before their entries)."""
    lines = []
    maps = [name for name in SETS if name in DENIED_MAP.values()]
    plain = [name for name in SETS if name not in maps]
    for name in maps + plain:
        gone = old.elements[name] - new.elements[name]
        if gone:
            lines.append(f"delete element {FAMILY} {TABLE} {name} {{ {', '.join(sorted(gone))} }}")
    lines += [f"delete counter {FAMILY} {TABLE} {name}"
              for name in sorted(old.counters - new.counters)]
    lines += [f"add counter {FAMILY} {TABLE} {name}"
              for name in sorted(new.counters - old.counters)]
    for name in plain + maps:
        added = new.elements[name] - old.elements[name]
        if added:
            lines.append(f"add element {FAMILY} {TABLE} {name} {{ {', '.join(sorted(added))} }}")
    return "\n".join(lines) + ("\n" if lines else "")


def revoke_script(flows: Iterable[str]) -> str:
    """Add revoked flows (`client . server . protocol . client port . server port`)."""
    items = sorted(flows)
    if not items:
        return ""
    return f"add element {FAMILY} {TABLE} {REVOKED} {{ {', '.join(items)} }}\n"


def narrowed(old: Ruleset, new: Ruleset) -> bool:
    """Whether the change may deny a flow that was allowed (so conntrack is checked)."""
    for direction in (INGRESS, EGRESS):
        if new.elements[ISOLATED[direction]] - old.elements[ISOLATED[direction]]:
            return True
        for name in (ANY_SET[direction], PORTS_SET[direction]):
            if old.elements[name] - new.elements[name]:
                return True
    return False


def _disjoint(grants: list[Grant]) -> list[tuple[int, int, ranges.Ranges]]:
    """Port pieces that do not overlap, each with the addresses allowed on it."""
    bounds = sorted({g.low for g in grants} | {g.high + 1 for g in grants})
    out: list[tuple[int, int, ranges.Ranges]] = []
    for low, next_low in itertools.pairwise(bounds):
        high = next_low - 1
        addresses = ranges.merge(r for g in grants if g.low <= low and high <= g.high
                                 for r in g.addresses)
        if not addresses:
            continue
        if out and out[-1][1] == low - 1 and out[-1][2] == addresses:
            out[-1] = (out[-1][0], high, addresses)
        else:
            out.append((low, high, addresses))
    return out
