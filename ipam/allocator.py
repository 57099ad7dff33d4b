"""Per-node address allocation from the blocks a node has claimed.

Claims go through the datastore (an exclusive create of the IPAMBlock is the
lock between nodes); addresses inside a node's own blocks are handed out here,
under one file lock in `<stateDir>/ipam`, with no datastore round trip per pod.
Every allocation is keyed by a handle: container ID and ifname for a pod, a
fixed name such as `vxlan-tunnel` for the node's own addresses.

Lock rule: methods ending in `_locked` expect `self._lock()` to be held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netaddr

from weft.cni.errors import DATASTORE, INVALID_CONFIG, POOL_EXHAUSTED, CNIError
from weft.files import write_atomically
from weft.ipam.datastore import AlreadyExists, Datastore, DatastoreError, Object
from weft.ipam.pools import (
    Pool,
    PoolError,
    block_name,
    parse_pool,
    pools_from_objects,
    start_index,
)

log = logging.getLogger(__name__)

TUNNEL_HANDLE = "vxlan-tunnel"
POOL_CACHE = "pools.json"
POOL_CACHE_SECONDS = 60.0


@dataclass
class Allocation:
    """One address held by one handle."""

    address: str
    handle: str
    container_id: str = ""
    ifname: str = ""
    namespace: str = ""
    pod: str = ""
    created: float = field(default_factory=time.time)

    @property
    def is_pod(self) -> bool:
        return bool(self.container_id)


@dataclass
class Block:
    """A block this node owns, as recorded in its state directory."""

    cidr: str
    pool: str
    allocations: dict[str, Allocation] = field(default_factory=dict)
    last: str = ""

    @property
    def name(self) -> str:
        return block_name(netaddr.IPNetwork(self.cidr))

    @property
    def size(self) -> int:
        return netaddr.IPNetwork(self.cidr).size

    def free_address(self) -> str | None:
        """The next free address after the last one handed out, wrapping around.

        Going round rather than reusing the lowest free address keeps a just-freed
        address (still in ARP caches and conntrack) idle for as long as possible.
        The block's first address is never handed out: it is the gateway that
        subnet-style plugins such as ptp put on the host (see `block_gateway`).
        """
        net = netaddr.IPNetwork(self.cidr)
        start = int(netaddr.IPAddress(self.last)) - net.first if self.last else 0
        for step in range(net.size - 1):
            offset = 1 + (start + step) % (net.size - 1)
            candidate = str(netaddr.IPAddress(net.first + offset, net.version))
            if candidate not in self.allocations:
                return candidate
        return None


class IPAM:
    """Allocation on one node; safe across threads and processes."""

    def __init__(self, store: Datastore, state_dir: str | os.PathLike[str], node: str,
                 pools: list[Pool] | None = None) -> None:
        self.store = store
        self.node = node
        self.dir = Path(state_dir) / "ipam"
        self._inline_pools = pools

    # -- public operations -------------------------------------------------

    def assign(self, handle: str, container_id: str = "", ifname: str = "",
               namespace: str = "", pod: str = "") -> list[Allocation]:
        """One address per address family the node's pools offer; idempotent per handle."""
        with self._lock():
            blocks = self._load_locked()
            held = _by_handle(blocks, handle)
            if held:
                return held
            pools = self.active_pools()
            made: list[Allocation] = []
            for family in sorted({p.family for p in pools}):
                family_pools = [p for p in pools if p.family == family]
                block = self._block_with_space_locked(blocks, family_pools)
                address = block.free_address()
                assert address is not None
                alloc = Allocation(address, handle, container_id, ifname, namespace, pod)
                block.allocations[address] = alloc
                block.last = address
                made.append(alloc)
            self._save_locked(blocks, {b.name for b in blocks.values()
                                       if any(a.handle == handle for a in b.allocations.values())})
            return made

    def release(self, handle: str) -> list[Allocation]:
        """Free what a handle holds; nothing held is success."""
        with self._lock():
            blocks = self._load_locked()
            freed, changed = [], set()
            for block in blocks.values():
                for address, alloc in list(block.allocations.items()):
                    if alloc.handle == handle:
                        freed.append(block.allocations.pop(address))
                        changed.add(block.name)
            self._save_locked(blocks, changed)
            return freed

    def lookup(self, handle: str) -> list[Allocation]:
        with self._lock():
            return _by_handle(self._load_locked(), handle)

    def blocks(self) -> list[Block]:
        with self._lock():
            return sorted(self._load_locked().values(), key=lambda b: netaddr.IPNetwork(b.cidr))

    def read_blocks(self) -> list[Block]:
        """The blocks as they are on disk, creating nothing and taking no lock (every
        write is an atomic rename): for commands that only look."""
        if not (self.dir / "blocks").is_dir():
            return []
        return sorted(_read_blocks(self.dir).values(), key=lambda b: netaddr.IPNetwork(b.cidr))

    def gc(self, keep: Callable[[Allocation], bool]) -> list[Allocation]:
        """Release every pod allocation `keep` rejects; node addresses are never touched."""
        with self._lock():
            blocks = self._load_locked()
            freed, changed = [], set()
            for block in blocks.values():
                for address, alloc in list(block.allocations.items()):
                    if alloc.is_pod and not keep(alloc):
                        freed.append(block.allocations.pop(address))
                        changed.add(block.name)
            self._save_locked(blocks, changed)
        for alloc in freed:
            log.info("gc released %s held by %s (pod %s/%s)", alloc.address, alloc.handle,
                     alloc.namespace or "-", alloc.pod or "-")
        return freed

    def active_pools(self) -> list[Pool]:
        """The pools this node allocates from: inline ones, or the datastore's enabled ones."""
        pools = self._inline_pools if self._inline_pools is not None else self._cached_pools()
        usable = [p for p in pools if not p.disabled]
        if not usable:
            raise CNIError(
                INVALID_CONFIG,
                "no usable IP pool",
                "create an IPPool (weft apply -f pool.yaml) or declare ipam.pools in the "
                "network config",
            )
        return usable

    def refresh_pools(self, objects: list[Object] | None = None) -> list[Pool]:
        """Read the pools from the datastore (or take the IPPool `objects` a caller just
        listed) and keep the ones for this node for the per-pod path."""
        pools = self._datastore_pools(objects)
        body = [{"name": p.name, "spec": {"cidr": str(p.cidr), "blockSize": p.block_size,
                                          "vxlanMode": p.vxlan_mode,
                                          "natOutgoing": p.nat_outgoing,
                                          "disabled": p.disabled}} for p in pools]
        write_atomically(self.dir / POOL_CACHE, json.dumps(body).encode(), 0o600)
        return pools

    # -- internals -----------------------------------------------------------

    def _cached_pools(self) -> list[Pool]:
        """Pools without an API round trip per pod: the node's copy while it is fresh
        (the agent refreshes it on every reconcile), and while the datastore is away."""
        path = self.dir / POOL_CACHE
        try:
            age = time.time() - path.stat().st_mtime
            cached = [parse_pool(p["spec"], p["name"]) for p in json.loads(path.read_text())]
        except (OSError, ValueError, KeyError, PoolError):
            cached, age = None, float("inf")
        if cached and age < POOL_CACHE_SECONDS:  # no pools yet: always ask again
            return cached
        try:
            return self.refresh_pools()
        except CNIError as err:
            if cached is None or err.code != DATASTORE:
                raise
            log.warning("datastore unavailable (%s); using the pools read %.0fs ago",
                        err.details or err.msg, age)
            return cached

    def _datastore_pools(self, objects: list[Object] | None = None) -> list[Pool]:
        """The datastore's pools for this node; a broken one is skipped, not fatal."""
        try:
            if objects is None:
                objects = self.store.list("IPPool")
            node = self.store.get("Node", self.node) or {}
        except DatastoreError as err:
            raise CNIError(DATASTORE, "failed to read IP pools", str(err)) from err
        labels = (node.get("metadata") or {}).get("labels") or {}
        pools, problems = pools_from_objects(objects)
        for problem in problems:
            log.warning("ignoring a broken IPPool: %s", problem)
        return [p for p in pools if p.selects(labels)]

    def _block_with_space_locked(self, blocks: dict[str, Block], pools: list[Pool]) -> Block:
        for block in sorted(blocks.values(), key=lambda b: netaddr.IPNetwork(b.cidr)):
            cidr = netaddr.IPNetwork(block.cidr)
            if any(cidr in p.cidr for p in pools) and block.free_address() is not None:
                return block
        block = self._claim_locked(pools, blocks)
        blocks[block.name] = block
        return block

    def _claim_locked(self, pools: list[Pool], blocks: dict[str, Block]) -> Block:
        """Claim a new block: an exclusive create in the datastore is the lock."""
        try:
            existing = {o["spec"]["cidr"]: o for o in self.store.list("IPAMBlock")}
        except DatastoreError as err:
            raise CNIError(DATASTORE, "failed to list IPAM blocks", str(err)) from err
        local = {b.cidr for b in blocks.values()}
        # Pools may overlap (an inline pool beside the datastore's, another block size):
        # a block is free only if no claimed block overlaps it.
        claimed = netaddr.IPSet(existing)
        for pool in pools:
            for cidr in pool.blocks_from(start_index(self.node, pool)):
                owner = existing.get(str(cidr), {}).get("spec", {}).get("node")
                if owner == self.node and str(cidr) not in local:
                    return Block(str(cidr), pool.name)  # ours in the datastore: adopt it
                if owner is not None or claimed & netaddr.IPSet([cidr]):
                    continue
                try:
                    self.store.create(self._block_object(str(cidr), pool.name))
                except AlreadyExists:
                    continue
                except DatastoreError as err:
                    raise CNIError(DATASTORE, f"failed to claim block {cidr}", str(err)) from err
                log.info("node %s claimed block %s of pool %s", self.node, cidr, pool.name)
                return Block(str(cidr), pool.name)
        names = ", ".join(f"{p.name} ({p.cidr})" for p in pools)
        raise CNIError(
            POOL_EXHAUSTED,
            f"IP pool {names} is exhausted",
            f"every block is claimed and node {self.node}'s blocks are full; add an IPPool "
            "or free addresses",
        )

    def reclaim(self, block: Block) -> str:
        """Claim again a block this node holds but the datastore lost (its IPAMBlock
        went with a deleted Node, which kubelet then registered anew).

        Returns "claimed"; "taken" when another node has claimed it since; "no node"
        while this node's Node is not registered: a claim must have its Node as owner,
        or nothing would free it when the node goes for good."""
        try:
            body = self._block_object(block.cidr, block.pool)
            if "ownerReferences" not in body["metadata"]:
                return "no node"
            self.store.create(body)
        except AlreadyExists:
            return "taken"
        except DatastoreError as err:
            raise CNIError(DATASTORE, f"failed to claim block {block.cidr} again",
                           str(err)) from err
        return "claimed"

    def _block_object(self, cidr: str, pool: str) -> Object:
        meta: dict[str, Any] = {"name": block_name(cidr)}
        node = self.store.get("Node", self.node)
        if node is not None:
            meta["ownerReferences"] = [{
                "apiVersion": "v1", "kind": "Node", "name": self.node,
                "uid": node["metadata"].get("uid", ""),
            }]
        return {"apiVersion": "weft.dev/v1", "kind": "IPAMBlock", "metadata": meta,
                "spec": {"cidr": cidr, "pool": pool, "node": self.node}}

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        (self.dir / "blocks").mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load_locked(self) -> dict[str, Block]:
        return _read_blocks(self.dir)

    def _save_locked(self, blocks: dict[str, Block], names: set[str]) -> None:
        for name in names:
            block = blocks[name]
            body = {"cidr": block.cidr, "pool": block.pool, "last": block.last,
                    "allocations": [vars(a) for a in block.allocations.values()]}
            # Compact: json's C encoder does not indent, and this runs on every ADD.
            write_atomically(self.dir / "blocks" / f"{name}.json",
                             json.dumps(body, separators=(",", ":")).encode(), 0o600)


def _read_blocks(directory: Path) -> dict[str, Block]:
    blocks = {}
    for path in (directory / "blocks").glob("*.json"):
        raw = json.loads(path.read_text())
        allocs = {a["address"]: Allocation(**a) for a in raw.pop("allocations", [])}
        block = Block(allocations=allocs, **raw)
        blocks[block.name] = block
    return blocks


def _by_handle(blocks: dict[str, Block], handle: str) -> list[Allocation]:
    return [a for b in blocks.values() for a in b.allocations.values() if a.handle == handle]
