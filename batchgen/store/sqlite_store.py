"""``SqliteStore``: the ``JobStore`` over today's SQLite schema, off the event loop.

Every write runs in ONE writer thread, first in first out (a single-worker
``ThreadPoolExecutor``): the commit and its fsync (WAL, ``synchronous=FULL``) never
block the event loop, and two writes never race each other inside this process. The
check-and-set is ``store.jobs.move``'s ``BEGIN IMMEDIATE`` transaction, which also
orders us against other processes (``batchgen cancel``, ``retry``).

A write is handed to the thread the moment it is called and awaited through
``asyncio.shield``: cancelling the awaiting task (Ctrl-C, a hard stop) never takes
back a write that was asked for, and the thread finishes it anyway. ``aclose`` drains
the queue, so the runner's summary counts every write made.

Reads run in the same thread, in the same queue: every transaction of this engine
starts with ``BEGIN IMMEDIATE`` (``schema.open_db``), so a reader thread would only
queue on SQLite's busy handler (sleeps of milliseconds) behind our own writer; in the
queue a read also sees every write asked for before it. Errors of either come out as
``StateWriteError`` (75) or ``StateError`` (2), as ``store.failures`` maps them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, Unpack

from sqlalchemy import Engine

from batchgen.states import JobState
from batchgen.store import charges, jobs
from batchgen.store import ledger as sums
from batchgen.store.failures import state_failure
from batchgen.store.interface import JobStore
from batchgen.store.ledger import PossibleJob, Totals
from batchgen.store.records import (
    BatchFlags,
    BatchRecord,
    Failure,
    JobChanges,
    JobRecord,
    LedgerEntry,
    RunTimes,
    check_changes,
)
from batchgen.store.schema import Batch, Job, open_db

log = logging.getLogger(__name__)

T = TypeVar("T")

#: record fields kept as JSON text in the job table
_JSON_FIELDS = {"output_paths": "output_paths_json", "checksums": "checksums_json"}


def job_record(row: Job) -> JobRecord:
    """A stored ``Job`` row as the plain record the engine reads."""
    assert row.id is not None
    return JobRecord(
        id=row.id,
        batch_id=row.batch_id,
        key=row.key,
        idx=row.idx,
        variant=row.variant,
        input=json.loads(row.input_json),
        axes=json.loads(row.axes_json or "{}"),
        listed=bool(row.listed),
        state=JobState(row.state),
        run_id=row.run_id,
        attempts=row.attempts,
        errors=row.errors,
        idem_key=row.idem_key,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        error_code=row.error_code,
        estimate_micro_usd=row.estimate_micro_usd,
        cost_micro_usd=row.cost_micro_usd,
        submitted_at=row.submitted_at,
        run_created_at=row.run_created_at,
        run_completed_at=row.run_completed_at,
        finished_at=row.finished_at,
        output_paths=tuple(json.loads(row.output_paths_json or "[]")),
        checksums=tuple(json.loads(row.checksums_json or "[]")),
        media_note=row.media_note,
        updated_at=row.updated_at,
        key_fingerprint=row.key_fingerprint,
    )


def batch_record(row: Batch) -> BatchRecord:
    assert row.id is not None
    return BatchRecord(
        id=row.id,
        name=row.name,
        model=row.model,
        manifest_path=row.manifest_path,
        manifest_sha256=row.manifest_sha256,
        out_dir=row.out_dir,
        filename_template=row.filename_template,
        settings=json.loads(row.settings_json or "{}"),
        run_date=row.run_date,
        canceled=bool(row.canceled),
        abandon=bool(row.abandon),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _columns(changes: Mapping[str, Any]) -> dict[str, Any]:
    """A move's changes as job-table columns (tuples of names become JSON text)."""
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name in _JSON_FIELDS:
            out[_JSON_FIELDS[name]] = json.dumps(list(value))
        else:
            out[name] = value
    return out


