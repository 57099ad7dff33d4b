"""Plain-text tables for status commands."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def render(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str = "(none)",
           upper: bool = True) -> str:
    """Left-aligned columns under (upper-case) headers, as kubectl prints them."""
    heads = [h.upper() if upper else h for h in headers]
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        return "  ".join(heads) + "\n" + empty + "\n"
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"
