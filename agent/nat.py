"""NAT outgoing and forwarding for pool traffic, as iptables rules.

  nat    POSTROUTING -> WEFT-POSTROUTING: what the service proxy marked in
         WEFT-MARK-MASQ is masqueraded; other traffic to any pool is left alone;
         traffic from a natOutgoing pool to anything else is masqueraded to the
         node's address (pod-to-pod traffic is never NATed). The chain is the
         agent's alone: iptables-restore flushes a chain it writes, so two
         programs cannot share one.
  filter FORWARD     -> WEFT-FORWARD: accept traffic from and to the pools, so a
         node whose FORWARD policy is DROP (Docker's) still forwards pods.
"""

from __future__ import annotations

from weft.agent.iptables import Applier, Jump
from weft.ipam.pools import Pool

NAT_CHAIN = "WEFT-POSTROUTING"
FORWARD_CHAIN = "WEFT-FORWARD"
MASQ_MARK = "0x4000"
JUMPS = (Jump("nat", "POSTROUTING", NAT_CHAIN, "weft: nat outgoing"),
         Jump("filter", "FORWARD", FORWARD_CHAIN, "weft: pool traffic", first=False))


def render(pools: list[Pool], family: int = 4) -> dict[str, dict[str, list[str]]]:
    """{table: {chain: rules}} for the pools of one address family."""
    mine = [p for p in pools if p.family == family and not p.disabled]
    everything = [p for p in pools if p.family == family]
    nat = [f"-A {NAT_CHAIN} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -m comment --comment "
           '"weft: service traffic marked for masquerade" -j MASQUERADE --random-fully']
    nat += [f"-A {NAT_CHAIN} -d {p.cidr} -m comment --comment \"weft: to pool {p.name}\" "
            "-j RETURN" for p in everything]
    nat += [f"-A {NAT_CHAIN} -s {p.cidr} -m comment --comment \"weft: nat outgoing from "
            f"{p.name}\" -j MASQUERADE --random-fully" for p in mine if p.nat_outgoing]
    forward = [f"-A {FORWARD_CHAIN} -s {p.cidr} -j ACCEPT" for p in everything]
    forward += [f"-A {FORWARD_CHAIN} -d {p.cidr} -j ACCEPT" for p in everything]
    return {"nat": {NAT_CHAIN: nat}, "filter": {FORWARD_CHAIN: forward}}


def apply(iptables: Applier, pools: list[Pool], family: int = 4) -> None:
    """Fill weft's chains first, then make sure the built-in chains jump to them."""
    for table, chains in render(pools, family).items():
        iptables.restore(table, chains)
    for jump in JUMPS:
        iptables.ensure_jump(jump)


def remove(iptables: Applier) -> None:
    for jump in JUMPS:
        iptables.remove_jump(jump)
    for jump in JUMPS:
        iptables.restore(jump.table, {}, delete=[jump.target])
