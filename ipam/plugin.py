"""weft-ipam: weft's IPAM as a CNI IPAM plugin of its own.

The weft plugin calls the same functions in-process; any other main plugin
(the containernetworking `ptp`, say) runs it as `"ipam": {"type": "weft-ipam"}`.
Settings may sit in the `ipam` section or at the top of the network config.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import netaddr

from weft.cni import dispatch
from weft.cni.config import DEFAULT_KUBECONFIG, CmdArgs, NetConf
from weft.cni.errors import CHECK_FAILED, DATASTORE, INVALID_CONFIG, NOT_AVAILABLE, CNIError
from weft.cni.result import encode
from weft.ipam.allocator import IPAM, Allocation
from weft.ipam.datastore import Datastore, DatastoreError, open_datastore
from weft.ipam.pools import Pool, PoolError, find_pool, parse_pool

# Pods route everything through a link-local next hop that the host answers for
# (proxy ARP for IPv4, an fe80::1 address on the host veth for IPv6).
GATEWAY = {4: "169.254.1.1", 6: "fe80::1"}
DEFAULT_ROUTE = {4: "0.0.0.0/0", 6: "::/0"}


def setting(conf: NetConf, key: str, default: str) -> str:
    """An IPAM setting: the ipam section's value wins over the top level's."""
    value = conf.ipam.get(key, conf.raw.get(key, default))
    if not isinstance(value, str) or not value:
        raise CNIError(INVALID_CONFIG, f"invalid network config: {key!r} must be a non-empty "
                       "string")
    return value


def ipam_for(conf: NetConf) -> IPAM:
    """The allocator a network config describes."""
    kind = setting(conf, "datastore", conf.datastore)
    if kind == "kubernetes":
        # On the host, outside any pod: the kubeconfig the install step wrote. The agent
        # rewrites it with a fresh token; a process that outlives one (the agent and its
        # CNI workers) opens the new file, so the version is part of the cache key.
        location = setting(conf, "kubeconfig", DEFAULT_KUBECONFIG)
        store = OpenedOnUse(lambda: datastore(kind, location, _file_version(location)))
    else:
        path = setting(conf, "datastorePath", conf.datastore_path)
        store = OpenedOnUse(lambda: datastore(kind, path))
    return IPAM(store, setting(conf, "stateDir", conf.state_dir),
                setting(conf, "nodeName", conf.node_name), inline_pools(conf.ipam))


class OpenedOnUse:
    """A datastore opened when it is first used. DEL and GC release addresses from the
    node's own state alone, so they must succeed with the API server away or the
    kubeconfig gone (kubelet retries a failing DEL forever; the pod stays Terminating)."""

    def __init__(self, opener: Callable[[], Datastore]) -> None:
        self._opener = opener
        self._store: Datastore | None = None

    def opened(self) -> Datastore:
        if self._store is None:
            self._store = self._opener()
        return self._store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.opened(), name)


def _file_version(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0  # opening it reports what is wrong


@functools.lru_cache(maxsize=16)
def datastore(kind: str, path: str, version: int = 0) -> Datastore:
    """Datastores are kept open for the life of the process (the agent's warm path).

    `path` is the local store's directory, or a kubeconfig ("" = in-cluster);
    `version` tells apart successive contents of one kubeconfig.
    """
    try:
        return open_datastore(kind, path)
    except DatastoreError as err:
        raise CNIError(DATASTORE, f"failed to open the {kind} datastore", str(err)) from err


def inline_pools(ipam: Mapping[str, Any]) -> list[Pool] | None:
    """Pools declared in the config for standalone use; None means the datastore's."""
    if "pools" not in ipam:
        return None
    specs = ipam["pools"]
    if not isinstance(specs, list) or not specs:
        raise CNIError(INVALID_CONFIG, "invalid network config: 'ipam.pools' must be a "
                       "non-empty list such as [{\"cidr\": \"10.244.0.0/16\"}]")
    try:
        return [parse_pool(spec) for spec in specs]
    except PoolError as err:
        raise CNIError(INVALID_CONFIG, "invalid network config: bad pool in ipam.pools",
                       str(err)) from err


def ip_configs(allocations: list[Allocation], interface: int | None = None) -> list[dict]:
    """The result's `ips` entries: /32 (/128) addresses behind the link-local gateway."""
    configs = []
    for alloc in allocations:
        address = netaddr.IPAddress(alloc.address)
        entry: dict[str, Any] = {"address": f"{address}/{address.netmask_bits()}",
                                 "gateway": GATEWAY[address.version]}
        if interface is not None:
            entry["interface"] = interface
        configs.append(entry)
    return configs


def subnet_configs(ipam: IPAM, allocations: list[Allocation]) -> list[dict]:
    """`ips` for subnet-style main plugins (ptp): address/block and the block's gateway.

    Such plugins put the gateway on the host end and route the block via it, so
    they need the gateway inside the address's subnet; each block keeps its
    first address back for this.
    """
    pools = ipam.active_pools()
    configs = []
    for alloc in allocations:
        address = netaddr.IPAddress(alloc.address)
        pool = find_pool(pools, address)
        prefix = pool.block_size if pool else address.netmask_bits()
        block = netaddr.IPNetwork(f"{address}/{prefix}")
        configs.append({"address": f"{address}/{prefix}", "gateway": str(block.network)})
    return configs


def default_routes(allocations: list[Allocation]) -> list[dict]:
    families = sorted({netaddr.IPAddress(a.address).version for a in allocations})
    return [{"dst": DEFAULT_ROUTE[f], "gw": GATEWAY[f]} for f in families]


def assign(allocator: IPAM, args: CmdArgs) -> list[Allocation]:
    return allocator.assign(args.handle, args.container_id, args.ifname, args.pod_namespace,
                            args.pod_name)


def valid_handles(conf: NetConf) -> set[str]:
    """GC's list of attachments the runtime still holds, as handles."""
    attachments = conf.raw.get("cni.dev/valid-attachments", [])
    if not isinstance(attachments, list):
        raise CNIError(INVALID_CONFIG, "invalid network config: 'cni.dev/valid-attachments' "
                       "must be a list")
    handles = set()
    for item in attachments:
        if not isinstance(item, dict) or not item.get("containerID") or not item.get("ifname"):
            raise CNIError(INVALID_CONFIG, "invalid network config: each valid attachment "
                           "needs a containerID and an ifname")
        handles.add(f"{item['containerID']}/{item['ifname']}")
    return handles


def check_status(conf: NetConf) -> None:
    """STATUS: ready when the datastore answers and a usable pool exists."""
    try:
        ipam_for(conf).active_pools()
    except CNIError as err:
        raise CNIError(NOT_AVAILABLE, "weft-ipam cannot allocate addresses now",
                       err.msg + (f": {err.details}" if err.details else "")) from err


def _add(conf: NetConf, args: CmdArgs) -> bytes:
    allocator = ipam_for(conf)
    allocations = assign(allocator, args)
    if conf.type == "weft":
        ips, routes = ip_configs(allocations), default_routes(allocations)
    else:
        ips = subnet_configs(allocator, allocations)
        routes = [{"dst": DEFAULT_ROUTE[netaddr.IPAddress(a.address).version]}
                  for a in allocations]
    return encode({"ips": ips, "routes": routes, "dns": {}}, conf.cni_version)


def _del(conf: NetConf, args: CmdArgs) -> bytes:
    ipam_for(conf).release(args.handle)
    return b""


def held_addresses(conf: NetConf, args: CmdArgs) -> list[str]:
    """CHECK's first question, for weft-ipam and the weft plugin alike: the addresses
    the attachment holds, which must not be none."""
    held = [a.address for a in ipam_for(conf).lookup(args.handle)]
    if not held:
        raise CNIError(CHECK_FAILED, f"no address is allocated to {args.handle}",
                       "the attachment's allocation is gone; delete and re-create the pod")
    return held


def _check(conf: NetConf, args: CmdArgs) -> bytes:
    held_addresses(conf, args)
    return b""


def _gc(conf: NetConf, args: CmdArgs) -> bytes:
    keep = valid_handles(conf)
    ipam_for(conf).gc(lambda alloc: alloc.handle in keep)
    return b""


def _status(conf: NetConf, args: CmdArgs) -> bytes:
    check_status(conf)
    return b""


HANDLERS = {"ADD": _add, "DEL": _del, "CHECK": _check, "GC": _gc, "STATUS": _status}


def run(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    return dispatch.run(env, stdin, HANDLERS)


