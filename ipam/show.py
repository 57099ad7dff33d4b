"""`weft ipam show`: pools, blocks and nodes' allocations as tables. It only reads."""

from __future__ import annotations

from collections.abc import Mapping

import netaddr

from weft.ipam.allocator import Block
from weft.ipam.datastore import Datastore
from weft.ipam.pools import pools_from_objects
from weft.table import render


def show(store: Datastore, nodes: Mapping[str, list[Block]]) -> str:
    """Pools and blocks from the datastore; each node's allocations from its own state."""
    pools, problems = pools_from_objects(store.list("IPPool"))
    pool_rows = [(p.name, p.cidr, f"/{p.block_size}", p.vxlan_mode,
                  str(p.nat_outgoing).lower(), str(p.disabled).lower()) for p in pools]
    own = {b.cidr: b for blocks in nodes.values() for b in blocks}
    block_rows = []
    for obj in sorted(store.list("IPAMBlock"), key=lambda o: netaddr.IPNetwork(o["spec"]["cidr"])):
        spec = obj["spec"]
        size = netaddr.IPNetwork(spec["cidr"]).size - 1  # the first is the block's gateway
        local = own.get(spec["cidr"])
        used = len(local.allocations) if local else (obj.get("status") or {}).get("allocated")
        free = size - used if isinstance(used, int) else "-"
        block_rows.append((spec["cidr"], spec.get("node", "-"), spec.get("pool", "-"),
                           "-" if used is None else used, free))
    text = ("POOLS\n" + render(("name", "cidr", "block", "vxlan", "nat", "disabled"), pool_rows)
            + "\nBLOCKS\n" + render(("cidr", "node", "pool", "used", "free"), block_rows))
    for node, blocks in nodes.items():
        rows = sorted(((a.address, a.handle, f"{a.namespace}/{a.pod}" if a.pod else "-", b.cidr)
                       for b in blocks for a in b.allocations.values()),
                      key=lambda row: netaddr.IPAddress(row[0]))
        text += f"\nALLOCATIONS on {node}\n" + render(("address", "handle", "pod", "block"), rows)
    return text + "".join(f"\nbroken IPPool, ignored: {problem}\n" for problem in problems)
