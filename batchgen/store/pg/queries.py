"""The PostgreSQL store's SQL, read from ``queries.sql`` (one named block per statement).

Every statement the store sends is in that file, as procrastinate keeps its
``sql/queries.sql``: one place to read, review and explain. ``move_job`` has one hole,
``{changes}``, filled here from the ``JobChanges`` names only, quoted as identifiers:
never from a value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from importlib.resources import files

from psycopg import sql

from batchgen.store.records import CHANGEABLE

__all__ = ["JSON_COLUMNS", "changes_clause", "query"]

_HEADER = re.compile(r"^-- ([a-z0-9_]+) --$", re.MULTILINE)

#: record fields kept as JSON text in the job table (as in SQLite)
JSON_COLUMNS = {"output_paths": "output_paths_json", "checksums": "checksums_json"}


@cache
def _all() -> dict[str, str]:
    text = files("batchgen.store.pg").joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    # parts: [preamble, name, body, name, body, ...]; a body opens with comment lines
    # saying what it does
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.strip().splitlines()
        while lines and lines[0].startswith("--"):
            lines.pop(0)
        out[name] = "\n".join(lines).strip()
    return out


def query(name: str) -> sql.SQL:
    """The statement ``name`` of ``queries.sql`` (``KeyError`` for a name not there)."""
    return sql.SQL(_all()[name])


def changes_clause(names: Iterable[str]) -> sql.Composed:
    """``col = %(col)s, `` for each changed field (its JSON column for tuples)."""
    parts = []
    for name in sorted(names):
        if name not in CHANGEABLE:
            raise TypeError(f"a move cannot set {name}")
        column = JSON_COLUMNS.get(name, name)
        parts.append(sql.SQL("{} = {}, ").format(sql.Identifier(column), sql.Placeholder(name)))
    return sql.Composed(parts)
