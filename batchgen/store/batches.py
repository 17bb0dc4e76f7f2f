"""Every SQL statement about batches: storing a manifest's jobs, finding a batch, and the
read-only counts behind ``batchgen plan`` and ``batchgen status``.

``sync_batch`` streams: it reads ``loaded.jobs()`` once and writes chunks of
``CHUNK`` rows, each chunk its own ``BEGIN IMMEDIATE`` transaction. One transaction for
a million rows would hold the write lock (and grow the WAL) for the whole expansion and
make every other process time out on ``busy_timeout``; a crash between chunks leaves
a prefix of the jobs stored, and the next sync stores the rest (it is idempotent).

Identity is the job key alone. Decisions:

- ``idx`` of a job that is still ``queued`` follows the manifest's current order, so a
  run works through the jobs in the order the manifest now lists them. A job that has
  left ``queued`` keeps the ``idx`` it had (its events and files were made with it).
  Two jobs may then share an ``idx``; pages are ordered by ``(idx, id)`` and file names
  carry a key tag, so nothing depends on ``idx`` being unique.
- A job the manifest no longer lists gets ``listed = 0``; nothing else of it changes.
  ``store.jobs.page_queued`` only pages listed jobs, so an unlisted job that never
  started is not submitted; one already paid for is still polled and downloaded. A job
  listed again gets ``listed = 1`` back.
- ``run_date`` is set when the batch is created and never changed (the name and output
  folder were evaluated with it); the other batch columns follow the latest manifest.

On PostgreSQL ``sync_batch`` hands the same rows to ``store.pg.sync`` (one transaction
under an advisory lock on the batch's name: workers starting together store each job
once). Every other statement here is written once for both databases.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine
from sqlmodel import Session, col, select

from batchgen.errors import StateError
from batchgen.runbase.models import load_model
from batchgen.store import status
from batchgen.store.dbapi import qmark
from batchgen.store.pg import sync as pg_sync
from batchgen.store.schema import Batch, Job

# Re-exported: the counts live in the stdlib-only ``status`` module (fast `status`).
from batchgen.store.status import KNOWN_SHOWN, BatchCounts, ErrorGroup, FailedJob

__all__ = [
    "CHUNK",
    "KNOWN_SHOWN",
    "BatchCounts",
    "ErrorGroup",
    "FailedJob",
    "SyncResult",
    "batch_counts",
    "find_batch",
    "find_jobs",
    "list_batches",
    "sync_batch",
]

if TYPE_CHECKING:
    from batchgen.manifest.expand import ExpandedJob
    from batchgen.manifest.loader import LoadedManifest

#: rows per write transaction. Keys arrive in random order, so every chunk dirties pages
#: all over the unique (batch_id, key) index and each commit writes them to the WAL
#: again: fewer, larger chunks write far less (measured: 5,000 rows per chunk spent 6x
#: longer committing than 50,000). One chunk holds the write lock for about a second.
CHUNK = 50_000
#: SQLite page cache while syncing: the unique (batch_id, key) index takes keys in random
#: order, and a 2 MB cache makes each insert re-read index pages
SYNC_CACHE_KIB = 32_768

_UPSERT = """
INSERT INTO job (batch_id, key, idx, variant, input_json, axes_json, listed, state,
                 attempts, errors, next_attempt_at, estimate_micro_usd, cost_micro_usd,
                 output_paths_json, checksums_json, updated_at)
VALUES (?, ?, ?, ?, ?, ?, 1, 'queued', 0, 0, 0.0, ?, 0, '[]', '[]', ?)
ON CONFLICT (batch_id, key) DO UPDATE SET
    listed = 1,
    idx = CASE WHEN job.state = 'queued' THEN excluded.idx ELSE job.idx END,
    updated_at = excluded.updated_at
WHERE job.listed = 0 OR (job.state = 'queued' AND job.idx != excluded.idx)
"""


@dataclass(frozen=True, slots=True)
class SyncResult:
    batch_id: int
    created: bool
    added: int  # jobs new to the database (state queued)
    unlisted: int  # jobs the manifest listed before and no longer lists
    relisted: int  # jobs unlisted before and listed again
    total: int  # jobs of the batch in the database, listed or not

    def describe(self, name: str) -> str:
        """One line for the run's log: what this sync changed in the database."""
        out = f"batch {name}: {self.added:,} new job(s) stored, {self.total:,} in the database"
        if self.unlisted:
            out += (
                f"; {self.unlisted:,} no longer listed by the manifest (kept; those not "
                "started yet are not submitted; see `batchgen status`)"
            )
        if self.relisted:
            out += f"; {self.relisted:,} listed again"
        return out


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
#: axes keep the manifest's order: the report lays its grid out by the first two
_IN_ORDER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _pricer(model: str) -> Callable[[dict[str, Any]], int]:
    """``input -> micro-USD`` for ``model``; 0 when no price table describes it."""
    try:
        spec = load_model(model)
    except KeyError:
        return lambda _input: 0

    defaults = spec.defaults()
    resolution: str = defaults.get("resolution", "")
    duration: str = defaults.get("duration", "")

    def price(input_: dict[str, Any]) -> int:
        try:
            return spec.prices[input_.get("resolution", resolution)][
                input_.get("duration", duration)
            ]
        except (KeyError, TypeError):
            return 0

    return price


