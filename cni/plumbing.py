"""A pod's veth pair, Calico style: no bridge, routed /32s, a link-local gateway.

The pod gets its address as /32 (/128) and a default route via 169.254.1.1
(fe80::1) onlink; the host end answers ARP for it with proxy_arp and carries no
IPv4 address; the host routes podIP/32 to the host end.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import netaddr
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from weft.cni import netns, rtnl
from weft.cni.errors import CHECK_FAILED, NETWORK_SETUP, CNIError
from weft.cni.rtnl import Rtnl
from weft.ipam.plugin import DEFAULT_ROUTE, GATEWAY

RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
IFA_F_NODAD = 0x02
SCOPE_LINK = 253
SCOPE_UNIVERSE = 0


_idle_host_sockets: queue.SimpleQueue[Rtnl] = queue.SimpleQueue()


@contextlib.contextmanager
def host_socket() -> Iterator[Rtnl]:
    """A netlink socket in the node's namespace, kept open between pods (the agent's
    warm path); each caller has it to itself. A socket that saw an error is dropped.

    Call only outside `netns.entered`: a socket opened there would belong to a pod.
    """
    try:
        nl = _idle_host_sockets.get_nowait()
    except queue.Empty:
        nl = Rtnl()
    try:
        yield nl
    except BaseException:
        nl.close()
        raise
    _idle_host_sockets.put(nl)


@dataclass(frozen=True)
class Attachment:
    """What ADD made: both ends of the veth pair."""

    host_ifname: str
    host_mac: str
    pod_ifname: str
    pod_mac: str
    mtu: int


def attach(netns_path: str, ifname: str, host_ifname: str, addresses: list[str],
           mtu: int) -> Attachment:
    """Create and configure the pair; on any failure remove it again and raise.

    Four netlink round trips in all: the pair (replacing a leftover of the same
    name, which can only be this same attachment's, as the name hashes container
    ID and ifname), the pod end's configuration, and the host routes.
    """
    ips = [netaddr.IPAddress(a) for a in addresses]
    with host_socket() as host:
        fd = os.open(netns_path, os.O_RDONLY)
        try:
            removed, created, found = host.batch(
                rtnl.del_link(host_ifname), rtnl.new_veth(host_ifname, ifname, fd, mtu),
                rtnl.get_link(host_ifname))
        finally:
            os.close(fd)
        if isinstance(created, NetlinkError):
            if isinstance(removed, NetlinkError) and removed.code != errno.ENODEV:
                raise CNIError(NETWORK_SETUP, f"failed to remove the leftover {host_ifname}",
                               str(removed))
            raise _create_failed(created, netns_path, ifname, host_ifname)
        try:
            if isinstance(found, NetlinkError):
                raise found
            index, host_mac = found["index"], found.get("address")
            _configure_host_end(host, index, host_ifname, ips)
            pod_mac = _configure_pod_end(netns_path, ifname, ips, host_mac)
            host.call(*(rtnl.add_route(_af(ip.version), str(ip), ip.netmask_bits(), index,
                                       SCOPE_LINK) for ip in ips))
        except BaseException:
            host.batch(rtnl.del_link(host_ifname))
            raise
    return Attachment(host_ifname, host_mac, ifname, pod_mac, mtu)


def detach(host_ifname: str, netns_path: str = "", ifname: str = "") -> None:
    """Remove the pair; what is already gone is success (DEL may run twice)."""
    with host_socket() as host:
        _delete_link(host, host_ifname)
    if netns_path and ifname and os.path.exists(netns_path):
        # Only reached when the host end vanished but the pod end did not.
        try:
            with netns.entered(netns_path), Rtnl() as pod:
                _delete_link(pod, ifname)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.EINVAL):
                raise


def verify(netns_path: str, ifname: str, host_ifname: str, addresses: list[str]) -> None:
    """CHECK: raise a CNIError naming the first thing that is not as ADD left it."""
    with IPRoute(groups=0) as host:
        found = host.link_lookup(ifname=host_ifname)
        if not found:
            raise _missing(f"host interface {host_ifname} is missing")
        index = found[0]
        if netns.read_sysctl(f"net/ipv4/conf/{host_ifname}/proxy_arp") != "1":
            raise _missing(f"proxy_arp is off on host interface {host_ifname}")
        for address in addresses:
            ip = netaddr.IPAddress(address)
            dst = f"{ip}/{ip.netmask_bits()}"
            if not _has_route(host, ip.version, dst, index):
                raise _missing(f"host route {dst} dev {host_ifname} is missing")
    with netns.entered(netns_path), IPRoute() as pod:
        found = pod.link_lookup(ifname=ifname)
        if not found:
            raise _missing(f"interface {ifname} is missing in {netns_path}")
        index = found[0]
        held = {a.get("address") for a in pod.get_addr(index=index)}
        for address in addresses:
            ip = netaddr.IPAddress(address)
            if str(ip) not in held:
                raise _missing(f"address {ip} is missing on {ifname} in {netns_path}")
            if not _has_route(pod, ip.version, DEFAULT_ROUTE[ip.version], index):
                raise _missing(f"default route via {GATEWAY[ip.version]} dev {ifname} is "
                               f"missing in {netns_path}")


def _create_failed(err: NetlinkError, netns_path: str, ifname: str,
                   host_ifname: str) -> CNIError:
    if err.code == errno.EEXIST:
        return CNIError(NETWORK_SETUP, f"failed to create interface {ifname} in {netns_path}",
                        f"an interface named {ifname} already exists there; choose another "
                        "CNI_IFNAME or remove it")
    return CNIError(NETWORK_SETUP, f"failed to create veth pair {host_ifname}/{ifname}",
                    str(err))


def _configure_host_end(host: Rtnl, index: int, host_ifname: str,
                        ips: list[netaddr.IPAddress]) -> None:
    netns.write_sysctl(f"net/ipv4/conf/{host_ifname}/proxy_arp", "1")
    # Answer ARP at once: the default 0.8 s proxy delay stalls every pod's first packet.
    netns.write_sysctl(f"net/ipv4/neigh/{host_ifname}/proxy_delay", "0")
    if any(ip.version == 6 for ip in ips):
        netns.write_sysctl(f"net/ipv6/conf/{host_ifname}/accept_ra", "0")
        # nodad: the gateway must answer neighbour solicitations at once.
        host.call(rtnl.add_address(index, _af(6), GATEWAY[6], 64, IFA_F_NODAD))


def _configure_pod_end(netns_path: str, ifname: str, ips: list[netaddr.IPAddress],
                       host_mac: str) -> str:
    with netns.entered(netns_path), Rtnl() as pod:
        link = rtnl.link_of(pod.call(rtnl.get_link(ifname)), 0)
        index = link["index"]
        families = sorted({ip.version for ip in ips})
        if 6 in families:
            # Duplicate address detection would hold the pod's address for a second.
            netns.write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")
        steps = [rtnl.set_up(index)]  # a veth peer is created down
        steps += [rtnl.add_address(index, _af(ip.version), str(ip), ip.netmask_bits())
                  for ip in ips]
        if 4 in families:
            # A permanent neighbour for the gateway: the pod never waits on ARP for
            # it, and needs no proxy ARP answer (which the host gives only when it
            # has a route back, i.e. a default route).
            steps.append(rtnl.add_neighbour(index, _af(4), GATEWAY[4], host_mac,
                                            NUD_PERMANENT))
        steps += [rtnl.add_route(_af(family), "", 0, index, SCOPE_UNIVERSE, GATEWAY[family],
                                 RTNH_F_ONLINK if family == 4 else 0) for family in families]
        pod.call(*steps)
        return link.get("address")


def _has_route(ipr: IPRoute, version: int, dst: str, index: int) -> bool:
    net = netaddr.IPNetwork(dst)
    for route in ipr.get_routes(family=_af(version), table=254):
        if route.get("oif") != index or route["dst_len"] != net.prefixlen:
            continue
        if (route.get("dst") or str(net.ip)) == str(net.ip):
            return True
    return False


def _delete_link(nl: Rtnl, ifname: str) -> None:
    (answer,) = nl.batch(rtnl.del_link(ifname))
    if isinstance(answer, NetlinkError) and answer.code != errno.ENODEV:
        raise answer


def _af(version: int) -> int:
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _missing(what: str) -> CNIError:
    return CNIError(CHECK_FAILED, what, "the pod's network is broken; delete and re-create "
                    "the pod")
