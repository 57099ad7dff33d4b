"""The node's routing state: read what weft holds in the kernel, apply a diff.

`LinuxDataplane` keeps one netlink socket open for the agent's life and touches
only routes of weft's protocol number and entries on weft.vxlan. `FakeDataplane`
holds the same state in memory; one test suite checks that both behave alike.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import threading
from typing import Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from weft.agent.routes import VXLAN_DEVICE, Desired, Diff, Fdb, Neighbour, Route
from weft.agent.vxlan import index as tunnel_index
from weft.cni import netns, rtnl
from weft.cni.rtnl import MAIN_TABLE, Rtnl

log = logging.getLogger(__name__)

PROTO = 88  # weft's routing protocol number: "proto 88" in `ip route`
RTN_BLACKHOLE = 6
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
SIOCGSKNS = 0x894C  # a socket's network namespace, as a new file descriptor


def _dump_socket_beside(ipr: IPRoute) -> Rtnl:
    """A kernel-filtered dump socket in the namespace of `ipr`, which its caller may have
    opened in another namespace than this thread's (tests and the lab do)."""
    namespace = fcntl.ioctl(ipr.fileno(), SIOCGSKNS)
    try:
        with netns.entered(f"/proc/self/fd/{namespace}"):
            return Rtnl(strict=True)
    finally:
        os.close(namespace)


class Dataplane(Protocol):
    def current(self) -> Desired:
        """What weft holds now: its routes, and its neighbour and FDB entries."""

    def apply(self, change: Diff) -> list[str]:
        """Apply a diff in its order; returns a line per failed step (the rest still run)."""


