"""`weft policy explain` and `weft policy show`: verdicts from the renderer's own grants.

A packet is allowed when the source pod's egress and the destination pod's ingress
both allow it. Each side is looked up in `Cluster.grants`, the very list the nftables
sets are made of, so what this says is what the tables do.
"""

from __future__ import annotations

from dataclasses import dataclass

from weft.agent.policy.model import EGRESS, INGRESS, Cluster, Pod


@dataclass(frozen=True)
class Side:
    direction: str
    pod: Pod | None
    allowed: bool
    reason: str


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    sides: tuple[Side, ...]

    def lines(self) -> list[str]:
        word = "ALLOWED" if self.allowed else "DENIED"
        return [word, *(f"  {s.direction}: {s.reason}" for s in self.sides)]


def explain(cluster: Cluster, source: str, destination: str, protocol: str,
            port: int | None) -> Verdict:
    """The verdict on a packet from address `source` to `destination` (after DNAT)."""
    src, dst = cluster.pod_at(source), cluster.pod_at(destination)
    if src is not None and src is dst:
        side = Side(EGRESS, src, True, f"{src.key} to itself never leaves its namespace")
        return Verdict(True, (side,))
    sides = (_side(cluster, src, EGRESS, destination, protocol, port),
             _side(cluster, dst, INGRESS, source, protocol, port))
    return Verdict(all(s.allowed for s in sides), sides)


def _side(cluster: Cluster, pod: Pod | None, direction: str, peer: str, protocol: str,
          port: int | None) -> Side:
    where = "from" if direction == EGRESS else "to"
    if pod is None:
        return Side(direction, None, True, f"{where} an address that is not a pod: no policy "
                    "applies on this side")
    policies = cluster.selecting(pod, direction)
    if not policies:
        return Side(direction, pod, True, f"{pod.key} is not isolated for {direction} "
                    "(no policy selects it)")
    for grant in cluster.grants(pod, direction) or []:
        if grant.allows(peer, protocol, port):
            what = "any port" if grant.protocol == "any" else (
                f"{grant.protocol} {grant.low}" + (f"-{grant.high}" if grant.high != grant.low
                                                   else ""))
            return Side(direction, pod, True, f"{pod.key}: allowed by {grant.policy} "
                        f"{direction} rule {grant.rule + 1} ({grant.peer}, {what})")
    names = ", ".join(p.key for p in policies)
    return Side(direction, pod, False, f"{pod.key} is isolated for {direction} by {names}, "
                "and no rule of theirs allows this")


def show(cluster: Cluster, pods: list[Pod]) -> list[tuple[str, str, str, str]]:
    """(pod, address, ingress, egress) rows: the policies that isolate each pod."""
    rows = []
    for pod in sorted(pods, key=lambda p: p.key):
        cells = []
        for direction in (INGRESS, EGRESS):
            policies = cluster.selecting(pod, direction)
            cells.append(", ".join(p.key for p in policies) or "not isolated")
        rows.append((pod.key, pod.ip or "-", *cells))
    return rows
