"""Services and EndpointSlices, read into the service ports the proxy programs.

A service port is one (Service, port) pair; its endpoints come from the
EndpointSlices labelled with the Service's name, matched by port *name*, which is
how named target ports resolve (the slice carries each endpoint's number).
Only ready endpoints count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Services another proxy serves, and headless ones so marked: kube-proxy leaves both
# alone (its informers select "!service-proxy-name,!headless"), and so does weft.
NOT_OURS_LABELS = ("service.kubernetes.io/service-proxy-name", "service.kubernetes.io/headless")
DEFAULT_AFFINITY_SECONDS = 10800


class Endpoint(NamedTuple):
    """A tuple, not a dataclass: hashing 50,000 of these per sync must be cheap."""

    ip: str
    port: int
    node: str = ""


@dataclass(frozen=True)
class ServicePort:
    namespace: str
    name: str
    port_name: str
    protocol: str
    cluster_ip: str
    port: int
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    affinity_seconds: int = 0  # 0: no session affinity
    local_only: bool = False  # internalTrafficPolicy: Local
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def key(self) -> str:
        """ns/name:port, as kube-proxy names a service port."""
        return f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")

    def usable_endpoints(self, node: str) -> tuple[Endpoint, ...]:
        """The endpoints traffic may go to from this node."""
        if self.local_only:
            return tuple(e for e in self.endpoints if e.node == node)
        return self.endpoints


def service_ports(services: Iterable[Mapping], slices: Iterable[Mapping]) -> list[ServicePort]:
    """Every proxied service port; headless and ExternalName services are skipped, and
    so are those labelled for another proxy."""
    by_service = group_slices(slices)
    ports = []
    for svc in services:
        meta = svc.get("metadata") or {}
        ports += ports_of(svc, by_service.get((meta.get("namespace") or "default",
                                               meta.get("name")), []))
    return ports


def group_slices(slices: Iterable[Mapping]) -> dict[tuple[str, str], list[Mapping]]:
    """EndpointSlices by the (namespace, name) of the Service they belong to."""
    by_service: dict[tuple[str, str], list[Mapping]] = {}
    for s in slices:
        owner = owner_of(s)
        if owner:
            by_service.setdefault(owner, []).append(s)
    return by_service


def owner_of(endpoint_slice: Mapping) -> tuple[str, str] | None:
    """The (namespace, name) of the Service an IPv4 EndpointSlice belongs to."""
    meta = endpoint_slice.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not owner or endpoint_slice.get("addressType", "IPv4") != "IPv4":
        return None
    return meta.get("namespace") or "default", owner


def ports_of(svc: Mapping, slices_of: list[Mapping]) -> list[ServicePort]:
    """One Service's ports, with their endpoints from the Service's slices; none for a
    Service labelled for another proxy."""
    meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
    if any(label in (meta.get("labels") or {}) for label in NOT_OURS_LABELS):
        return []
    cluster_ip = spec.get("clusterIP")
    if not cluster_ip or cluster_ip == "None" or spec.get("type") == "ExternalName":
        return []
    namespace = meta.get("namespace") or "default"
    affinity = 0
    if spec.get("sessionAffinity") == "ClientIP":
        config = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        affinity = int(config.get("timeoutSeconds") or DEFAULT_AFFINITY_SECONDS)
    ports = []
    for port in spec.get("ports") or []:
        protocol = port.get("protocol", "TCP")
        if protocol not in PROTOCOLS:
            continue
        ports.append(ServicePort(
            namespace=namespace, name=meta["name"], port_name=port.get("name", ""),
            protocol=protocol, cluster_ip=cluster_ip, port=int(port["port"]),
            node_port=int(port.get("nodePort") or 0)
            if spec.get("type") in ("NodePort", "LoadBalancer") else 0,
            external_ips=tuple(spec.get("externalIPs") or ()),
            affinity_seconds=affinity,
            local_only=spec.get("internalTrafficPolicy") == "Local",
            endpoints=_endpoints(slices_of, port.get("name", ""), protocol)))
    return ports


def _endpoints(slices: list[Mapping], port_name: str, protocol: str) -> tuple[Endpoint, ...]:
    found = set()
    for s in slices:
        numbers = [p.get("port") for p in s.get("ports") or []
                   if p.get("name", "") == port_name and p.get("protocol", "TCP") == protocol]
        if not numbers or numbers[0] is None:
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready", True) is False:
                continue
            for address in ep.get("addresses") or []:
                found.add(Endpoint(address, int(numbers[0]), ep.get("nodeName", "")))
    return tuple(sorted(found))
