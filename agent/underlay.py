"""Find the node's underlay: the interface and address its default route uses."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pyroute2 import IPRoute


class UnderlayError(Exception):
    pass


@dataclass(frozen=True)
class Underlay:
    device: str
    index: int
    address: str
    prefixlen: int
    mtu: int


def discover(ipr: IPRoute, device: str = "", address: str = "") -> Underlay:
    """The underlay named by `device`/`address`, else the default route's interface."""
    if not device:
        if address:
            device = _device_holding(ipr, address)
        else:
            defaults = [r for r in ipr.get_routes(family=socket.AF_INET, table=254)
                        if r["dst_len"] == 0 and r.get("oif")]
            if not defaults:
                raise UnderlayError("this node has no IPv4 default route; name the underlay "
                                    "with --underlay-interface or --node-ip")
            device = ipr.link("get", index=defaults[0].get("oif"))[0].get("ifname")
    try:
        link = ipr.link("get", ifname=device)[0]
    except Exception as err:
        raise UnderlayError(f"underlay interface {device!r} does not exist") from err
    addrs = [a for a in ipr.get_addr(family=socket.AF_INET, index=link["index"])
             if not address or a.get("address") == address]
    if not addrs:
        raise UnderlayError(f"underlay interface {device} has no IPv4 address"
                            + (f" {address}" if address else ""))
    return Underlay(device, link["index"], addrs[0].get("address"), addrs[0]["prefixlen"],
                    link.get("mtu"))


def _device_holding(ipr: IPRoute, address: str) -> str:
    for addr in ipr.get_addr(family=socket.AF_INET):
        if addr.get("address") == address:
            return ipr.link("get", index=addr["index"])[0].get("ifname")
    raise UnderlayError(f"no interface holds the node IP {address}")
