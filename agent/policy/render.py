"""The node's NetworkPolicy as nftables: weft's own table, a chain per grant list.

A packet costs one map lookup per direction and one set lookup in its pod's chain,
with 1 policy or 1,000:

    forward (hook)   a revoked flow's packet, either way: refuse or drop
                     established/related: accept
                     source address in out-pods:       jump to its egress chain
                     destination address in in-pods:   jump to its ingress chain
    input (hook)     the same for egress to the node itself
    in-<digest>      peer in <chain>-any, or (peer . protocol . port) in <chain>-ports:
                     return; else count against the pod, refuse
                     (out-<digest> is the same for egress)

Pods that the same policies select have the same grants, so they share a chain: a
chain is named by the digest of what it allows. A policy change adds the chains of
the grant lists that are new, moves pods' map entries to them and deletes the chains
no pod uses any more; no set is rewritten element by element. nft 1.0.6 takes minutes
of CPU on one concatenated interval set of tens of thousands of elements (every pod's
grants in one set, the first design), and milliseconds on hundreds of small ones.

A revoked flow is one whose conntrack entry the agent deleted because policy now
denies it (flows.py). Its 5-tuple stays in `revoked` for a while, so neither a packet
in flight nor a reply the server was still sending recreates the entry the other way
round (server to client: allowed, and the client's packets would then be its replies).

Refused means a TCP reset or an ICMP admin-prohibited: a client learns at once that
policy stopped it, instead of waiting out a timeout (a drop looks like a dead pod).

The elements of an interval set must not overlap, so a chain's grants are cut into
disjoint pieces: per protocol, the port axis is split where any grant starts or ends,
and each piece takes the union of the addresses of the grants covering it.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from weft.agent.policy import ranges
from weft.agent.policy.model import ANY, EGRESS, INGRESS, Cluster, Grant, Pod

TABLE = "weft"
FAMILY = "inet"
PRIORITY = "filter - 5"  # before iptables' filter chains: a refusal there is final anyway

PODS_MAP = {INGRESS: "in-pods", EGRESS: "out-pods"}  # isolated pod -> jump its chain
DENIED_MAP = {INGRESS: "in-denied", EGRESS: "out-denied"}  # pod -> its denied counter
PREFIX = {INGRESS: "in", EGRESS: "out"}
# (the pod's address, the peer's) in the packet, by direction
POD_FIELD = {INGRESS: "ip daddr", EGRESS: "ip saddr"}
PEER_FIELD = {INGRESS: "ip saddr", EGRESS: "ip daddr"}
REVOKED = "revoked"
# Long enough for what was in flight and for a slow server's last answers; a flow
# silent for longer is judged anew (conntrack forgets an idle UDP flow after 30 s).
REVOKED_SECONDS = 30
FLOW = "ip saddr . ip daddr . meta l4proto . th sport . th dport"
REVERSED_FLOW = "ip daddr . ip saddr . meta l4proto . th dport . th sport"
ANY_TYPE = "type ipv4_addr; flags interval;"
PORTS_TYPE = "type ipv4_addr . inet_proto . inet_service; flags interval;"

# What every table holds before the chains of the grant lists (which refuse), and the
# hooks after them (which jump to those chains through the maps).
FIXED_HEAD = f"""\
  set {REVOKED} {{
    type ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service;
    flags timeout; timeout {REVOKED_SECONDS}s;
  }}
  chain refuse {{
    meta l4proto tcp reject with tcp reset
    reject with icmpx admin-prohibited
  }}
"""
FIXED_TAIL = f"""\
  chain forward {{
    type filter hook forward priority {PRIORITY}; policy accept;
    {FLOW} @{REVOKED} goto refuse
    {REVERSED_FLOW} @{REVOKED} drop
    ct state established,related accept
    ip saddr vmap @{PODS_MAP[EGRESS]}
    ip daddr vmap @{PODS_MAP[INGRESS]}
  }}
  chain input {{
    type filter hook input priority {PRIORITY}; policy accept;
    {FLOW} @{REVOKED} goto refuse
    ct state established,related accept
    ip saddr vmap @{PODS_MAP[EGRESS]}
  }}
  chain output {{
    type filter hook output priority {PRIORITY}; policy accept;
    {REVERSED_FLOW} @{REVOKED} drop
  }}
