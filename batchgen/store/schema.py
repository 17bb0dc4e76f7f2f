"""The state database: tables, connection settings, migrations, and job transitions.

SQLite in WAL mode with ``synchronous=FULL``: a committed transition survives a
power cut. Every write transaction starts with ``BEGIN IMMEDIATE`` so two processes
can never deadlock upgrading a read lock to a write lock; they queue on
``busy_timeout`` instead.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, Index, UniqueConstraint, event, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import ConnectionPoolEntry, NullPool
from sqlmodel import Field, Session, SQLModel, create_engine

from batchgen.errors import StateError
from batchgen.states import JobState, check_transition

# Re-exported: the stdlib-only reader owns them so that `batchgen status` starts fast.
from batchgen.store.reader import (
    BUSY_TIMEOUT_MS,
    DEFAULT_DB,
    SCHEMA_VERSION,
    check_version,
    connect_readonly,
    default_db_path,
    open_readonly,
    read_version,
    refuse_folder,
    refuse_foreign,
    unreadable_message,
)
from batchgen.store.target import postgres_url

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DEFAULT_DB",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Batch",
    "Charge",
    "Event",
    "Job",
    "Meta",
    "default_db_path",
    "open_db",
    "transition",
]


class Meta(SQLModel, table=True):
    key: str = Field(primary_key=True)
    value: str


class Batch(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)  # resolved name (date templates already applied)
    model: str
    manifest_path: str
    manifest_sha256: str
    out_dir: str
    filename_template: str
    #: JSON of the effective limits: rate, concurrency, budget_usd, max_attempts, ...
    settings_json: str = "{}"
    #: the date the name/out_dir templates were evaluated with (ISO), fixed for the batch
    run_date: str | None = None
    canceled: bool = False
    abandon: bool = False
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


class Job(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("batch_id", "key"),
        Index("ix_job_batch_state", "batch_id", "state"),
        Index("ix_job_batch_idx", "batch_id", "idx"),
        # Covers `batchgen status` and the sync's counts: no table row is read.
        Index(
            "ix_job_batch_status",
            "batch_id",
            "state",
            "listed",
            "cost_micro_usd",
            "estimate_micro_usd",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    batch_id: int = Field(foreign_key="batch.id")
    key: str  # stable content hash: model + canonical input + image bytes + variant
    idx: int  # position in the deterministic expansion order
    variant: int = 0
    input_json: str  # canonical API input (local images as references, not bytes)
    axes_json: str = "{}"  # axis name -> value label (template variables included)
    listed: bool = True  # False once the manifest no longer lists this job
    state: str = JobState.QUEUED.value
    run_id: str | None = None
    attempts: int = 0  # submissions made (a refunded failure starts a new attempt)
    errors: int = 0  # transient errors (500, network) within the current attempt
    idem_key: str | None = None
    next_attempt_at: float = 0.0
    last_error: str | None = None
    error_code: str | None = None
    estimate_micro_usd: int = 0
    cost_micro_usd: int = 0  # what the POST answered (0 again after a refund)
    submitted_at: float | None = None
    run_created_at: str | None = None  # API createdAt
    run_completed_at: str | None = None  # API completedAt
    finished_at: float | None = None
    output_paths_json: str = "[]"
    checksums_json: str = "[]"
    media_note: str | None = None  # decoder check mismatch, shown not hidden
    updated_at: float = Field(default_factory=time.time)
    #: fingerprint of the key that created the run (never the key); None: before v4
    key_fingerprint: str | None = None


class Event(SQLModel, table=True):
    """Append-only: one row per job state change."""

    __table_args__ = (Index("ix_event_job", "job_id"),)

    id: int | None = Field(default=None, primary_key=True)
    batch_id: int
    job_id: int
    at: float
    from_state: str
    to_state: str
    detail: str | None = None


class Charge(SQLModel, table=True):
    """The spend ledger, append-only: one row per charge, refund or possible charge.

    Spend is a sum over these rows, never a job field a retry replaces. ``kind``:
    ``charge`` (a POST answered with ``costUsd``), ``refund`` (that run failed),
    ``possible`` (a POST whose answer was lost, or found ``submitting`` after a crash:
    it may have created and charged a run; its reserved estimate). A possible charge is
    settled by a further ``possible`` row of the opposite amount, never by an update.
    """

    __table_args__ = (
        # covers the sums of `status` and the budget: no table row is read
        Index("ix_charge_batch", "batch_id", "kind", "amount_micro_usd"),
        # one job's runs and possible charges
        Index("ix_charge_job", "job_id", "kind", "run_id", "amount_micro_usd"),
    )

    id: int | None = Field(default=None, primary_key=True)
    batch_id: int
    job_id: int
    run_id: str | None = None
    attempt: int = 0
    idem_key: str | None = None
    kind: str  # charge | refund | possible
    amount_micro_usd: int
    #: which API key paid (a fingerprint, never the key itself); None: the only key
    key_fingerprint: str | None = None
    at: float
    detail: str | None = None


def _on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Take transaction control away from the sqlite3 module so BEGIN IMMEDIATE works.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA synchronous = FULL")
    cur.close()


def _wal(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode = WAL")
    cur.close()


def _begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _begin_deferred(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def open_db(path: Path | str, *, readonly: bool = False, create: bool = True) -> Engine:
    """Open (and create or migrate, unless ``readonly``) the state database.

    ``readonly`` never creates the database, never writes to it and leaves no file
    behind: ``plan``, ``status``, ``report`` and ``export`` use it. A ``postgresql://``
    value (``store.target``) opens that PostgreSQL database (``store.pg.engine``);
    ``create=False`` refuses one without batchgen's schema instead of creating it
    (``cancel``: a command that only changes a batch never makes a database).
    """
    url = postgres_url(path)
    if url is not None:
        from batchgen.store.pg.engine import open_pg_engine  # psycopg only when used

        return open_pg_engine(url, readonly=readonly, create=create)
    path = Path(path)
    refuse_folder(path)
    if readonly:
        open_readonly(path).close()  # missing, not a database, too new: a StateError
        # NullPool: each connection closes when its read ends, so the -wal and -shm files
        # a read may have created go away at once, not at interpreter exit.
        engine = create_engine(
            "sqlite://", creator=lambda: connect_readonly(path), poolclass=NullPool
        )
        event.listen(engine, "begin", _begin_deferred)
        return engine
    refuse_foreign(path)  # another program's file, or a newer schema: never touched
    path.parent.mkdir(parents=True, exist_ok=True)
    # URL.create keeps the path verbatim: in a URL string "?" and "%" would be parsed
    engine = create_engine(URL.create("sqlite", database=str(path)))
    event.listen(engine, "connect", _on_connect)
    event.listen(engine, "begin", _begin_immediate)
    event.listen(engine, "connect", _wal)
    with _unreadable(path):
        _migrate(engine, path)
        _check_intact(engine, path)
    return engine


def _check_intact(engine: Engine, path: Path) -> None:
    """Refuse a damaged database before anything is written into it (exit 2)."""
    with engine.connect() as conn:
        first = conn.exec_driver_sql("PRAGMA quick_check(1)").scalar()
    if first != "ok":
        raise StateError(
            f"state database {path}: cannot use it ({' '.join(str(first).split())}); it is "
            "damaged: restore it from a backup (or `sqlite3 FILE .recover`)"
        )


@contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    """SQLite's refusal (not a database, cannot open) as a StateError naming the file."""
    try:
        yield
    except DBAPIError as exc:
        raise StateError(unreadable_message(path, exc.orig)) from None
    except sqlite3.DatabaseError as exc:
        raise StateError(unreadable_message(path, exc)) from None


