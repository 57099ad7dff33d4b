"""The weft CNI plugin: ADD, DEL, CHECK, GC and STATUS for one pod attachment.

ADD is all-or-nothing: the address is released again if plumbing fails, and
plumbing removes its own veth when it fails halfway. DEL treats whatever is
already gone as done.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping

from weft.cni import dispatch, plumbing
from weft.cni.config import CmdArgs, NetConf
from weft.cni.errors import CHECK_FAILED, INVALID_CONFIG, TRY_AGAIN_LATER, CNIError
from weft.cni.names import host_ifname
from weft.cni.result import encode, merge, normalize
from weft.ipam import plugin as ipam

log = logging.getLogger(__name__)

IPAM_TYPE = "weft-ipam"
# (namespace, pod, address): the agent's NetworkPolicy, told of a pod's address
# before its interface exists; raises CNIError to refuse the pod
Admission = Callable[[str, str, str], None]


def _require_weft_ipam(conf: NetConf) -> None:
    ipam_type = conf.ipam.get("type", IPAM_TYPE)
    if ipam_type != IPAM_TYPE:
        raise CNIError(INVALID_CONFIG, f"invalid network config: ipam type {ipam_type!r} is "
                       "not supported", f"the weft plugin allocates with {IPAM_TYPE}; set "
                       f"\"ipam\": {{\"type\": \"{IPAM_TYPE}\"}}")


def add(conf: NetConf, args: CmdArgs, admit: Admission | None = None) -> bytes:
    _require_weft_ipam(conf)
    if admit is None and conf.raw.get("networkPolicy") and args.pod_name:
        # Run in-process (the agent's socket did not answer): nothing here can put the
        # pod in the agent's sets before its first packet. Fail closed; kubelet retries.
        raise CNIError(TRY_AGAIN_LATER, f"cannot add pod {args.pod_namespace or 'default'}/"
                       f"{args.pod_name} while the weft agent is not running",
                       "NetworkPolicy is enforced on this node and only the agent applies "
                       "it before a pod's first packet; the runtime will try again")
    allocator = ipam.ipam_for(conf)
    allocations = ipam.assign(allocator, args)
    addresses = [a.address for a in allocations]
    try:
        if admit is not None and args.pod_name:
            for address in addresses:
                if ":" not in address:
                    admit(args.pod_namespace or "default", args.pod_name, address)
        link = plumbing.attach(args.netns, args.ifname, host_ifname(args.container_id,
                               args.ifname), addresses, conf.mtu)
    except BaseException:
        allocator.release(args.handle)
        raise
    log.info("ADD %s: %s on %s (%s/%s)", args.handle, ", ".join(addresses), link.host_ifname,
             args.pod_namespace or "-", args.pod_name or "-")
    interfaces = [
        {"name": link.host_ifname, "mac": link.host_mac, "mtu": link.mtu},
        {"name": link.pod_ifname, "mac": link.pod_mac, "mtu": link.mtu, "sandbox": args.netns},
    ]
    result = merge(conf.prev_result, interfaces, ipam.ip_configs(allocations, interface=1),
                   ipam.default_routes(allocations))
    return encode(result, conf.cni_version)


def delete(conf: NetConf, args: CmdArgs) -> bytes:
    _require_weft_ipam(conf)
    plumbing.detach(host_ifname(args.container_id, args.ifname), args.netns, args.ifname)
    freed = ipam.ipam_for(conf).release(args.handle)
    if freed:
        log.info("DEL %s: released %s", args.handle, ", ".join(a.address for a in freed))
    return b""


def check(conf: NetConf, args: CmdArgs) -> bytes:
    _require_weft_ipam(conf)
    held = ipam.held_addresses(conf, args)
    expected = {ip["address"].split("/")[0] for ip in normalize(conf.prev_result)["ips"]}
    if conf.prev_result is not None and not set(held) <= expected:
        raise CNIError(CHECK_FAILED, f"{args.handle} holds {', '.join(held)} but the runtime's "
                       f"result says {', '.join(sorted(expected)) or 'nothing'}",
                       "delete and re-create the pod")
    plumbing.verify(args.netns, args.ifname, host_ifname(args.container_id, args.ifname), held)
    return b""


def gc(conf: NetConf, args: CmdArgs) -> bytes:
    """Release what the runtime no longer lists, and the veths those attachments left."""
    _require_weft_ipam(conf)
    keep = ipam.valid_handles(conf)
    freed = ipam.ipam_for(conf).gc(lambda alloc: alloc.handle in keep)
    for alloc in freed:
        plumbing.detach(host_ifname(alloc.container_id, alloc.ifname))
    return b""


def status(conf: NetConf, args: CmdArgs) -> bytes:
    _require_weft_ipam(conf)
    ipam.check_status(conf)
    return b""


HANDLERS = {"ADD": add, "DEL": delete, "CHECK": check, "GC": gc, "STATUS": status}


def run(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    return dispatch.run(env, stdin, HANDLERS)


def runner(admit: Admission) -> Callable[[Mapping[str, str], bytes], tuple[int, bytes]]:
    """`run`, with ADD telling `admit` of each pod's address before plumbing it."""
    handlers = {**HANDLERS, "ADD": functools.partial(add, admit=admit)}
    return lambda env, stdin: dispatch.run(env, stdin, handlers)

