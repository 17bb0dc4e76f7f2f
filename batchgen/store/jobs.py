"""Every SQL statement the run engine needs: loading work, moving jobs, recovering, counting.

The engine keeps its working set (jobs being submitted, polled or downloaded) in memory
as *detached* ``Job`` rows, and pages through queued jobs in ``idx`` order, so a batch
of a million jobs never sits in memory at once.

Every change goes through ``move``: one ``BEGIN IMMEDIATE`` transaction that re-reads
the row, checks that it is still in the state the caller believes, applies
``schema.transition`` (which writes the event row) and commits. If another process
changed the job meanwhile (``batchgen cancel`` marking queued jobs canceled, ``retry``
re-queueing one), ``move`` changes nothing and returns ``None``: the caller forgets
its stale copy. The write lock of ``BEGIN IMMEDIATE`` makes check-and-set atomic
across processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, func, or_, union, update
from sqlmodel import Session, col, select

from batchgen.states import JobState
from batchgen.store import ledger, records
from batchgen.store.charges import JobRef, add_entries
from batchgen.store.records import LedgerEntry
from batchgen.store.schema import Batch, Event, Job, transition

# One definition each, with the store's records; named here for today's callers.
ACTIVE = records.ACTIVE
DOWNLOAD_FAILED = records.DOWNLOAD_FAILED
OUTPUT_LOST = records.OUTPUT_LOST
Failure = records.Failure


def _session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


# ------------------------------------------------------------------ batches


def get_batch(engine: Engine, batch_id: int) -> Batch:
    with _session(engine) as s:
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise LookupError(f"no batch with id {batch_id}")
        return batch


def batch_flags(engine: Engine, batch_id: int) -> tuple[bool, bool]:
    """(canceled, abandon) as stored now: ``batchgen cancel`` may set them at any time."""
    with engine.connect() as conn:
        row = conn.execute(
            select(Batch.canceled, Batch.abandon).where(col(Batch.id) == batch_id)
        ).one()
        conn.rollback()
    return bool(row[0]), bool(row[1])


def set_canceled(engine: Engine, batch_id: int, *, canceled: bool, abandon: bool) -> None:
    with _session(engine) as s:
        s.exec(
            update(Batch)
            .where(col(Batch.id) == batch_id)
            .values(canceled=canceled, abandon=abandon, updated_at=time.time())
        )
        s.commit()


def touch_batch(engine: Engine, batch_id: int, now: float) -> None:
    with _session(engine) as s:
        s.exec(update(Batch).where(col(Batch.id) == batch_id).values(updated_at=now))
        s.commit()


# ------------------------------------------------------------------ loading work


def load_active(engine: Engine, batch_id: int) -> list[Job]:
    """Jobs that were submitting, in doubt, running or downloading (detached copies)."""
    with _session(engine) as s:
        rows = s.exec(
            select(Job)
            .where(Job.batch_id == batch_id, col(Job.state).in_([st.value for st in ACTIVE]))
            .order_by(col(Job.idx))
        ).all()
        return list(rows)


def page_queued(
    engine: Engine, batch_id: int, *, after: tuple[int, int] = (-1, -1), limit: int
) -> list[Job]:
    """The next ``limit`` listed queued jobs after the cursor ``(idx, id)``, in order."""
    idx, job_id = after
    with _session(engine) as s:
        rows = s.exec(
            select(Job)
            .where(
                Job.batch_id == batch_id,
                Job.state == JobState.QUEUED.value,
                col(Job.listed).is_(True),
                (col(Job.idx) > idx) | ((col(Job.idx) == idx) & (col(Job.id) > job_id)),
            )
            .order_by(col(Job.idx), col(Job.id))
            .limit(limit)
        ).all()
        return list(rows)


def recent_durations(engine: Engine, model: str, *, limit: int = 500) -> list[tuple[str, str, str]]:
    """(input_json, run_created_at, run_completed_at) of the latest finished runs of ``model``."""
    with _session(engine) as s:
        rows = s.exec(
            select(Job.input_json, Job.run_created_at, Job.run_completed_at)
            .join(Batch, col(Batch.id) == col(Job.batch_id))
            .where(
                Batch.model == model,
                col(Job.run_created_at).is_not(None),
                col(Job.run_completed_at).is_not(None),
            )
            # NULLS LAST spelled out: PostgreSQL puts them first in a DESC order
            .order_by(col(Job.finished_at).desc().nulls_last())
            .limit(limit)
        ).all()
        return [(r[0], r[1] or "", r[2] or "") for r in rows]


# ------------------------------------------------------------------ moving jobs


def move(
    engine: Engine,
    job: JobRef,
    new: JobState,
    *,
    at: float | None = None,
    detail: dict[str, Any] | str | None = None,
    ledger_rows: Sequence[LedgerEntry] = (),
    **fields: Any,
) -> Job | None:
    """Move ``job`` to ``new`` if the stored row is still in ``job.state``; commit.

    ``ledger_rows`` are written in the same transaction (attempt and idempotency key
    as the job holds them before ``fields`` change them). Returns the fresh detached
    row, or None when another process changed the job first.
    """
    now = time.time() if at is None else at
    with _session(engine) as s:
        fresh = s.get(Job, job.id)
        if fresh is None or fresh.state != job.state:
            s.rollback()
            return None
        add_entries(s, fresh, ledger_rows, now)
        transition(s, fresh, new, at=now, detail=detail, **fields)
        s.commit()
        return fresh


def recover_submitting(engine: Engine, batch_id: int, *, now: float) -> list[Job]:
    """Jobs left in ``submitting`` by a process that died: they become ``in_doubt``.

    Their POST may or may not have reached the service (and charged a run); only a
    resend with the same idempotency key (or a person) can tell. Until then the
    estimate counts as a possible charge in the ledger.
    """
    with _session(engine) as s:
        rows = list(
            s.exec(
                select(Job).where(Job.batch_id == batch_id, Job.state == JobState.SUBMITTING.value)
            ).all()
        )
        for job in rows:
            why = "found submitting at startup: the POST may have charged a run"
            add_entries(s, job, [LedgerEntry("possible", job.estimate_micro_usd, None, why)], now)
            transition(
                s,
                job,
                JobState.IN_DOUBT,
                at=now,
                detail={"why": "found submitting at startup", "idem_key": job.idem_key},
            )
        s.commit()
        return rows


def counts(engine: Engine, batch_id: int) -> dict[str, int]:
    """Jobs by state (unlisted jobs only while they still hold a paid run)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Job.state, func.count())
            .where(
                Job.batch_id == batch_id,
                (col(Job.listed).is_(True)) | (Job.state != JobState.QUEUED.value),
            )
            .group_by(Job.state)
        ).all()
        conn.rollback()
    out = {st.value: 0 for st in JobState}
    out.update({str(r[0]): int(r[1]) for r in rows})
    return out


