"""Path globs with `**`, matched against archive paths (posix, relative)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache


@lru_cache(maxsize=None)
def _compile(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    # A pattern naming a folder matches everything below it.
    return re.compile("".join(out) + "(?:/.*)?")


def matches(path: str, patterns: Iterable[str]) -> bool:
    return any(_compile(p.rstrip("/")).fullmatch(path) for p in patterns)
