"""`weft ipam show`: pools, blocks and this node's allocations as tables."""

from __future__ import annotations

import netaddr

from weft.ipam.allocator import IPAM
from weft.ipam.pools import pools_from_objects
from weft.table import render


def show(ipam: IPAM) -> str:
    store = ipam.store
    pools, problems = pools_from_objects(store.list("IPPool"))
    pool_rows = [(p.name, p.cidr, f"/{p.block_size}", p.vxlan_mode,
                  str(p.nat_outgoing).lower(), str(p.disabled).lower()) for p in pools]
    own = {b.cidr: b for b in ipam.blocks()}
    block_rows = []
    for obj in sorted(store.list("IPAMBlock"), key=lambda o: netaddr.IPNetwork(o["spec"]["cidr"])):
        spec = obj["spec"]
        size = netaddr.IPNetwork(spec["cidr"]).size - 1  # the first is the block's gateway
        local = own.get(spec["cidr"])
        used = len(local.allocations) if local else (obj.get("status") or {}).get("allocated")
        free = size - used if isinstance(used, int) else "-"
        block_rows.append((spec["cidr"], spec.get("node", "-"), spec.get("pool", "-"),
                           "-" if used is None else used, free))
    alloc_rows = sorted(
        ((a.address, a.handle, f"{a.namespace}/{a.pod}" if a.pod else "-", b.cidr)
         for b in own.values() for a in b.allocations.values()),
        key=lambda row: netaddr.IPAddress(row[0]),
    )
    return (
        "POOLS\n" + render(("name", "cidr", "block", "vxlan", "nat", "disabled"), pool_rows)
        + "\nBLOCKS\n" + render(("cidr", "node", "pool", "used", "free"), block_rows)
        + f"\nALLOCATIONS on {ipam.node}\n"
        + render(("address", "handle", "pod", "block"), alloc_rows)
        + "".join(f"\nbroken IPPool, ignored: {problem}\n" for problem in problems)
    )
