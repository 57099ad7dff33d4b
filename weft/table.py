"""Plain-text tables for status commands."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def render(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str = "(none)") -> str:
    """Left-aligned columns under upper-case headers, as kubectl prints them."""
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        return "  ".join(h.upper() for h in headers) + "\n" + empty + "\n"
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"