# ------------------------------------------------------------------ writing


def sync_batch(db: Engine, loaded: LoadedManifest) -> SyncResult:
    """Store the manifest's batch and jobs: add what is new, unlist what is gone.

    Idempotent: the same manifest again changes nothing. Jobs that already ran are
    never touched (state, run id, attempts, cost, outputs).
    """
    now = time.time()
    if db.dialect.name == "postgresql":
        return SyncResult(
            *pg_sync.sync_jobs(db, _batch_values(loaded, now), _rows_for(loaded, now))
        )
    with db.connect() as conn, _cache_size(conn, SYNC_CACHE_KIB):
        with conn.begin():
            batch_id, created = _upsert_batch(conn, loaded, now)
        total0, unlisted0 = (0, 0) if created else _listing(conn, batch_id)
        price = _pricer(loaded.model)
        streamed = 0
        jobs = iter(loaded.jobs())
        # Rows are built outside the transaction: the write lock covers only the insert.
        while rows := [_row(batch_id, job, price(job.input), now) for job in islice(jobs, CHUNK)]:
            streamed += len(rows)
            # In key order, the chunk walks the unique (batch_id, key) index left to right
            # instead of jumping about it: measured 40% faster inserts. Row ids then
            # follow key order within a chunk; every reader orders by (idx, id).
            rows.sort(key=_by_key)
            with conn.begin():
                conn.exec_driver_sql(_UPSERT, rows)
            del rows
        total1, unlisted1 = _listing(conn, batch_id)
        unlisted = 0
        # Every streamed key is now listed: more listed rows than keys means some are gone.
        if total1 - unlisted1 != streamed:
            unlisted = _unlist_missing(conn, batch_id, loaded, now)
    return SyncResult(
        batch_id=batch_id,
        created=created,
        added=total1 - total0,
        unlisted=unlisted,
        relisted=unlisted0 - unlisted1,
        total=total1,
    )


@contextmanager
def _cache_size(conn: Connection, kib: int) -> Iterator[None]:
    raw: Any = conn.connection.driver_connection
    before = raw.execute("PRAGMA cache_size").fetchone()[0]
    raw.execute(f"PRAGMA cache_size = -{int(kib)}")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA cache_size = {int(before)}")


def _by_key(row: tuple[Any, ...]) -> Any:
    return row[1]


def _row(batch_id: int, job: ExpandedJob, price: int, now: float) -> tuple[Any, ...]:
    return (
        batch_id,
        job.key,
        job.idx,
        job.variant,
        _dumps(job.input),
        _IN_ORDER.encode(job.axes),
        price,
        now,
    )


def _batch_values(loaded: LoadedManifest, now: float) -> dict[str, Any]:
    """The batch row's columns as the manifest gives them (``run_date``: a new batch's)."""
    return {
        "model": loaded.model,
        "manifest_path": str(loaded.path),
        "manifest_sha256": loaded.sha256,
        "out_dir": str(loaded.out_dir),
        "filename_template": loaded.filename_template,
        "settings_json": _dumps(loaded.settings),
        "now": now,
        "name": loaded.name,
        "run_date": loaded.run_date.isoformat(),
    }


def _rows_for(loaded: LoadedManifest, now: float) -> pg_sync.Rows:
    """``batch_id -> the manifest's job rows`` (PostgreSQL's sync streams them itself)."""
    price = _pricer(loaded.model)
    return lambda batch_id: (_row(batch_id, job, price(job.input), now) for job in loaded.jobs())


def _upsert_batch(conn: Connection, loaded: LoadedManifest, now: float) -> tuple[int, bool]:
    values = _batch_values(loaded, now)
    run_date = values.pop("run_date")
    row = conn.exec_driver_sql("SELECT id FROM batch WHERE name = ?", (loaded.name,)).first()
    if row is not None:
        conn.exec_driver_sql(
            "UPDATE batch SET model = :model, manifest_path = :manifest_path, "
            "manifest_sha256 = :manifest_sha256, out_dir = :out_dir, "
            "filename_template = :filename_template, settings_json = :settings_json, "
            "updated_at = :now WHERE name = :name",
            values,
        )
        return int(row[0]), False
    cursor = conn.exec_driver_sql(
        "INSERT INTO batch (name, model, manifest_path, manifest_sha256, out_dir, "
        "filename_template, settings_json, run_date, canceled, abandon, created_at, "
        "updated_at) VALUES (:name, :model, :manifest_path, :manifest_sha256, :out_dir, "
        ":filename_template, :settings_json, :run_date, 0, 0, :now, :now)",
        {**values, "run_date": run_date},
    )
    assert cursor.lastrowid is not None
    return int(cursor.lastrowid), True