class LinuxDataplane:
    def __init__(self, ipr: IPRoute | None = None) -> None:
        self.ipr = ipr or IPRoute()
        self._lock = threading.Lock()

    def current(self) -> Desired:
        """What the kernel holds of weft's. A node has a veth and a route per pod:
        links are fetched one by one, never dumped, and the kernel filters the route
        and FDB dumps, so none of the pods' entries is decoded (~0.3 ms a link, ~30 µs
        a route)."""
        with self._lock:
            have = Desired()
            names: dict[int, str] = {}
            with _dump_socket_beside(self.ipr) as dumps:
                routes = dumps.dump(rtnl.routes(socket.AF_INET, MAIN_TABLE, PROTO))
                vxlan = tunnel_index(self.ipr)
                fdb = dumps.dump(rtnl.fdb(vxlan)) if vxlan is not None else []
            for r in routes:
                if r["proto"] != PROTO or r["table"] != MAIN_TABLE:
                    continue  # a kernel before 4.20 does not filter dumps
                dst = f"{r.get('dst')}/{r['dst_len']}"
                if r["type"] == RTN_BLACKHOLE:
                    have.routes[dst] = Route(dst, "blackhole")
                    continue
                oif = r.get("oif")
                if oif not in names:
                    names[oif] = self._link_name(oif)
                kind = "vxlan" if names[oif] == VXLAN_DEVICE else "direct"
                have.routes[dst] = Route(dst, kind, r.get("gateway") or "", names[oif])
            if vxlan is not None:
                for n in self.ipr.get_neighbours(ifindex=vxlan, family=socket.AF_INET):
                    if n["state"] & NUD_PERMANENT and n.get("NDA_LLADDR"):
                        have.neighbours[n.get("NDA_DST")] = Neighbour(n.get("NDA_DST"),
                                                                      n.get("NDA_LLADDR"))
            for f in fdb:
                if f["ifindex"] == vxlan and f.get("NDA_DST") and f["state"] & NUD_PERMANENT:
                    have.fdb[f.get("NDA_LLADDR")] = Fdb(f.get("NDA_LLADDR"), f.get("NDA_DST"))
            return have

    def _link_name(self, index: int | None) -> str:
        try:
            return self.ipr.link("get", index=index)[0].get("ifname") if index else ""
        except NetlinkError:
            return ""  # gone since the route dump

    def apply(self, change: Diff) -> list[str]:
        with self._lock:
            errors: list[str] = []
            index = {}

            def ifindex(name: str) -> int:
                if name not in index:
                    index[name] = self.ipr.link("get", ifname=name)[0]["index"]
                return index[name]

            steps = (
                [(f"add neighbour {n.address} {n.mac}", lambda n=n: self.ipr.neigh(
                    "replace", dst=n.address, lladdr=n.mac, ifindex=ifindex(VXLAN_DEVICE),
                    state=NUD_PERMANENT)) for n in change.add_neighbours]
                + [(f"add fdb {f.mac} dst {f.destination}", lambda f=f: self._replace_fdb(
                    f, ifindex(VXLAN_DEVICE))) for f in change.add_fdb]
                + [(f"add route {r.dst} ({r.kind})", lambda r=r: self._route("replace", r,
                                                                             ifindex))
                   for r in change.add_routes]
                + [(f"delete route {r.dst}", lambda r=r: self._route("del", r, ifindex))
                   for r in change.del_routes]
                + [(f"delete fdb {f.mac}", lambda f=f: self.ipr.fdb(
                    "del", ifindex=ifindex(VXLAN_DEVICE), lladdr=f.mac, dst=f.destination))
                   for f in change.del_fdb]
                + [(f"delete neighbour {n.address}", lambda n=n: self.ipr.neigh(
                    "del", dst=n.address, lladdr=n.mac, ifindex=ifindex(VXLAN_DEVICE)))
                   for n in change.del_neighbours]
            )
            for what, step in steps:
                try:
                    step()
                except NetlinkError as err:
                    if err.code in (errno.ENOENT, errno.ESRCH) and what.startswith("delete"):
                        continue  # already gone
                    errors.append(f"failed to {what}: {err}")
                except IndexError:
                    errors.append(f"failed to {what}: {VXLAN_DEVICE} or the underlay is missing")
            return errors

    def _route(self, command: str, route: Route, ifindex) -> None:
        if route.kind == "blackhole":
            self.ipr.route(command, dst=route.dst, type="blackhole", proto=PROTO,
                           table=MAIN_TABLE)
        else:
            self.ipr.route(command, dst=route.dst, gateway=route.gateway,
                           oif=ifindex(route.device), proto=PROTO, table=MAIN_TABLE,
                           flags=RTNH_F_ONLINK if route.kind == "vxlan" else 0)

    def _replace_fdb(self, entry: Fdb, vxlan: int) -> None:
        """netlink cannot replace a VXLAN FDB entry: drop the MAC's old one, then add."""
        try:
            self.ipr.fdb("add", ifindex=vxlan, lladdr=entry.mac, dst=entry.destination,
                         state=NUD_PERMANENT)
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise
            self.ipr.fdb("del", ifindex=vxlan, lladdr=entry.mac)
            self.ipr.fdb("add", ifindex=vxlan, lladdr=entry.mac, dst=entry.destination,
                         state=NUD_PERMANENT)


class FakeDataplane:
    """In-memory state with the kernel's rules that matter here."""

    def __init__(self) -> None:
        self.state = Desired()

    def current(self) -> Desired:
        return Desired(dict(self.state.routes), dict(self.state.neighbours),
                       dict(self.state.fdb))

    def apply(self, change: Diff) -> list[str]:
        for n in change.add_neighbours:
            self.state.neighbours[n.address] = n
        for f in change.add_fdb:
            self.state.fdb[f.mac] = f
        for r in change.add_routes:
            self.state.routes[r.dst] = r
        for r in change.del_routes:
            self.state.routes.pop(r.dst, None)
        for f in change.del_fdb:
            self.state.fdb.pop(f.mac, None)
        for n in change.del_neighbours:
            self.state.neighbours.pop(n.address, None)
        return []
