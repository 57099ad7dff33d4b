"""NetworkPolicy (networking.k8s.io/v1) as weft reads it: pure, no kernel, no datastore.

`Cluster` holds the pods, namespaces and policies; `grants` turns one pod's policies
into what they allow, as (addresses, protocol, port range) grants each naming the
policy and rule it comes from. The nftables renderer unions the grants of every
local pod; `explain` looks a packet up in the same grants, so the two cannot differ.

Semantics, as the API reference fixes them:
- a pod is isolated for a direction when a policy in its namespace selects it and
  has that direction in policyTypes (Ingress always, unless policyTypes says
  otherwise; Egress when listed, or when the policy has egress rules); an
  isolated pod takes what the union of those policies' rules allows;
- a rule with no peers allows every address; one with no ports, every port of
  every protocol; a port without a number, every port of its protocol;
- peers: podSelector (the policy's namespace), namespaceSelector (every pod in the
  namespaces it selects), both (pods it selects in those namespaces), ipBlock
  (a CIDR minus its excepts: any address, pods' included);
- a named port is resolved on the pod that receives the traffic: for ingress the
  selected pod, for egress each peer pod that declares it (so only pods match);
- host-network pods are never selected, neither as targets nor as peers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import netaddr

from weft.agent.policy import ranges

PROTOCOLS = ("TCP", "UDP", "SCTP")
ALL_PORTS = (0, 65535)
ANY = "any"  # a grant's protocol when its rule has no ports: every protocol, every port
INGRESS, EGRESS = "ingress", "egress"


class PolicyError(ValueError):
    """A NetworkPolicy weft cannot enforce as written (the API server would refuse it)."""


# -- selectors ------------------------------------------------------------------------

@dataclass(frozen=True)
class Selector:
    """A label selector: matchLabels and matchExpressions, all of which must hold."""

    labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.labels):
            return False
        for key, operator, values in self.expressions:
            present = key in labels
            if operator == "In" and not (present and labels[key] in values):
                return False
            if operator == "NotIn" and present and labels[key] in values:
                return False
            if operator == "Exists" and not present:
                return False
            if operator == "DoesNotExist" and present:
                return False
        return True

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.labels]
        for key, operator, values in self.expressions:
            parts.append({"In": f"{key} in ({','.join(values)})",
                          "NotIn": f"{key} notin ({','.join(values)})",
                          "Exists": key, "DoesNotExist": f"!{key}"}[operator])
        return ",".join(parts) or "(all)"


def parse_selector(spec: Mapping[str, Any] | None, what: str) -> Selector:
    spec = spec or {}
    labels = tuple(sorted((str(k), str(v)) for k, v in (spec.get("matchLabels") or {}).items()))
    expressions = []
    for expression in spec.get("matchExpressions") or []:
        operator = expression.get("operator")
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise PolicyError(f"{what}: unknown operator {operator!r} (use In, NotIn, "
                              "Exists or DoesNotExist)")
        expressions.append((str(expression.get("key", "")), operator,
                            tuple(str(v) for v in expression.get("values") or ())))
    return Selector(labels, tuple(expressions))


# -- pods and namespaces --------------------------------------------------------------

@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ip: str  # "" while it has none (not yet started, or finished)
    labels: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)
    # named ports its containers declare: name -> (protocol, port)
    ports: Mapping[str, tuple[str, int]] = field(default_factory=dict, hash=False,
                                                 compare=False)
    node: str = ""
    host_network: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_from_object(obj: Mapping[str, Any], ip: str | None = None) -> Pod:
    """A Pod object as the model needs it; `ip` overrides its status (the agent knows
    its own pods' addresses from IPAM before kubelet writes them there)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    ports: dict[str, tuple[str, int]] = {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for container in containers:
        for port in container.get("ports") or []:
            if port.get("name") and port.get("containerPort"):
                ports[port["name"]] = (port.get("protocol") or "TCP", int(port["containerPort"]))
    if ip is None:
        addresses = [a.get("ip", "") for a in status.get("podIPs") or []] or [
            status.get("podIP", "")]
        ip = next((a for a in addresses if a and ":" not in a), "")
        if status.get("phase") in ("Succeeded", "Failed"):
            ip = ""  # its address may already be another pod's
    return Pod(meta.get("namespace") or "default", meta.get("name", ""), ip,
               dict(meta.get("labels") or {}), ports, spec.get("nodeName", ""),
               bool(spec.get("hostNetwork")))


def namespace_labels(obj: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    # The API server sets it on every namespace; the lab's may lack it.
    return name, {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": name}


# -- policies -----------------------------------------------------------------------

@dataclass(frozen=True)
class Port:
    protocol: str
    port: int | str | None = None  # None: every port of the protocol
    end_port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return self.protocol
        end = f"-{self.end_port}" if self.end_port else ""
        return f"{self.port}{end}/{self.protocol}"


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    excepts: tuple[str, ...] = ()

    def addresses(self) -> ranges.Ranges:
        if ":" in self.cidr:  # an IPv6 block matches no packet of this IPv4 dataplane
            return ranges.EMPTY
        return ranges.of_cidrs([self.cidr], [e for e in self.excepts if ":" not in e])

    def __str__(self) -> str:
        return self.cidr + (f" except {', '.join(self.excepts)}" if self.excepts else "")


@dataclass(frozen=True)
class Peer:
    pods: Selector | None = None
    namespaces: Selector | None = None
    ip_block: IPBlock | None = None

    def __str__(self) -> str:
        if self.ip_block:
            return f"ipBlock {self.ip_block}"
        parts = []
        if self.namespaces is not None:
            parts.append(f"namespaces {self.namespaces}")
        if self.pods is not None:
            parts.append(f"pods {self.pods}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Rule:
    index: int
    peers: tuple[Peer, ...] = ()  # empty: every address
    ports: tuple[Port, ...] = ()  # empty: every port of every protocol


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    pods: Selector
    ingress: tuple[Rule, ...] | None  # None: the policy does not isolate for ingress
    egress: tuple[Rule, ...] | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...] | None:
        return self.ingress if direction == INGRESS else self.egress


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    namespace, name = meta.get("namespace") or "default", meta.get("name", "")
    what = f"NetworkPolicy {namespace}/{name}"
    types = spec.get("policyTypes")
    if not types:  # as the API server defaults it: an empty list or egress: [] as if absent
        types = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    unknown = set(types) - {"Ingress", "Egress"}
    if unknown:
        raise PolicyError(f"{what}: unknown policyTypes {', '.join(sorted(unknown))}")

    def rules(direction: str, peers_key: str) -> tuple[Rule, ...]:
        return tuple(_parse_rule(i, rule, peers_key, f"{what} {direction} rule {i + 1}")
                     for i, rule in enumerate(spec.get(direction) or []))

    return Policy(namespace, name, parse_selector(spec.get("podSelector"), what),
                  rules("ingress", "from") if "Ingress" in types else None,
                  rules("egress", "to") if "Egress" in types else None)


def _parse_rule(index: int, rule: Mapping[str, Any], peers_key: str, what: str) -> Rule:
    peers = []
    for peer in rule.get(peers_key) or []:
        block = peer.get("ipBlock")
        if block:
            try:
                cidr = str(netaddr.IPNetwork(block["cidr"]).cidr)
                excepts = tuple(str(netaddr.IPNetwork(e).cidr) for e in block.get("except") or [])
            except (KeyError, netaddr.AddrFormatError, ValueError) as err:
                raise PolicyError(f"{what}: ipBlock {block} is not a CIDR with excepts") from err
            peers.append(Peer(ip_block=IPBlock(cidr, excepts)))
            continue
        pods = peer.get("podSelector")
        namespaces = peer.get("namespaceSelector")
        peers.append(Peer(None if pods is None else parse_selector(pods, what),
                          None if namespaces is None else parse_selector(namespaces, what)))
    ports = []
    for port in rule.get("ports") or []:
        protocol = port.get("protocol") or "TCP"
        if protocol not in PROTOCOLS:
            raise PolicyError(f"{what}: protocol {protocol!r} is not TCP, UDP or SCTP")
        number = port.get("port")
        end = port.get("endPort")
        if isinstance(number, str) and number.isdigit():
            number = int(number)
        if end is not None and not isinstance(number, int):
            raise PolicyError(f"{what}: endPort needs a numeric port")
        ports.append(Port(protocol, number, int(end) if end is not None else None))
    return Rule(index, tuple(peers), tuple(ports))


# -- what policies allow -----------------------------------------------------------------

@dataclass(frozen=True)
class Grant:
    """Traffic one rule allows a pod: from (ingress) or to (egress) `addresses`, over
    `protocol` (or ANY) on ports `low`..`high` of the receiving side."""

    policy: str
    rule: int
    addresses: ranges.Ranges
    protocol: str
    low: int = ALL_PORTS[0]
    high: int = ALL_PORTS[1]
    peer: str = ""  # what the rule names, for people

    def allows(self, address: str, protocol: str, port: int | None) -> bool:
        if not ranges.contains(self.addresses, address):
            return False
        if self.protocol == ANY:
            return True
        return self.protocol == protocol and port is not None and self.low <= port <= self.high

    def covers(self, other: Grant) -> bool:
        """Whether this grant allows all that `other` does."""
        if self.protocol != ANY and (self.protocol != other.protocol or
                                     not self.low <= other.low <= other.high <= self.high):
            return False
        return ranges.covers(self.addresses, other.addresses)


@dataclass
class Cluster:
    pods: list[Pod]
    namespaces: dict[str, dict[str, str]]
    policies: list[Policy]
    # Equal address sets share one object, here and across models that share the dict:
    # the renderer keys its work by their identity (see render.Cache).
    interned: dict[ranges.Ranges, ranges.Ranges] = field(default_factory=dict, repr=False)
    _by_ip: dict[str, Pod] = field(default_factory=dict, init=False, repr=False)
    _by_key: dict[str, Pod] = field(default_factory=dict, init=False, repr=False)
    _by_namespace: dict[str, list[Policy]] = field(default_factory=dict, init=False, repr=False)
    # (policy namespace, peer) -> the pods it selects and their addresses: computed once
    # per model, not once per pod the policy selects
    _peers: dict[tuple[str, Peer], tuple[list[Pod], ranges.Ranges]] = field(
        default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_ip = {p.ip: p for p in self.pods if p.ip and not p.host_network}
        for pod in self.pods:  # the first of a name wins, as a scan in order would find
            self._by_key.setdefault(pod.key, pod)
        for policy in self.policies:
            self._by_namespace.setdefault(policy.namespace, []).append(policy)

    def pod_at(self, address: str) -> Pod | None:
        return self._by_ip.get(address)

    def find(self, key: str) -> Pod | None:
        return self._by_key.get(key)

    def selecting(self, pod: Pod, direction: str) -> list[Policy]:
        """The policies that isolate `pod` for `direction`."""
        if pod.host_network:
            return []
        return [p for p in self._by_namespace.get(pod.namespace, ())
                if p.rules(direction) is not None and p.pods.matches(pod.labels)]

    def grants(self, pod: Pod, direction: str) -> list[Grant] | None:
        """What `pod`'s policies allow in `direction`; None when it is not isolated."""
        policies = self.selecting(pod, direction)
        if not policies:
            return None
        out: list[Grant] = []
        for policy in policies:
            for rule in policy.rules(direction) or ():
                out += self._rule_grants(policy, rule, pod, direction)
        return out

    def _rule_grants(self, policy: Policy, rule: Rule, pod: Pod, direction: str
                     ) -> list[Grant]:
        peers = rule.peers or (Peer(ip_block=IPBlock("0.0.0.0/0")),)
        out = []
        for peer in peers:
            addresses = self._peer_addresses(policy, peer)
            if not addresses:
                continue
            grant = _partial(policy.key, rule.index, str(peer) if rule.peers else "anywhere")
            if not rule.ports:
                out.append(grant(addresses, ANY))
                continue
            for port in rule.ports:
                if port.port is None:
                    out.append(grant(addresses, port.protocol))
                elif isinstance(port.port, int):
                    out.append(grant(addresses, port.protocol, port.port,
                                     port.end_port or port.port))
                elif direction == INGRESS:  # a named port of the receiving pod: this one
                    declared = pod.ports.get(port.port)
                    if declared and declared[0] == port.protocol:
                        out.append(grant(addresses, port.protocol, declared[1], declared[1]))
                else:  # a named port of each receiving peer pod
                    for target in self._peer_pods(policy, peer, addresses):
                        declared = target.ports.get(port.port)
                        if declared and declared[0] == port.protocol:
                            out.append(grant(self._intern(ranges.of_addresses([target.ip])),
                                             port.protocol, declared[1], declared[1]))
        return out

    def _peer_addresses(self, policy: Policy, peer: Peer) -> ranges.Ranges:
        if peer.ip_block is not None:
            return self._intern(peer.ip_block.addresses())
        return self._selected(policy, peer)[1]

    def _intern(self, addresses: ranges.Ranges) -> ranges.Ranges:
        return self.interned.setdefault(addresses, addresses)

    def _peer_pods(self, policy: Policy, peer: Peer, addresses: ranges.Ranges) -> list[Pod]:
        if peer.ip_block is not None:
            return [p for p in self._by_ip.values() if ranges.contains(addresses, p.ip)]
        return self._selected_peers(policy, peer)

    def _selected_peers(self, policy: Policy, peer: Peer) -> list[Pod]:
        return self._selected(policy, peer)[0]

    def _selected(self, policy: Policy, peer: Peer) -> tuple[list[Pod], ranges.Ranges]:
        key = (policy.namespace, peer)
        if key not in self._peers:
            found = self._select_peers(policy, peer)
            self._peers[key] = (found, self._intern(ranges.of_addresses(p.ip for p in found)))
        return self._peers[key]

    def _select_peers(self, policy: Policy, peer: Peer) -> list[Pod]:
        out = []
        for pod in self._by_ip.values():
            if peer.namespaces is not None:
                if not peer.namespaces.matches(self.namespaces.get(pod.namespace, {})):
                    continue
            elif pod.namespace != policy.namespace:
                continue
            if peer.pods is None or peer.pods.matches(pod.labels):
                out.append(pod)
        return out


def _partial(policy: str, rule: int, peer: str):
    def grant(addresses: ranges.Ranges, protocol: str, low: int = ALL_PORTS[0],
              high: int = ALL_PORTS[1]) -> Grant:
        return Grant(policy, rule, addresses, protocol, low, high, peer)
    return grant


def cluster_from_objects(pods: Iterable[Mapping[str, Any]], namespaces: Iterable[Mapping[str, Any]],
                         policies: Iterable[Mapping[str, Any]],
                         local_ips: Mapping[str, str] | None = None,
                         interned: dict[ranges.Ranges, ranges.Ranges] | None = None,
                         ) -> tuple[Cluster, list[str]]:
    """The model from datastore objects, and a line per policy it had to leave out.
    `local_ips` ({namespace/name: address}) are the addresses IPAM gave this node's
    pods, which their Pod objects may not show yet."""
    local_ips = local_ips or {}
    model_pods = []
    for obj in pods:
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"
        model_pods.append(pod_from_object(obj, local_ips.get(key)))
    parsed, problems = [], []
    for obj in policies:
        try:
            parsed.append(parse_policy(obj))
        except PolicyError as err:
            problems.append(str(err))
    cluster = Cluster(model_pods, dict(namespace_labels(n) for n in namespaces), parsed,
                      interned if interned is not None else {})
    return cluster, problems
