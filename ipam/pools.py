"""IP pools and the arithmetic of cutting them into per-node blocks."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import netaddr

VXLAN_MODES = ("Always", "CrossSubnet", "Never")
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
WIDTH = {4: 32, 6: 128}
DEFAULT_POOL = {"cidr": "10.244.0.0/16", "blockSize": 26, "vxlanMode": "CrossSubnet",
                "natOutgoing": True}


class PoolError(ValueError):
    """A pool definition that cannot be used, with a message that says why."""


@dataclass(frozen=True)
class Pool:
    """One IPPool's spec, validated."""

    name: str
    cidr: netaddr.IPNetwork
    block_size: int
    vxlan_mode: str = "CrossSubnet"
    nat_outgoing: bool = True
    disabled: bool = False
    node_selector: Mapping[str, str] = field(default_factory=dict)

    @property
    def family(self) -> int:
        return self.cidr.version

    @property
    def block_count(self) -> int:
        return 1 << (self.block_size - self.cidr.prefixlen)

    @property
    def block_addresses(self) -> int:
        return 1 << (WIDTH[self.cidr.version] - self.block_size)

    def block_at(self, index: int) -> netaddr.IPNetwork:
        """The index-th block; computed, never enumerated (an IPv6 pool has 2**70)."""
        first = self.cidr.first + index * self.block_addresses
        return netaddr.IPNetwork((first, self.block_size), version=self.family)

    def blocks_from(self, start: int) -> Iterator[netaddr.IPNetwork]:
        """Every block once, beginning at `start` and wrapping around."""
        count = self.block_count
        for step in range(count):
            yield self.block_at((start + step) % count)

    def selects(self, node_labels: Mapping[str, str]) -> bool:
        """nodeSelector holds labels that a node must all carry to use the pool."""
        return all(node_labels.get(k) == v for k, v in self.node_selector.items())


def parse_pool(spec: Mapping[str, Any], name: str = "") -> Pool:
    """Validate a pool spec (an IPPool's `spec`, or an inline `ipam.pools` entry)."""
    if not isinstance(spec, Mapping):
        raise PoolError(f"pool {name or '?'}: must be an object with a 'cidr'")
    text = spec.get("cidr")
    label = f"pool {name}" if name else f"pool {text}"
    if not isinstance(text, str) or not text:
        raise PoolError(f"{label}: 'cidr' is missing; give one such as 10.244.0.0/16")
    try:
        cidr = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError) as err:
        raise PoolError(f"{label}: cidr {text!r} is not a valid CIDR such as 10.244.0.0/16") \
            from err
    if "/" not in text:
        raise PoolError(f"{label}: cidr {text!r} has no prefix length; write it as {cidr}")
    if cidr.ip != cidr.network:
        raise PoolError(f"{label}: cidr {text} has host bits set; did you mean {cidr.cidr}?")
    block_size = spec.get("blockSize", DEFAULT_BLOCK_SIZE[cidr.version])
    if not isinstance(block_size, int) or isinstance(block_size, bool):
        raise PoolError(f"{label}: blockSize {block_size!r} must be a whole number")
    if block_size < cidr.prefixlen:
        raise PoolError(
            f"{label}: blockSize /{block_size} is larger than the pool {cidr}; "
            f"use a blockSize from {cidr.prefixlen} to {WIDTH[cidr.version]}"
        )
    if block_size > WIDTH[cidr.version]:
        raise PoolError(
            f"{label}: blockSize {block_size} is longer than an IPv{cidr.version} address "
            f"({WIDTH[cidr.version]} bits)"
        )
    mode = spec.get("vxlanMode", "CrossSubnet")
    if mode not in VXLAN_MODES:
        raise PoolError(f"{label}: vxlanMode {mode!r} must be one of {', '.join(VXLAN_MODES)}")
    selector = spec.get("nodeSelector") or {}
    if not isinstance(selector, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
    ):
        raise PoolError(f"{label}: nodeSelector must map label names to values")
    return Pool(
        name=name or block_name(cidr),
        cidr=cidr,
        block_size=block_size,
        vxlan_mode=mode,
        nat_outgoing=bool(spec.get("natOutgoing", True)),
        disabled=bool(spec.get("disabled", False)),
        node_selector=dict(selector),
    )


def block_name(cidr: netaddr.IPNetwork | str) -> str:
    """An object name from a CIDR: 10.244.3.64/26 -> 10-244-3-64-26."""
    return str(cidr).replace(".", "-").replace(":", "-").replace("/", "-")


def start_index(node_name: str, pool: Pool) -> int:
    """Where a node starts looking for a free block: spread so claims rarely collide."""
    return zlib.crc32(node_name.encode()) % pool.block_count


def find_pool(pools: list[Pool], address: netaddr.IPAddress) -> Pool | None:
    return next((p for p in pools if address in p.cidr), None)


def pools_from_objects(objects: list[Mapping[str, Any]]) -> tuple[list[Pool], list[str]]:
    """Parse IPPool objects; a broken one is reported, not fatal to the others."""
    pools, problems = [], []
    for obj in objects:
        try:
            pools.append(parse_pool(obj.get("spec") or {}, obj["metadata"]["name"]))
        except PoolError as err:
            problems.append(str(err))
    return pools, problems
