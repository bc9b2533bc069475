"""The segment labels greenprof gives a meaning to (cheap to import: the meter reads them)."""

from __future__ import annotations

import re

#: The mark that closes one generated token's segment: ``token-N``, N = 1, 2, ...
TOKEN_LABEL = re.compile(r"^token-(\d+)$")
