"""The segment labels greenprof gives a meaning to (cheap to import: the meter reads them)."""

from __future__ import annotations

import re

#: The mark that closes one generated token's segment: ``token-N``, N = 1, 2, ...
TOKEN_LABEL = re.compile(r"^token-(\d+)$")


def is_token_label(label: str) -> bool:
    """``token-N``: the mark closing one generated token's segment."""
    return TOKEN_LABEL.match(label) is not None
