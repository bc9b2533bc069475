"""Small formatting helpers shared by the CLI commands and the dashboard."""

from __future__ import annotations


def human_params(n: int | None) -> str:
    """134515008 -> '135M'; None -> '-'."""
    if not n:
        return "-"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)