"""


@dataclass(frozen=True)
class Chain:
    """What one grant list allows, as the chain its pods jump to: `anywhere` peers on
    any protocol and port, `ports` as `peer . protocol . port` pieces."""

    direction: str
    anywhere: tuple[str, ...]
    ports: tuple[str, ...]

    @functools.cached_property
    def name(self) -> str:
        digest = hashlib.sha1("\n".join((self.direction, *self.anywhere, "", *self.ports))
                              .encode()).hexdigest()[:16]
        return f"{PREFIX[self.direction]}-{digest}"

    def declaration(self) -> str:
        """Its sets and the chain, as they stand inside a `table` block."""
        name, peer = self.name, PEER_FIELD[self.direction]
        lines, rules = [], []
        if self.anywhere:
            lines.append(f"  set {name}-any {{ {ANY_TYPE} elements = {{ "
                         f"{', '.join(self.anywhere)} }} }}")
            rules.append(f"{peer} @{name}-any return")
        if self.ports:
            lines.append(f"  set {name}-ports {{ {PORTS_TYPE} elements = {{ "
                         f"{', '.join(self.ports)} }} }}")
            rules.append(f"{peer} . meta l4proto . th dport @{name}-ports return")
        rules += [f"counter name {POD_FIELD[self.direction]} map @{DENIED_MAP[self.direction]}",
                  "goto refuse"]
        lines.append(f"  chain {name} {{\n" + "".join(f"    {r}\n" for r in rules) + "  }")
        return "\n".join(lines) + "\n"

    def deletion(self) -> str:
        """Deletes it, then its sets (which its rules name)."""
        name = self.name
        lines = [f"flush chain {FAMILY} {TABLE} {name}", f"delete chain {FAMILY} {TABLE} {name}"]
        lines += [f"delete set {FAMILY} {TABLE} {name}-{kind}"
                  for kind, items in (("any", self.anywhere), ("ports", self.ports)) if items]
        return "\n".join(lines) + "\n"


@dataclass
class Ruleset:
    """Which chain each isolated local pod jumps to, per direction, and those chains."""

    pods: dict[str, dict[str, str]] = field(default_factory=lambda: {
        INGRESS: {}, EGRESS: {}})  # direction -> pod address -> chain name
    chains: dict[str, Chain] = field(default_factory=dict)

    def counters(self) -> set[str]:
        return {counter_name(d, ip) for d, by_pod in self.pods.items() for ip in by_pod}


@dataclass
class Rendered:
    ruleset: Ruleset
    # per local pod and direction, its grants (None: not isolated): what conntrack
    # cleanup and the metrics judge by
    grants: dict[tuple[str, str], list[Grant] | None]
    pods: dict[str, Pod]  # local pods by address


def counter_name(direction: str, address: str) -> str:
    return f"{PREFIX[direction]}-denied-{address.replace('.', '-')}"


class Cache:
    """A grant list's chain, across pods and syncs: pods that the same policies select
    share it, and a sync recomputes only what changed. Keys hold the identity of
    interned address sets, so the model's `interned` dict must live as long as this
    cache (the enforcer keeps both and drops both when they grow)."""

    LIMIT = 20_000

    def __init__(self) -> None:
        self.interned: dict[ranges.Ranges, ranges.Ranges] = {}
        self.chains: dict[tuple, Chain] = {}

    def trim(self) -> None:
        if len(self.chains) > self.LIMIT or len(self.interned) > self.LIMIT:
            self.interned.clear()
            self.chains.clear()


def render(cluster: Cluster, local: Iterable[Pod], cache: Cache | None = None) -> Rendered:
    cache = cache or Cache()
    ruleset = Ruleset()
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
            key = (direction, *((g.protocol, g.low, g.high, id(g.addresses)) for g in granted))
            chain = cache.chains.get(key)
            if chain is None:
                chain = cache.chains[key] = Chain(direction, *_pieces(granted))
            ruleset.pods[direction][pod.ip] = chain.name
            ruleset.chains[chain.name] = chain
    return Rendered(ruleset, grants, pods)


def _pieces(granted: list[Grant]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A grant list as the elements of its chain's any and ports sets."""
    anywhere = ranges.merge(r for g in granted if g.protocol == ANY for r in g.addresses)
    by_protocol: dict[str, list[Grant]] = {}
    for grant in granted:
        if grant.protocol != ANY:
            by_protocol.setdefault(grant.protocol, []).append(grant)
    ports = []
    for protocol, pieces in sorted(by_protocol.items()):
        for low, high, addresses in _disjoint(pieces):
            numbers = str(low) if low == high else f"{low}-{high}"
            ports += [f"{span} . {protocol.lower()} . {numbers}"
                      for span in ranges.spans(addresses)]
    return tuple(ranges.spans(anywhere)), tuple(ports)


