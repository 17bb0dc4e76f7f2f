"""Reading the state database with the standard library alone.

``batchgen status`` must answer in well under a second on a million jobs, and
importing SQLAlchemy, SQLModel and pydantic alone takes most of a second. So the
read-only connection, the schema-version check and the default path live here, with
no import beyond the standard library; ``schema.open_db(readonly=True)`` builds its
engine on the same connection.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batchgen.errors import StateError

SCHEMA_VERSION = 4
DEFAULT_DB = "batchgen.db"
BUSY_TIMEOUT_MS = 30_000


def default_db_path() -> Path:
    """``$BATCHGEN_DB`` if set, else ``./batchgen.db``."""
    return Path(os.environ.get("BATCHGEN_DB") or DEFAULT_DB)


def refuse_folder(path: Path) -> None:
    """``--db`` names the database file; a folder there is a usage mistake."""
    if path.is_dir():
        raise StateError(
            f"{path} is a folder; --db names the database file, e.g. --db {path / DEFAULT_DB}"
        )


def unreadable_message(path: Path, reason: object) -> str:
    """SQLite's refusal (not a database, cannot open) worded for the person who ran us."""
    return (
        f"{path}: cannot use it as a batchgen state database ({reason}); "
        "check --db (or $BATCHGEN_DB)"
    )


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that reads ``path`` correctly even while a writer starts, and leaves
    no -wal or -shm file behind when it is the last one.

    Not ``immutable=1`` when it can be helped: SQLite then takes no lock and reads the
    main file while a writer that starts meanwhile checkpoints into it, which gives
    "database disk image is malformed" or silently wrong counts. Instead:

    - no -wal yet: open read-write under ``query_only``. Reads share the WAL index like
      any connection (a writer that starts meanwhile is seen consistently), no statement
      can write, and the last connection to close removes the -wal and -shm it made;
      with no WAL frames to fold back, the main file keeps its bytes and mtime.
    - a -wal exists (a writer is active, or one was killed): ``mode=ro`` shares its
      files; a read-only connection never checkpoints, so the main file is untouched.
    - a database we may not write: ``mode=ro`` (SQLite keeps the -wal and -shm it needs).
    - a folder we may not write and no -wal: SQLite cannot create the WAL index, so only
      ``immutable=1`` can read it; no writer without more privilege can run there.

    Transactions are explicit (``isolation_level=None``): a caller that needs one
    snapshot across several statements says ``BEGIN``. No ``synchronous`` or
    ``foreign_keys``: they only matter to writes, and SQLite refuses to change them on
    an immutable connection.
    """
    wal = path.with_name(path.name + "-wal")
    uri = path.resolve().as_uri()
    if wal.exists():
        mode = "mode=ro"
    elif not os.access(path.parent, os.W_OK):
        mode = "mode=ro&immutable=1"
    elif not os.access(path, os.W_OK):
        mode = "mode=ro"
    else:
        mode = "mode=rw"
    conn = sqlite3.connect(f"{uri}?{mode}", uri=True, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = ON")
    return conn


def read_version(conn: sqlite3.Connection) -> int | None:
    """The schema version the database records; None when it records none."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    if not has_meta:
        return None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else None
    except (sqlite3.OperationalError, ValueError, TypeError):
        return None  # another program's `meta` table: no version of ours


def refuse_foreign(path: Path) -> None:
    """Before anything may write to ``path``: refuse (``StateError``, exit 2) a file that
    is not a batchgen state database, or is of a newer schema, leaving it byte for byte.

    A missing or 0-byte file, or an SQLite file with nothing in it, may become ours.
    Checked with a read-only connection, before SQLAlchemy connects (which already
    switches the journal to WAL, a write).
    """
    refuse_folder(path)
    try:
        if path.stat().st_size == 0:
            return
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateError(unreadable_message(path, exc.strerror or exc)) from None
    try:
        conn = connect_readonly(path)
        try:
            version = read_version(conn)
            if version is None:
                (objects,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                if objects:
                    raise StateError(
                        f"{path}: not a batchgen state database (it holds another program's "
                        "tables and no batchgen schema version); left untouched: point --db "
                        "at a new file"
                    )
            else:
                check_version(version, path)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StateError(unreadable_message(path, exc)) from None


def check_version(version: int | None, path: Path) -> int:
    """``version`` if this batchgen can read it; else a StateError saying what to do."""
    if version is None:
        raise StateError(f"{path}: not a batchgen state database (no schema version)")
    if version > SCHEMA_VERSION:
        raise StateError(
            f"{path}: schema version {version} is newer than this batchgen "
            f"understands ({SCHEMA_VERSION}); upgrade batchgen"
        )
    return version


def open_readonly(path: Path) -> sqlite3.Connection:
    """A checked read-only connection to the state database at ``path``.

    Never creates the database, never writes to it and leaves no file behind once
    closed. Raises ``StateError`` (exit 2) when ``path`` is a folder, is missing, is not
    a database, or holds a schema newer than this batchgen.
    """
    refuse_folder(path)
    if not path.exists():
        raise StateError(f"{path}: no state database here (run `batchgen run` first)")
    try:
        conn = connect_readonly(path)
        try:
            check_version(read_version(conn), path)
        except BaseException:
            conn.close()
            raise
    except sqlite3.DatabaseError as exc:
        raise StateError(unreadable_message(path, exc)) from None
    return conn


@contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """``open_readonly(path)``, closed on the way out (so no -wal or -shm stays)."""
    conn = open_readonly(path)
    try:
        yield conn
    finally:
        conn.close()