def spent_micro_usd(engine: Engine, batch_id: int) -> int:
    """Charged minus refunded over the batch's whole life (possible charges apart)."""
    return ledger.totals(engine, batch_id).spent


def in_doubt_since(engine: Engine, batch_id: int, since: float) -> int:
    """Distinct jobs in doubt at some moment since ``since``.

    Those that entered ``in_doubt``, those that left it (resent by ``retry --in-doubt``
    or found again), and those still in it (held).
    """
    doubt = JobState.IN_DOUBT.value
    moved = select(Event.job_id).where(
        Event.batch_id == batch_id,
        col(Event.at) >= since,
        or_(col(Event.to_state) == doubt, col(Event.from_state) == doubt),
    )
    held = select(Job.id).where(Job.batch_id == batch_id, Job.state == doubt)
    with engine.connect() as conn:
        n = conn.execute(
            select(func.count()).select_from(union(moved, held).subquery())
        ).scalar_one()
        conn.rollback()
    return int(n)


def failures(engine: Engine, batch_id: int, *, limit: int = 100) -> list[Failure]:
    with _session(engine) as s:
        rows = s.exec(
            select(Job.key, Job.idx, Job.last_error, Job.error_code)
            .where(Job.batch_id == batch_id, Job.state == JobState.FAILED.value)
            .order_by(col(Job.idx))
            .limit(limit)
        ).all()
        return [Failure(r[0], r[1], r[2], r[3]) for r in rows]


def iter_jobs(engine: Engine, batch_id: int, *, states: Sequence[JobState]) -> Iterator[Job]:
    """Every job of the batch in ``states``, paged (for tests and tools)."""
    after = (-1, -1)
    while True:
        with _session(engine) as s:
            rows = s.exec(
                select(Job)
                .where(
                    Job.batch_id == batch_id,
                    col(Job.state).in_([st.value for st in states]),
                    (col(Job.idx) > after[0])
                    | ((col(Job.idx) == after[0]) & (col(Job.id) > after[1])),
                )
                .order_by(col(Job.idx), col(Job.id))
                .limit(1000)
            ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1]
        after = (last.idx, last.id or 0)


def job_input(job: Job) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(job.input_json)
    return value
