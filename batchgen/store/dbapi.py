"""One DB-API spelling for the hand-written reads that run on SQLite and PostgreSQL.

``status``, the ledger and the report's reads are plain SQL with ``?`` placeholders
read through a DB-API connection: the standard library's ``sqlite3`` for SQLite (so
that ``batchgen status`` starts without SQLAlchemy), psycopg for PostgreSQL, whose
placeholder is ``%s``. ``qmark(conn)`` gives back a sqlite3 connection as it is and
wraps any other in ``Qmark``, which rewrites the placeholders once per statement text.
The SQL itself is written to mean the same on both (booleans tested as booleans,
every subquery in FROM named). Standard library only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

__all__ = ["Qmark", "is_sqlite", "qmark", "reading", "stream"]


def is_sqlite(conn: Any) -> bool:
    return isinstance(conn, sqlite3.Connection)


@lru_cache(maxsize=256)
def _format_style(sql: str) -> str:
    # none of batchgen's statements holds a "?" or a "%" inside a string literal
    return sql.replace("%", "%%").replace("?", "%s")


class Qmark:
    """A psycopg connection that takes ``?`` placeholders, as sqlite3 does."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(_format_style(sql), tuple(params))
        return cur


def qmark(conn: Any) -> Any:
    """``conn`` (a DB-API connection) as one that takes ``?`` placeholders."""
    if isinstance(conn, sqlite3.Connection | Qmark):
        return conn
    return Qmark(conn)


def stream(conn: Any, sql: str, params: Sequence[Any], *, size: int) -> Iterator[tuple[Any, ...]]:
    """The rows of one ``SELECT``, ``size`` at a time: a sqlite3 cursor steps through
    the table; on PostgreSQL a server-side (named) cursor in the connection's open
    transaction keeps a million rows out of memory."""
    if isinstance(conn, sqlite3.Connection):
        cur = conn.cursor()
        cur.execute(sql, tuple(params))
    else:
        cur = conn.cursor(name="batchgen_stream")
        cur.itersize = size
        cur.execute(_format_style(sql), tuple(params))
    try:
        while rows := cur.fetchmany(size):
            yield from rows
    finally:
        cur.close()


@contextmanager
def reading(conn: Any) -> Iterator[None]:
    """One read transaction over several statements, so that they see one moment.

    sqlite3 (in autocommit mode): ``BEGIN`` … ``ROLLBACK``. A psycopg connection in
    autocommit mode (``status``'s own): a read-only ``REPEATABLE READ`` transaction,
    PostgreSQL's one snapshot for all its statements. One that is not (an engine's)
    already runs the statements in its own transaction: left as it is.
    """
    if isinstance(conn, Qmark):
        if not conn.conn.autocommit:
            yield
            return
        begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    else:
        begin = "BEGIN"
    conn.execute(begin)
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
