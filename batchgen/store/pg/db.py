"""Reaching a PostgreSQL state database: its URL, the schema, and its errors as ours.

The schema is SQLite's (schema version 3: ``batch``, ``job``, ``event``, the spend
ledger ``charge`` with each row's key fingerprint) plus the claim columns of ``job``
(owner, lease, epoch) and the ``worker`` table. Workers starting together create it
once: the creation holds a transaction-scoped advisory lock.

A password in a ``postgresql://`` URL never reaches an output: ``masked`` is the only
form of the URL that messages carry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from batchgen.errors import BatchgenError, StateError, StateWriteError
from batchgen.store.dbapi import Qmark
from batchgen.store.pg.queries import query
from batchgen.store.reader import SCHEMA_VERSION

__all__ = [
    "bounded",
    "connect",
    "ensure_schema",
    "ensure_schema_sync",
    "masked",
    "pg_failure",
    "reading",
]

#: a connection whose rows are dicts (column -> value)
Conn = psycopg.AsyncConnection[dict[str, Any]]


def masked(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def pg_failure(exc: BaseException, url: str) -> BatchgenError | None:
    """``exc`` as ours: a lost connection, a server down or out of space can be resumed
    later (``StateWriteError``, 75); any other refusal is ``StateError`` (2). None when
    it did not come from PostgreSQL."""
    if isinstance(exc, BatchgenError):
        return exc
    if not isinstance(exc, psycopg.Error):
        return None
    where = f"state database {masked(url)}"
    first = str(exc).strip().splitlines()
    reason = " ".join(first[0].split()) if first else type(exc).__name__
    if isinstance(exc, psycopg.OperationalError) and _refused(reason):
        return StateError(f"{where}: cannot use it ({reason}); check --db (or $BATCHGEN_DB)")
    if isinstance(exc, psycopg.OperationalError) and _unreachable(reason):
        return StateWriteError(
            f"{where}: cannot reach it ({reason}); once the server answers, run the command "
            "again (`batchgen resume` for a run)"
        )
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.DiskFull):
        return StateWriteError(
            f"{where}: cannot write ({reason}); stopped: once the server answers, `batchgen resume`"
        )
    return StateError(f"{where}: cannot use it ({reason}); check --db (or $BATCHGEN_DB)")


def _unreachable(reason: str) -> bool:
    """Whether libpq's message says the server could not be reached (down, connection
    refused, unknown host, timed out): trying again later may work."""
    return reason.startswith(
        ("connection failed", "connection to server", "could not", "failed to resolve")
    )


#: a server that answered but will not serve us for a while: trying later may work
_BUSY = ("too many clients", "starting up", "shutting down", "in recovery mode")


def _refused(reason: str) -> bool:
    """Whether the server answered and turned us away for good (a wrong password or
    user, no such database, not allowed from this host): exit 2, not resumable."""
    return "FATAL:" in reason and not any(busy in reason for busy in _BUSY)


@contextmanager
def as_ours(url: str) -> Iterator[None]:
    """PostgreSQL's errors raised in the block, as ours (``pg_failure``)."""
    try:
        yield
    except psycopg.Error as exc:
        failure = pg_failure(exc, url)
        assert failure is not None
        raise failure from None


@asynccontextmanager
async def bounded(url: str, seconds: float, what: str) -> AsyncIterator[None]:
    """At most ``seconds`` for what the block awaits of the server: a server that stops
    answering without closing the connection (a network cut, a host frozen) or a
    statement stuck behind a lock would otherwise hang the run. Past it the block is
    cancelled: psycopg sends the server a cancel request and waits for the statement
    to end (at most 10 s more when the server answers that neither, then it closes the
    connection), and ``StateWriteError`` (75, resumable) names the database, masked. A
    write cut short this way may or may not have committed: the run stops, as when the
    connection is lost, and the next start recovers from what was stored."""
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            yield
    except TimeoutError:
        if not limit.expired():
            raise
        raise StateWriteError(
            f"state database {masked(url)}: no answer to {what} within {seconds:g}s; "
            "stopped: once the server answers promptly, `batchgen resume`"
        ) from None


async def connect(url: str) -> Conn:
    """An autocommit connection (each write opens its own transaction block)."""
    with as_ours(url):
        return await psycopg.AsyncConnection.connect(
            url, autocommit=True, row_factory=dict_row, connect_timeout=10
        )


async def ensure_schema(url: str) -> None:
    """``ensure_schema_sync`` off the event loop (its own short connection)."""
    await asyncio.to_thread(ensure_schema_sync, url)


def ensure_schema_sync(url: str, *, create: bool = True) -> None:
    """Create the schema if the database has none (``create``; otherwise a database
    without one is refused: the readers never write); refuse one of a newer batchgen.

    Synchronous, so that the commands that read or sync through SQLAlchemy
    (``store.pg.engine``) and the async store share one check."""
    with as_ours(url), psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        version = _settle_schema(conn, create=create)
    _check_version(url, version)


@contextmanager
def reading(url: str) -> Iterator[Qmark]:
    """A read-only connection for ``batchgen status`` (psycopg alone, no SQLAlchemy),
    taking ``?`` placeholders as its sqlite3 reads do (``store.dbapi``). A database
    without batchgen's schema is refused (exit 2) and left as it is; any PostgreSQL
    error on the way is ours (``pg_failure``)."""
    with as_ours(url), psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        _check_version(url, _settle_schema(conn, create=False))
        yield Qmark(conn)


def _check_version(url: str, version: int | None) -> None:
    if version is None:
        raise StateError(
            f"{masked(url)}: no batchgen state database there (nothing was written); "
            "`batchgen run MANIFEST --db URL` creates it"
        )
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state database {masked(url)} has schema version {version}, newer than this "
            f"batchgen knows ({SCHEMA_VERSION}): upgrade batchgen"
        )
    if version < SCHEMA_VERSION:
        # PostgreSQL stores start at version 3; a lower one is not ours
        raise StateError(f"{masked(url)}: not a batchgen state database; left untouched")


def _settle_schema(conn: psycopg.Connection[Any], *, create: bool) -> int | None:
    """The schema version, after creating or migrating it (``create``)."""
    if not create:
        row = conn.execute(query("has_meta")).fetchone()
        if row is None or not row[0]:
            return None
        got = conn.execute(query("schema_version")).fetchone()
        return int(got[0]) if got else 0
    with conn.transaction():
        conn.execute(query("lock_schema"))
        row = conn.execute(query("has_meta")).fetchone()
        if row is None or not row[0]:
            conn.execute(query("create_schema"))
            conn.execute(query("set_schema_version"), {"version": str(SCHEMA_VERSION)})
            return SCHEMA_VERSION
        got = conn.execute(query("schema_version")).fetchone()
        version = int(got[0]) if got else 0
        if version == 3:  # schema 4 adds one column (the key pool's fingerprint)
            conn.execute(query("migrate_4"))
            conn.execute(query("bump_schema_version"), {"version": "4"})
            version = 4
        return version
