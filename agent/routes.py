"""What the node's routing should be, computed from the cluster's blocks and nodes.

Pure: no kernel, no datastore. The reconciler diffs this against what the kernel
holds (routes of weft's protocol number only) and applies the difference.

  own block                         blackhole <cidr>
  other node, direct (see below)    <cidr> via <node IP> dev <underlay>
  other node, otherwise             <cidr> via <vtep IP> dev weft.vxlan onlink
                                    + neighbour <vtep IP> -> <vtep MAC> (permanent)
                                    + FDB <vtep MAC> -> <node IP> (permanent)

Direct means: the pool's vxlanMode is Never, or CrossSubnet and the other node
shares this node's underlay subnet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import netaddr

from weft.ipam.pools import Pool

log = logging.getLogger(__name__)

VXLAN_DEVICE = "weft.vxlan"
ANNOTATION_NODE_IP = "weft.dev/node-ip"
ANNOTATION_VTEP_IP = "weft.dev/vtep-ip"
ANNOTATION_VTEP_MAC = "weft.dev/vtep-mac"


@dataclass(frozen=True, order=True)
class Route:
    """One route weft owns. kind: blackhole | direct | vxlan."""

    dst: str
    kind: str
    gateway: str = ""
    device: str = ""


@dataclass(frozen=True, order=True)
class Neighbour:
    address: str
    mac: str


@dataclass(frozen=True, order=True)
class Fdb:
    mac: str
    destination: str


@dataclass
class Desired:
    routes: dict[str, Route] = field(default_factory=dict)
    neighbours: dict[str, Neighbour] = field(default_factory=dict)
    fdb: dict[str, Fdb] = field(default_factory=dict)


@dataclass(frozen=True)
class Peer:
    """Another node as its annotations describe it."""

    name: str
    node_ip: str
    vtep_ip: str = ""
    vtep_mac: str = ""


@dataclass(frozen=True)
class Local:
    """This node: its name, underlay address/prefix and underlay device."""

    name: str
    node_ip: str
    prefixlen: int
    underlay: str

    @property
    def subnet(self) -> netaddr.IPNetwork:
        return netaddr.IPNetwork(f"{self.node_ip}/{self.prefixlen}").cidr


def peers_from_nodes(nodes: Iterable[Mapping]) -> dict[str, Peer]:
    """Peers from Node objects; a node without a node IP (no agent yet) is left out."""
    peers = {}
    for node in nodes:
        meta = node.get("metadata") or {}
        notes = meta.get("annotations") or {}
        node_ip = notes.get(ANNOTATION_NODE_IP) or _internal_ip(node)
        if node_ip:
            peers[meta["name"]] = Peer(meta["name"], node_ip, notes.get(ANNOTATION_VTEP_IP, ""),
                                       notes.get(ANNOTATION_VTEP_MAC, ""))
    return peers


def desired(local: Local, blocks: Iterable[Mapping], peers: Mapping[str, Peer],
            pools: list[Pool]) -> Desired:
    """The routes, neighbours and FDB entries this node should hold."""
    want = Desired()
    for block in blocks:
        spec = block.get("spec") or {}
        cidr, owner = spec.get("cidr"), spec.get("node")
        if not cidr or not owner:
            continue
        if owner == local.name:
            want.routes[cidr] = Route(cidr, "blackhole")
            continue
        peer = peers.get(owner)
        if peer is None:
            continue  # its node has not published an address yet
        pool = next((p for p in pools if netaddr.IPNetwork(cidr) in p.cidr), None)
        mode = pool.vxlan_mode if pool else "CrossSubnet"
        same_subnet = netaddr.IPAddress(peer.node_ip) in local.subnet
        if mode == "Never" or (mode == "CrossSubnet" and same_subnet):
            if same_subnet:
                want.routes[cidr] = Route(cidr, "direct", peer.node_ip, local.underlay)
            else:
                log.warning("block %s of node %s: vxlanMode Never but %s is not in this "
                            "node's subnet %s; no route", cidr, owner, peer.node_ip,
                            local.subnet)
            continue
        if not (peer.vtep_ip and peer.vtep_mac):
            continue  # its tunnel is not up yet
        want.routes[cidr] = Route(cidr, "vxlan", peer.vtep_ip, VXLAN_DEVICE)
        want.neighbours[peer.vtep_ip] = Neighbour(peer.vtep_ip, peer.vtep_mac)
        want.fdb[peer.vtep_mac] = Fdb(peer.vtep_mac, peer.node_ip)
    return want


@dataclass
class Diff:
    """What to change, in the order to change it."""

    add_neighbours: list[Neighbour] = field(default_factory=list)
    add_fdb: list[Fdb] = field(default_factory=list)
    add_routes: list[Route] = field(default_factory=list)
    del_routes: list[Route] = field(default_factory=list)
    del_fdb: list[Fdb] = field(default_factory=list)
    del_neighbours: list[Neighbour] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.add_neighbours, self.add_fdb, self.add_routes, self.del_routes,
                    self.del_fdb, self.del_neighbours))


def diff(want: Desired, have: Desired) -> Diff:
    """Neighbour, then FDB, then route on the way in; the reverse on the way out.

    A changed entry is only in the adds: adding replaces what holds its key.
    """
    def split(wanted: Mapping, held: Mapping) -> tuple[list, list]:
        adds = sorted(v for k, v in wanted.items() if held.get(k) != v)
        dels = sorted(v for k, v in held.items() if k not in wanted)
        return adds, dels

    out = Diff()
    out.add_neighbours, out.del_neighbours = split(want.neighbours, have.neighbours)
    out.add_fdb, out.del_fdb = split(want.fdb, have.fdb)
    out.add_routes, out.del_routes = split(want.routes, have.routes)
    return out


def _internal_ip(node: Mapping) -> str:
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP" and ":" not in address.get("address", ":"):
            return address["address"]
    return ""
