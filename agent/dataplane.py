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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from weft.agent.routes import VXLAN_DEVICE, Desired, Diff, Fdb, Neighbour, Route
from weft.agent.vxlan import index as tunnel_index
from weft.cni import netns, rtnl
from weft.cni.rtnl import MAIN_TABLE, Request, Rtnl

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


@dataclass(frozen=True)
class Step:
    """One request of a change, what it does (for errors) and, for an FDB entry's
    addition, the entry (the kernel refuses to replace one that points elsewhere)."""

    what: str
    message: Request | None  # None: the device it needs is missing
    fdb: Fdb | None = None


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
        """Every step in batches over one socket (1,000 remote blocks are 3,000 steps:
        one pyroute2 call each took ~1 ms, a batch takes a few µs a step)."""
        with self._lock:
            try:
                vxlan = self.ipr.link("get", ifname=VXLAN_DEVICE)[0]["index"] if (
                    change.add_neighbours or change.add_fdb or change.del_fdb or
                    change.del_neighbours or any(r.kind == "vxlan" for r in change.add_routes)
                ) else 0
            except NetlinkError:
                vxlan = 0
            devices = {VXLAN_DEVICE: vxlan}
            steps: list[Step] = []

            def on_tunnel(what: str, build: Callable[[], Request], fdb: Fdb | None = None) -> None:
                steps.append(Step(what, build() if vxlan else None, fdb))

            for n in change.add_neighbours:
                on_tunnel(f"add neighbour {n.address} {n.mac}", lambda n=n: rtnl.add_neighbour(
                    vxlan, socket.AF_INET, n.address, n.mac, NUD_PERMANENT, rtnl.REPLACE))
            for f in change.add_fdb:
                on_tunnel(f"add fdb {f.mac} dst {f.destination}", lambda f=f: rtnl.add_fdb(
                    vxlan, f.mac, f.destination, NUD_PERMANENT), f)
            for r in change.add_routes:
                steps.append(Step(f"add route {r.dst} ({r.kind})", self._replace_route(r, devices)))
            for r in change.del_routes:
                steps.append(Step(f"delete route {r.dst}", rtnl.del_route(
                    socket.AF_INET, *_split(r.dst), PROTO, r.kind == "blackhole")))
            for f in change.del_fdb:
                on_tunnel(f"delete fdb {f.mac}", lambda f=f: rtnl.del_fdb(vxlan, f.mac,
                                                                          f.destination))
            for n in change.del_neighbours:
                on_tunnel(f"delete neighbour {n.address}", lambda n=n: rtnl.del_neighbour(
                    vxlan, socket.AF_INET, n.address))
            with _dump_socket_beside(self.ipr) as nl:
                errors, moved = self._send(nl, steps)
                if moved:  # netlink cannot replace a VXLAN FDB entry: drop the old one
                    again = [step for f in moved for step in (
                        Step(f"add fdb {f.mac} dst {f.destination}", rtnl.del_fdb(vxlan, f.mac)),
                        Step(f"add fdb {f.mac} dst {f.destination}", rtnl.add_fdb(
                            vxlan, f.mac, f.destination, NUD_PERMANENT)))]
                    errors += self._send(nl, again)[0]
            return errors

    @staticmethod
    def _send(nl: Rtnl, steps: list[Step]) -> tuple[list[str], list[Fdb]]:
        """Failures, one line a step (the rest still run), and the FDB entries that exist
        with another destination."""
        errors = [f"failed to {step.what}: {VXLAN_DEVICE} or the underlay is missing"
                  for step in steps if step.message is None]
        ready = [step for step in steps if step.message is not None]
        moved: list[Fdb] = []
        answers = nl.batches([step.message for step in ready])
        for step, answer in zip(ready, answers, strict=True):
            if not isinstance(answer, NetlinkError):
                continue
            if answer.code in (errno.ENOENT, errno.ESRCH) and step.what.startswith("delete"):
                continue  # already gone
            if answer.code == errno.EEXIST and step.fdb is not None:
                moved.append(step.fdb)
                continue
            errors.append(f"failed to {step.what}: {answer}")
        return errors, moved

    def _replace_route(self, route: Route, devices: dict[str, int]) -> Request | None:
        dst, prefixlen = _split(route.dst)
        if route.kind == "blackhole":
            return rtnl.replace_route(socket.AF_INET, dst, prefixlen, PROTO, blackhole=True)
        if route.device not in devices:
            try:
                devices[route.device] = self.ipr.link("get", ifname=route.device)[0]["index"]
            except NetlinkError:
                devices[route.device] = 0
        if not devices[route.device]:
            return None
        return rtnl.replace_route(socket.AF_INET, dst, prefixlen, PROTO,
                                  oif=devices[route.device], gateway=route.gateway,
                                  flags=RTNH_F_ONLINK if route.kind == "vxlan" else 0)


def _split(cidr: str) -> tuple[str, int]:
    address, _, prefixlen = cidr.partition("/")
    return address, int(prefixlen)


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
