"""A SQLAlchemy engine on a PostgreSQL state database, for the synchronous side.

The engine's own writes go through ``PostgresStore`` (claims, leases, epochs). The
rest of batchgen (the manifest's sync into jobs, ``cancel``/``retry``, ``status``,
``plan``, ``report``, ``export``, the run's summary) reads and writes through the same
SQLModel tables as on SQLite: PostgreSQL's schema (``queries.sql``) has SQLite's tables
and columns, plus the claim columns and the ``worker`` and ``key_slot`` tables, which
these models simply do not name.

``readonly`` never creates the schema and opens every transaction read-only: a reader
cannot write, whatever it runs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.pool import NullPool
from sqlmodel import create_engine

from batchgen.store.pg.db import ensure_schema_sync

__all__ = ["open_pg_engine", "sqlalchemy_url"]


def sqlalchemy_url(url: str) -> str:
    """``postgresql://…`` as SQLAlchemy names the psycopg 3 driver."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def _read_only(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    cur.close()
    dbapi_conn.commit()


def open_pg_engine(url: str, *, readonly: bool = False, create: bool = True) -> Engine:
    """An engine on ``url``'s batchgen schema (created unless ``readonly`` or not
    ``create``; a missing, foreign or newer one is a ``StateError`` before the engine is
    made)."""
    ensure_schema_sync(url, create=create and not readonly)
    # NullPool: a command's connections close when it is done with them; a worker's
    # long-lived ones are PostgresStore's
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    if readonly:
        event.listen(engine, "connect", _read_only)
    return engine