def _read_version(engine: Engine) -> int | None:
    with engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        return read_version(raw)


#: version -> SQL statements that bring a database from version-1 to version.
#: Append here; never edit a shipped step.
MIGRATIONS: dict[int, list[str]] = {
    2: [
        "CREATE INDEX IF NOT EXISTS ix_job_batch_status "
        "ON job (batch_id, state, listed, cost_micro_usd, estimate_micro_usd)"
    ],
    # The spend ledger. Backfilled from what version 2 kept: each job's current run id
    # and cost (the costs of earlier attempts that a retry overwrote are lost), and a
    # possible charge for every job left in doubt (one left submitting gets its row when
    # the next run recovers it).
    3: [
        # a version-2 database has no ledger; one left by a failed attempt is rebuilt
        "DROP TABLE IF EXISTS charge",
        "CREATE TABLE charge (id INTEGER NOT NULL PRIMARY KEY, "
        "batch_id INTEGER NOT NULL, job_id INTEGER NOT NULL, run_id VARCHAR, "
        "attempt INTEGER NOT NULL, idem_key VARCHAR, kind VARCHAR NOT NULL, "
        "amount_micro_usd INTEGER NOT NULL, key_fingerprint VARCHAR, at FLOAT NOT NULL, "
        "detail VARCHAR)",
        "CREATE INDEX ix_charge_batch ON charge (batch_id, kind, amount_micro_usd)",
        "CREATE INDEX ix_charge_job ON charge (job_id, kind, run_id, amount_micro_usd)",
        "INSERT INTO charge (batch_id, job_id, run_id, attempt, idem_key, kind, "
        "amount_micro_usd, at, detail) "
        "SELECT batch_id, id, run_id, attempts, idem_key, 'charge', cost_micro_usd, "
        "coalesce(submitted_at, updated_at), 'migrated from schema 2' FROM job "
        "WHERE run_id IS NOT NULL AND cost_micro_usd > 0",
        "INSERT INTO charge (batch_id, job_id, run_id, attempt, idem_key, kind, "
        "amount_micro_usd, at, detail) "
        "SELECT batch_id, id, NULL, attempts, idem_key, 'possible', estimate_micro_usd, "
        "updated_at, 'migrated from schema 2: POST answer unknown' FROM job "
        "WHERE run_id IS NULL AND state = 'in_doubt'",
    ],
    # the key pool: each job remembers the fingerprint of the key that created its run
    4: ["ALTER TABLE job ADD COLUMN key_fingerprint VARCHAR"],
}


