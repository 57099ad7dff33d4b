"""The weft.vxlan device: VNI 4096, UDP 4789, no learning (entries are programmed).

Transmit checksum offload stays on from kernel 5.7: below it, NATed traffic over
VXLAN hits the kernel bug behind the "63-second delay" reports, so it is turned
off there. Off costs 3.5-6x VXLAN throughput on a current kernel.
"""

from __future__ import annotations

import logging
import platform
import re

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from weft.agent.routes import VXLAN_DEVICE
from weft.agent.underlay import Underlay

log = logging.getLogger(__name__)

VNI = 4096
PORT = 4789
OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
CHECKSUM_SETTINGS = ("auto", "on", "off")


def checksum_offload(setting: str, release: str | None = None) -> bool:
    """Whether to leave tx checksum offload on: `auto` means on from kernel 5.7."""
    if setting != "auto":
        return setting == "on"
    match = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return match is None or (int(match[1]), int(match[2])) >= (5, 7)


def ensure(ipr: IPRoute, underlay: Underlay, tunnel_ip: str, offload: bool) -> str:
    """Create or adopt weft.vxlan with the tunnel address; returns its MAC.

    An existing device with the right VNI, port and local address is kept as it
    is, with its neighbour and FDB entries, so a restarted agent breaks nothing.
    """
    found = _get(ipr)
    if found is not None and not _matches(found, underlay):
        log.info("recreating %s: its VNI, port or local address changed", VXLAN_DEVICE)
        ipr.link("del", index=found["index"])
        found = None
    if found is None:
        ipr.link("add", ifname=VXLAN_DEVICE, kind="vxlan", vxlan_id=VNI, vxlan_port=PORT,
                 vxlan_local=underlay.address, vxlan_link=underlay.index, vxlan_learning=0,
                 mtu=underlay.mtu - OVERHEAD)
        found = _get(ipr)
        log.info("created %s (VNI %d, port %d, local %s)", VXLAN_DEVICE, VNI, PORT,
                 underlay.address)
    index = found["index"]
    if found.get("mtu") != underlay.mtu - OVERHEAD:
        ipr.link("set", index=index, mtu=underlay.mtu - OVERHEAD)
    held = {a.get("address") for a in ipr.get_addr(index=index)}
    for stale in held - {tunnel_ip}:
        if stale and ":" not in stale:
            ipr.addr("del", index=index, address=stale, prefixlen=32)
    if tunnel_ip not in held:
        ipr.addr("add", index=index, address=tunnel_ip, prefixlen=32)
    ipr.link("set", index=index, state="up")
    _set_checksum_offload(offload)
    return found.get("address")


def index(ipr: IPRoute) -> int | None:
    """weft.vxlan's interface index; None when there is no such device."""
    found = _get(ipr)
    return found["index"] if found is not None else None


def remove(ipr: IPRoute) -> bool:
    found = _get(ipr)
    if found is None:
        return False
    ipr.link("del", index=found["index"])
    return True


def _get(ipr: IPRoute):
    try:
        return ipr.link("get", ifname=VXLAN_DEVICE)[0]
    except NetlinkError:
        return None


def _matches(link, underlay: Underlay) -> bool:
    info = link.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    if data is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return False
    return (data.get_attr("IFLA_VXLAN_ID") == VNI and data.get_attr("IFLA_VXLAN_PORT") == PORT
            and data.get_attr("IFLA_VXLAN_LOCAL") == underlay.address)


def _set_checksum_offload(on: bool) -> None:
    from pyroute2.ethtool import Ethtool

    with Ethtool() as ethtool:
        features = ethtool.get_features(VXLAN_DEVICE)
        feature = features.features.get("tx-checksum-ip-generic")
        if feature is not None and feature.enable != on:
            feature.enable = on
            ethtool.set_features(VXLAN_DEVICE, features)
            log.info("tx checksum offload on %s turned %s", VXLAN_DEVICE, "on" if on else "off")
