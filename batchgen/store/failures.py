"""SQLite's errors, wherever they surface, turned into ours with one clear line
(PostgreSQL's too, when the database is a ``postgresql://`` URL: ``store.pg.db``).

SQLAlchemy wraps the ``sqlite3`` error (``.orig``); the standard-library reader raises
it bare. Either way the SQLite result code decides:

- the disk is full, an I/O error, the database stays locked: the write can succeed
  later. ``StateWriteError``, exit 75: stop at once, ``batchgen resume`` once fixed.
- read-only (a 0444 file, a read-only folder or mount), damaged, not a database,
  cannot be opened: nothing batchgen can do about it. ``StateError``, exit 2.

Standard library only, so that ``batchgen status`` and the CLI's last line of defence
can use it without importing SQLAlchemy.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from batchgen.errors import BatchgenError, StateError, StateWriteError
from batchgen.store.target import postgres_url

#: result codes after which the same write can succeed once the cause is fixed
_TRANSIENT = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_NOMEM")

_FIX_TRANSIENT = "free space (or fix the disk), then `batchgen resume`"
#: result code -> what to do about it
_FIX = {
    "SQLITE_READONLY": "it is read-only: make it and its folder writable, or point --db elsewhere",
    "SQLITE_CORRUPT": "it is damaged: restore it from a backup (or `sqlite3 FILE .recover`)",
    "SQLITE_NOTADB": "it is not a batchgen state database: check --db (or $BATCHGEN_DB)",
    "SQLITE_CANTOPEN": "check that it and its folder exist and may be written, or point --db "
    "elsewhere",
}
_FIX_OTHER = "check --db (or $BATCHGEN_DB)"


def sqlite_error(exc: BaseException) -> sqlite3.Error | None:
    """The ``sqlite3`` error behind ``exc`` (itself, SQLAlchemy's ``.orig``, or a cause)."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, sqlite3.Error):
            return err
        orig = getattr(err, "orig", None)
        err = orig if isinstance(orig, BaseException) else (err.__cause__ or err.__context__)
    return None


def state_failure(exc: BaseException, path: Path | str | None = None) -> BatchgenError | None:
    """``exc`` as a ``StateWriteError`` (75) or ``StateError`` (2) naming the database;
    None when it did not come from SQLite."""
    if isinstance(exc, StateError | StateWriteError):
        return exc
    url = None if path is None else postgres_url(path)
    if url is not None:
        return _postgres_failure(exc, url)
    err = sqlite_error(exc)
    if err is None:
        return None
    name = getattr(err, "sqlite_errorname", "") or ""
    where = f"state database {path}" if path else "state database"
    reason = " ".join(str(err).split()) or name or type(err).__name__
    if name.startswith(_TRANSIENT):
        return StateWriteError(f"{where}: cannot write ({reason}); stopped: {_FIX_TRANSIENT}")
    fix = next((f for code, f in _FIX.items() if name.startswith(code)), _FIX_OTHER)
    return StateError(f"{where}: cannot use it ({reason}); {fix}")


def _postgres_failure(exc: BaseException, url: str) -> BatchgenError | None:
    """PostgreSQL's error behind ``exc`` (itself or SQLAlchemy's ``.orig``) as ours,
    the URL's password masked; None when none came from psycopg."""
    if "psycopg" not in sys.modules:  # nothing PostgreSQL ran: status starts without it
        return None
    # imported here only: a SQLite command (status) never loads psycopg
    from batchgen.store.pg.db import pg_failure

    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        failure = pg_failure(err, url)
        if failure is not None:
            return failure
        orig = getattr(err, "orig", None)
        err = orig if isinstance(orig, BaseException) else (err.__cause__ or err.__context__)
    return None


__all__ = ["sqlite_error", "state_failure"]