def full_script(ruleset: Ruleset) -> str:
    """Replace weft's table whole, in one transaction (packets see old or new). What a
    rule or an element names comes before it."""
    body = [f"  counter {name} {{ }}" for name in sorted(ruleset.counters())]
    body += [f"  map {DENIED_MAP[d]} {{ type ipv4_addr : counter;"
             f"{_contents(_counted(ruleset, d))} }}" for d in (INGRESS, EGRESS)]
    body.append(FIXED_HEAD.rstrip("\n"))
    body += [ruleset.chains[name].declaration().rstrip("\n") for name in sorted(ruleset.chains)]
    body += [f"  map {PODS_MAP[d]} {{ type ipv4_addr : verdict;"
             f"{_contents(_jumps(ruleset, d))} }}" for d in (INGRESS, EGRESS)]
    body.append(FIXED_TAIL.rstrip("\n"))
    return (f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
            f"table {FAMILY} {TABLE} {{\n" + "\n".join(body) + "\n}\n")


def change_script(old: Ruleset, new: Ruleset) -> str:
    """What turns `old` into `new`, in one transaction: the new chains and counters
    first, then the pods' map entries, then what nothing uses any more."""
    lines = []
    added = [new.chains[name] for name in sorted(new.chains.keys() - old.chains.keys())]
    if added:
        lines.append(f"table {FAMILY} {TABLE} {{\n" +
                     "".join(chain.declaration() for chain in added) + "}")
    old_counters, new_counters = old.counters(), new.counters()
    lines += [f"add counter {FAMILY} {TABLE} {name}"
              for name in sorted(new_counters - old_counters)]
    for direction in (INGRESS, EGRESS):
        was, now = old.pods[direction], new.pods[direction]
        moved = sorted(ip for ip in was.keys() & now.keys() if was[ip] != now[ip])
        gone = sorted(was.keys() - now.keys())
        came = sorted(now.keys() - was.keys())
        if gone or moved:
            lines.append(f"delete element {FAMILY} {TABLE} {PODS_MAP[direction]} "
                         f"{{ {', '.join(gone + moved)} }}")
        if came or moved:
            jumps = ", ".join(f"{ip} : jump {now[ip]}" for ip in sorted(came + moved))
            lines.append(f"add element {FAMILY} {TABLE} {PODS_MAP[direction]} {{ {jumps} }}")
        if gone:
            lines.append(f"delete element {FAMILY} {TABLE} {DENIED_MAP[direction]} "
                         f"{{ {', '.join(gone)} }}")
        if came:
            lines.append(f"add element {FAMILY} {TABLE} {DENIED_MAP[direction]} "
                         f"{{ {', '.join(_counted(new, direction, came))} }}")
    lines += [f"delete counter {FAMILY} {TABLE} {name}"
              for name in sorted(old_counters - new_counters)]
    lines += [old.chains[name].deletion().rstrip("\n")
              for name in sorted(old.chains.keys() - new.chains.keys())]
    return "\n".join(lines) + ("\n" if lines else "")


def _jumps(ruleset: Ruleset, direction: str) -> list[str]:
    """The pod map's elements: each pod's address, to the jump to its chain."""
    return [f"{ip} : jump {chain}" for ip, chain in sorted(ruleset.pods[direction].items())]


def _counted(ruleset: Ruleset, direction: str, pods: Iterable[str] | None = None) -> list[str]:
    """The denied map's elements: each pod's address, to the name of its counter."""
    chosen = sorted(ruleset.pods[direction]) if pods is None else pods
    return [f'{ip} : "{counter_name(direction, ip)}"' for ip in chosen]


def _contents(items: list[str]) -> str:
    return f" elements = {{ {', '.join(items)} }}" if items else ""


def revoke_script(flows: Iterable[str]) -> str:
    """Add revoked flows (`client . server . protocol . client port . server port`)."""
    items = sorted(flows)
    if not items:
        return ""
    return f"add element {FAMILY} {TABLE} {REVOKED} {{ {', '.join(items)} }}\n"


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
