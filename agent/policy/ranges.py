"""IPv4 address sets as sorted, disjoint (first, last) integer ranges.

A node's policy is unions of address sets, thousands per sync: netaddr's IPSet, which
keeps CIDRs and merges them on every union, took 20 s where these take milliseconds.
netaddr still parses and prints the addresses.
"""

from __future__ import annotations

import bisect
import socket
from collections.abc import Iterable

import netaddr

Ranges = tuple[tuple[int, int], ...]
EMPTY: Ranges = ()


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """The union of any ranges, sorted, with touching and overlapping ones joined."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return tuple(out)


def of_cidrs(cidrs: Iterable[str], excepts: Iterable[str] = ()) -> Ranges:
    """CIDRs minus `excepts`."""
    have = merge(_span(c) for c in cidrs)
    for cut_first, cut_last in merge(_span(c) for c in excepts):
        kept: list[tuple[int, int]] = []
        for first, last in have:
            if last < cut_first or first > cut_last:
                kept.append((first, last))
                continue
            if first < cut_first:
                kept.append((first, cut_first - 1))
            if last > cut_last:
                kept.append((cut_last + 1, last))
        have = tuple(kept)
    return have


def of_addresses(addresses: Iterable[str]) -> Ranges:
    return merge((int(netaddr.IPAddress(a)), int(netaddr.IPAddress(a))) for a in addresses)


def contains(ranges: Ranges, address: str) -> bool:
    value = int(netaddr.IPAddress(address))
    at = bisect.bisect_right(ranges, (value, 1 << 32)) - 1
    return at >= 0 and ranges[at][0] <= value <= ranges[at][1]


def covers(outer: Ranges, inner: Ranges) -> bool:
    """Whether every address of `inner` is in `outer` (both merged, as `merge` makes them)."""
    for first, last in inner:
        at = bisect.bisect_right(outer, (first, 1 << 32)) - 1
        if at < 0 or not outer[at][0] <= first <= last <= outer[at][1]:
            return False
    return True


def spans(ranges: Ranges) -> list[str]:
    """As nft interval elements: an address, a CIDR where the range is one, else a-b."""
    out = []
    for first, last in ranges:
        size = last - first + 1
        if size == 1:
            out.append(_dotted(first))
        elif size & (size - 1) == 0 and first % size == 0:
            out.append(f"{_dotted(first)}/{33 - size.bit_length()}")
        else:
            out.append(f"{_dotted(first)}-{_dotted(last)}")
    return out


def _dotted(value: int) -> str:
    """netaddr's str(IPAddress(value)), at a tenth of the cost: a sync prints thousands."""
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def _span(cidr: str) -> tuple[int, int]:
    network = netaddr.IPNetwork(cidr)
    return network.first, network.last
