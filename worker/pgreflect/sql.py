"""Named runtime queries, loaded from db/queries/*.sql (`-- name: NAME` headers)."""

from __future__ import annotations

import re
from functools import cache
from typing import LiteralString, cast

from pgreflect.paths import db_dir

_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, LiteralString]:
    parts = _HEADER.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        statement = "\n".join(
            line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
        ).strip()
        queries[name] = cast(LiteralString, statement.rstrip(";"))
    return queries


@cache
def _all() -> dict[str, LiteralString]:
    queries: dict[str, LiteralString] = {}
    for path in sorted((db_dir() / "queries").glob("*.sql")):
        for name, q in parse_queries(path.read_text()).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice ({path.name})")
            queries[name] = q
    return queries


def query(name: str) -> LiteralString:
    try:
        return _all()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {db_dir() / 'queries'}") from None
