"""The agent's periodic check for leaked pod addresses.

An address is released only when its pod is gone from the API *and* its veth is
gone from the node: a leak check that trusts one source alone frees healthy pods'
addresses (after an upgrade that changed handles, or while the API is behind).
Young allocations are left alone, since an ADD allocates before it creates the veth.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from weft.cni.names import host_ifname
from weft.ipam.allocator import Allocation

GRACE_SECONDS = 120.0


def leaked(allocations: Iterable[Allocation], pods: set[tuple[str, str]], links: set[str],
           now: float | None = None, grace: float = GRACE_SECONDS) -> list[Allocation]:
    """Pod allocations whose pod is not in `pods` and whose host veth is not in `links`."""
    now = time.time() if now is None else now
    found = []
    for alloc in allocations:
        if not alloc.is_pod or now - alloc.created < grace:
            continue
        in_api = bool(alloc.pod) and (alloc.namespace, alloc.pod) in pods
        on_node = host_ifname(alloc.container_id, alloc.ifname) in links
        if not in_api and not on_node:
            found.append(alloc)
    return found