class SqliteStore(JobStore):
    """The state database behind the ``JobStore`` contract (see ``store.interface``)."""

    def __init__(self, db: Engine, *, owns: bool = False) -> None:
        self._db = db
        self._path = db.url.database
        #: dispose of the engine on ``aclose`` (it was opened by ``open``)
        self._owns = owns
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchgen-store")
        self._closed = False

    @classmethod
    def open(cls, path: Path) -> SqliteStore:
        """Open (create, migrate) the state database at ``path`` as a store."""
        return cls(open_db(path), owns=True)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for the code that does not go through the store yet."""
        return self._db

    # ------------------------------------------------------------ the one thread

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            failure = state_failure(exc, self._path)
            if failure is None:
                raise
            raise failure from exc

    async def _write(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("the store is closed")
        # Queued now, in call order; the shield keeps a cancelled caller from cancelling
        # the future (which would drop a write still waiting in the queue).
        done: Future[T] = self._thread.submit(self._call, fn)
        waited = asyncio.wrap_future(done)
        try:
            return await asyncio.shield(waited)
        except asyncio.CancelledError:
            waited.add_done_callback(_said_after_cancel)
            raise

    async def _read(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("the store is closed")
        # Not shielded: a read whose caller left may be dropped from the queue.
        return await asyncio.wrap_future(self._thread.submit(self._call, fn))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Every write called before this is in the queue ahead of the sentinel.
        await asyncio.wrap_future(self._thread.submit(lambda: None))
        self._thread.shutdown(wait=False)
        if self._owns:
            self._db.dispose()

    # ------------------------------------------------------------ batches

    async def batch(self, batch_id: int) -> BatchRecord:
        return batch_record(await self._read(lambda: jobs.get_batch(self._db, batch_id)))

    async def batch_flags(self, batch_id: int) -> BatchFlags:
        canceled, abandon = await self._read(lambda: jobs.batch_flags(self._db, batch_id))
        return BatchFlags(canceled, abandon)

    async def touch_batch(self, batch_id: int, now: float) -> None:
        await self._write(lambda: jobs.touch_batch(self._db, batch_id, now))

    # ------------------------------------------------------------ loading work

    async def recover_submitting(self, batch_id: int, *, now: float) -> list[JobRecord]:
        rows = await self._write(lambda: jobs.recover_submitting(self._db, batch_id, now=now))
        return sorted((job_record(r) for r in rows), key=lambda j: (j.idx, j.id))

    async def load_active(self, batch_id: int) -> list[JobRecord]:
        rows = await self._read(lambda: jobs.load_active(self._db, batch_id))
        return [job_record(r) for r in rows]

    async def page_queued(
        self, batch_id: int, *, after: tuple[int, int] = (-1, -1), limit: int
    ) -> list[JobRecord]:
        rows = await self._read(
            lambda: jobs.page_queued(self._db, batch_id, after=after, limit=limit)
        )
        return [job_record(r) for r in rows]

    # ------------------------------------------------------------ moving jobs

    async def move(
        self,
        job: JobRecord,
        new: JobState,
        *,
        at: float,
        detail: Mapping[str, Any] | str | None = None,
        ledger: Sequence[LedgerEntry] = (),
        **changes: Unpack[JobChanges],
    ) -> JobRecord | None:
        check_changes(changes)
        fields = _columns(changes)
        text = detail if detail is None or isinstance(detail, str) else dict(detail)
        rows = tuple(ledger)

        def write() -> Job | None:
            return jobs.move(self._db, job, new, at=at, detail=text, ledger_rows=rows, **fields)

        moved = await self._write(write)
        return None if moved is None else job_record(moved)

    async def record_ledger(
        self, job: JobRecord, entries: Sequence[LedgerEntry], *, at: float
    ) -> None:
        rows = tuple(entries)
        await self._write(lambda: charges.record(self._db, job, rows, at))

    # ------------------------------------------------------------ reading

    async def counts(self, batch_id: int) -> dict[str, int]:
        return await self._read(lambda: jobs.counts(self._db, batch_id))

    async def in_doubt_since(self, batch_id: int, since: float) -> int:
        return await self._read(lambda: jobs.in_doubt_since(self._db, batch_id, since))

    async def failures(self, batch_id: int, *, limit: int = 100) -> list[Failure]:
        return await self._read(lambda: jobs.failures(self._db, batch_id, limit=limit))

    async def recent_durations(self, model: str, *, limit: int = 500) -> list[RunTimes]:
        rows = await self._read(lambda: jobs.recent_durations(self._db, model, limit=limit))
        return [RunTimes(json.loads(i), created, done) for i, created, done in rows]

    async def totals(self, batch_id: int) -> Totals:
        return await self._read(lambda: sums.totals(self._db, batch_id))

    async def possible_jobs(self, batch_id: int, *, limit: int = 100) -> list[PossibleJob]:
        return await self._read(lambda: sums.possible_jobs(self._db, batch_id, limit=limit))

    async def run_net(self, job_id: int, run_id: str) -> int:
        return await self._read(lambda: sums.run_net(self._db, job_id, run_id))

    async def run_paid(self, job_id: int, run_id: str) -> bool:
        return await self._read(lambda: sums.run_paid(self._db, job_id, run_id))

    async def possible_for_key(self, job_id: int, idem_key: str) -> tuple[int, float]:
        return await self._read(lambda: sums.possible_for_key(self._db, job_id, idem_key))


def _said_after_cancel(fut: asyncio.Future[Any]) -> None:
    """The outcome of a write whose caller was cancelled: nobody else will read it, and
    its failure (a paid run that could not be recorded, say) must not go unsaid."""
    if not fut.cancelled() and fut.exception() is not None:
        log.error("%s", fut.exception())