def _listing(conn: Connection, batch_id: int) -> tuple[int, int]:
    """(jobs, unlisted jobs) of the batch."""
    row = conn.exec_driver_sql(
        "SELECT count(*), coalesce(sum(listed = 0), 0) FROM job WHERE batch_id = ?",
        (batch_id,),
    ).one()
    conn.rollback()
    return int(row[0]), int(row[1])


def _unlist_missing(conn: Connection, batch_id: int, loaded: LoadedManifest, now: float) -> int:
    """Second pass over the manifest: its keys into a temporary table, then unlist the rest.

    Only needed when the manifest lost jobs, so re-running an unchanged or grown
    manifest never pays for it. The temporary table lives on disk (``temp_store``), not
    in memory.
    """
    # Outside any transaction (SQLite refuses it inside one): the raw connection.
    raw: Any = conn.connection.driver_connection
    raw.execute("PRAGMA temp_store = FILE")
    with conn.begin():
        conn.exec_driver_sql(
            "CREATE TEMP TABLE IF NOT EXISTS sync_keys (key TEXT PRIMARY KEY) WITHOUT ROWID"
        )
        conn.exec_driver_sql("DELETE FROM temp.sync_keys")
    try:
        for chunk in _chunks(loaded.keys(), CHUNK):
            with conn.begin():
                conn.exec_driver_sql(
                    "INSERT OR IGNORE INTO temp.sync_keys (key) VALUES (?)",
                    [(k,) for k in sorted(chunk)],
                )
        with conn.begin():
            cursor = conn.exec_driver_sql(
                "UPDATE job SET listed = 0, updated_at = ? WHERE batch_id = ? AND listed = 1 "
                "AND key NOT IN (SELECT key FROM temp.sync_keys)",
                (now, batch_id),
            )
            return int(cursor.rowcount)
    finally:
        with conn.begin():
            conn.exec_driver_sql("DROP TABLE IF EXISTS temp.sync_keys")


# ------------------------------------------------------------------ finding


def find_batch(db: Engine, name: str | None) -> Batch:
    """The batch called ``name``; None: the most recently run or synced one.

    Raises ``StateError`` (exit 2) naming the batches the database does hold.
    """
    with Session(db, expire_on_commit=False) as s:
        query = select(Batch)
        if name is not None:
            query = query.where(Batch.name == name)
        else:
            query = query.order_by(col(Batch.updated_at).desc(), col(Batch.id).desc())
        found = s.exec(query.limit(1)).first()
        if found is not None:
            return found
        known = list(
            s.exec(
                select(Batch.name)
                .order_by(col(Batch.updated_at).desc(), col(Batch.id).desc())
                .limit(KNOWN_SHOWN + 1)
            ).all()
        )
    raise StateError(status.no_batch_message(name, known))


def list_batches(db: Engine) -> list[Batch]:
    """Every batch, the most recent first."""
    with Session(db, expire_on_commit=False) as s:
        return list(
            s.exec(select(Batch).order_by(col(Batch.updated_at).desc(), col(Batch.id).desc())).all()
        )


# ------------------------------------------------------------------ reading: status


def batch_counts(db: Engine, batch_id: int, *, failures: int = 10) -> BatchCounts:
    """Counts for ``batchgen status``: GROUP BY queries, no job object is loaded."""
    with db.connect() as conn:
        raw: Any = conn.connection.driver_connection
        return status.batch_counts(qmark(raw), batch_id, failures=failures)


def find_jobs(engine: Engine, batch_id: int, prefixes: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Job key or unique key prefix -> (job id, state); LookupError naming what does
    not match."""
    found: dict[str, tuple[int, str]] = {}
    with Session(engine) as s:
        for prefix in prefixes:
            rows = s.exec(
                select(Job.id, Job.state)
                .where(
                    Job.batch_id == batch_id,
                    col(Job.key).startswith(prefix.strip().lower(), autoescape=True),
                )
                .limit(2)
            ).all()
            if len(rows) != 1 or not prefix.strip():
                why = "no job" if not rows else "more than one job"
                raise LookupError(f"{why} of this batch has a key starting with {prefix!r}")
            found[prefix] = (int(rows[0][0] or 0), str(rows[0][1]))
    return found