#: a migration step that adds a column: (table, column)
_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+) ")


def _has_column(conn: Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in conn.exec_driver_sql(f"PRAGMA table_info({table})"))


def _migrate(engine: Engine, path: Path) -> None:
    version = _read_version(engine)
    if version is None:
        # tables and version in one transaction: a crash between them must not leave a
        # file that the next start takes for another program's
        with engine.begin() as conn:
            (objects,) = conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").one()
            if objects:  # appeared since refuse_foreign looked
                raise StateError(f"{path}: not a batchgen state database; left untouched")
            SQLModel.metadata.create_all(conn)
            conn.execute(
                Meta.__table__.insert().values(key="schema_version", value=str(SCHEMA_VERSION))  # type: ignore[attr-defined]
            )
        return
    check_version(version, path)
    with engine.begin() as conn:
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                added = _ADD_COLUMN.match(statement)
                if added and _has_column(conn, added[1], added[2]):
                    continue  # SQLite has no ADD COLUMN IF NOT EXISTS: already there
                conn.exec_driver_sql(statement)
            conn.execute(
                text("UPDATE meta SET value=:v WHERE key='schema_version'"), {"v": str(step)}
            )


def transition(
    session: Session,
    job: Job,
    new: JobState,
    *,
    at: float | None = None,
    detail: dict[str, Any] | str | None = None,
    **fields: Any,
) -> None:
    """Move ``job`` to ``new`` (checked against the table), set ``fields``, log an event.

    The caller commits; the job row and its event row land in the same transaction.
    """
    old = JobState(job.state)
    check_transition(old, new)
    now = time.time() if at is None else at
    for name, value in fields.items():
        if not hasattr(job, name):
            raise AttributeError(f"Job has no field {name!r}")
        setattr(job, name, value)
    job.state = new.value
    job.updated_at = now
    session.add(job)
    assert job.id is not None, "transition() needs a stored job"
    session.add(
        Event(
            batch_id=job.batch_id,
            job_id=job.id,
            at=now,
            from_state=old.value,
            to_state=new.value,
            detail=detail if detail is None or isinstance(detail, str) else json.dumps(detail),
        )
    )
