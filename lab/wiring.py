"""Wire namespaces together: veth pairs (one end on a switch's bridge), addresses,
routes and sysctls. The lab's building blocks, also used by tests that build a
small cluster of their own."""

from __future__ import annotations

import contextlib
import os

from pyroute2 import IPRoute

from weft.cni.netns import entered, write_sysctl
from weft.lab import netns


def switch(ns: str) -> None:
    """A bridge `br0` in namespace `ns`: the wire of one subnet."""
    with entered(netns.path(ns)), IPRoute() as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        ipr.link("set", index=ipr.link("get", ifname="br0")[0]["index"], state="up")
        # A switch only switches: keep the machine's bridge netfilter out of it.
        with contextlib.suppress(FileNotFoundError):
            write_sysctl("net/bridge/bridge-nf-call-iptables", "0")
            write_sysctl("net/bridge/bridge-nf-call-ip6tables", "0")


def wire(ns_a: str, if_a: str, ns_b: str, if_b: str, bridge_ns: str | None = None) -> None:
    """A veth pair between two namespaces, both ends up; `if_b` joins br0 in `bridge_ns`."""
    fd = os.open(netns.path(ns_b), os.O_RDONLY)
    try:
        with entered(netns.path(ns_a)), IPRoute() as ipr:
            ipr.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": fd})
            ipr.link("set", index=ipr.link_lookup(ifname=if_a)[0], state="up")
    finally:
        os.close(fd)
    with entered(netns.path(ns_b)), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=if_b)[0]
        if bridge_ns == ns_b:
            ipr.link("set", index=index, master=ipr.link_lookup(ifname="br0")[0])
        ipr.link("set", index=index, state="up")


def address(ns: str, ifname: str, cidr: str) -> None:
    address, prefix = cidr.split("/")
    with entered(netns.path(ns)), IPRoute() as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=address,
                 prefixlen=int(prefix))


def default_route(ns: str, gateway: str) -> None:
    route(ns, "0.0.0.0/0", gateway)


def route(ns: str, dst: str, gateway: str) -> None:
    with entered(netns.path(ns)), IPRoute() as ipr:
        ipr.route("add", dst=dst, gateway=gateway)


def sysctls(ns: str, values: dict[str, str]) -> None:
    with entered(netns.path(ns)):
        for key, value in values.items():
            write_sysctl(key, value)


def stub_underlay(ns: str, address: str) -> None:
    """eth0 with `address`/24 and a default route, as a node has, that leads nowhere: its
    veth peer stays down and its gateway (.254) does not exist, so nothing leaves `ns`."""
    with entered(netns.path(ns)), IPRoute() as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0p"})
        index = ipr.link("get", ifname="eth0")[0]["index"]
        ipr.addr("add", index=index, address=address, prefixlen=24)
        ipr.link("set", index=index, state="up")
    default_route(ns, address.rsplit(".", 1)[0] + ".254")
