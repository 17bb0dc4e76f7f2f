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
            .order_by(col(Job.finished_at).desc())
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


def requeue(
    engine: Engine,
    batch_id: int,
    *,
    failed: bool,
    in_doubt: bool,
    now: float,
    pay_again: Sequence[int] = (),
) -> dict[str, int]:
    """``batchgen retry``: failed jobs back to work, held in-doubt jobs back to the queue.

    A failed job whose paid run only lacked its download goes back to ``downloading``
    (never paid twice); a failed job that still holds a paid run (charged, never
    refunded: its run was lost, say) is left alone (``paid``) unless its id is in
    ``pay_again``; any other failed job is queued with its transient error count
    reset. An in-doubt job keeps its idempotency key, so it is resent with that key.
    Jobs in ``pay_again`` (failed, canceled or in doubt; others are left as they are)
    get a new attempt, new key: the new charge counts in the ledger next to the old one.
    """
    done = {
        "failed": 0,
        "downloads": 0,
        "in_doubt": 0,
        "output_lost": 0,
        "paid": 0,
        "pay_again": 0,
    }
    again = set(pay_again)
    with _session(engine) as s:
        if again:
            for job in s.exec(select(Job).where(col(Job.id).in_(again))).all():
                if JobState(job.state) in (JobState.FAILED, JobState.CANCELED, JobState.IN_DOUBT):
                    transition(
                        s, job, JobState.QUEUED, at=now, detail="retry --pay-again",
                        errors=0, next_attempt_at=0.0, run_id=None, idem_key=None, listed=True,
                    )  # fmt: skip
                    done["pay_again"] += 1
        states = ([JobState.FAILED.value] if failed else []) + (
            [JobState.IN_DOUBT.value] if in_doubt else []
        )
        rows = s.exec(select(Job).where(Job.batch_id == batch_id, col(Job.state).in_(states))).all()
        conn: Any = s.connection().connection.driver_connection
        for job in rows:
            assert job.id is not None
            if job.id in again:
                continue
            if job.state == JobState.IN_DOUBT.value:
                transition(s, job, JobState.QUEUED, at=now, detail="retry --in-doubt")
                done["in_doubt"] += 1
            elif job.error_code == DOWNLOAD_FAILED and job.run_id:
                transition(s, job, JobState.DOWNLOADING, at=now, detail="retry --failed")
                done["downloads"] += 1
            elif job.error_code == OUTPUT_LOST:
                done["output_lost"] += 1  # paid once already: never re-paid implicitly
            elif job.run_id and ledger.run_paid(conn, job.id, job.run_id):
                done["paid"] += 1  # its run is paid: only --pay-again submits it again
            else:
                # A job whose run failed needs a new attempt (a new idempotency key); one
                # that never got a run id keeps its key, in case a POST did create one.
                fresh = {"run_id": None, "idem_key": None} if job.run_id else {}
                transition(
                    s,
                    job,
                    JobState.QUEUED,
                    at=now,
                    detail="retry --failed",
                    errors=0,
                    next_attempt_at=0.0,
                    **fresh,
                )
                done["failed"] += 1
        s.commit()
    return done


def cancel(engine: Engine, batch_id: int, *, abandon: bool, now: float) -> dict[str, int]:
    """``batchgen cancel``: no new submissions; queued jobs canceled.

    With ``abandon`` the paid runs still being generated and the in-doubt jobs are
    canceled too (their outputs will never be fetched). Jobs mid-download finish.
    """
    done: dict[str, int] = {}
    targets = [JobState.QUEUED] + ([JobState.RUNNING, JobState.IN_DOUBT] if abandon else [])
    with _session(engine) as s:
        s.exec(
            update(Batch)
            .where(col(Batch.id) == batch_id)
            .values(canceled=True, abandon=abandon, updated_at=now)
        )
        for state in targets:
            rows = s.exec(
                select(Job).where(Job.batch_id == batch_id, Job.state == state.value)
            ).all()
            for job in rows:
                transition(s, job, JobState.CANCELED, at=now, detail="batchgen cancel")
            done[state.value] = len(rows)
        s.commit()
    return done


def uncancel(engine: Engine, batch_id: int, *, now: float) -> int:
    """A new ``batchgen run`` of the manifest re-enables a canceled batch and its jobs.

    A job that holds a run id (abandoned while its paid run was generating) goes back
    to ``running``: polled and downloaded, never submitted again. One canceled while
    in doubt goes back to ``in_doubt`` (its possible charge stays counted). Only the
    others are queued.
    """
    with _session(engine) as s:
        s.exec(
            update(Batch)
            .where(col(Batch.id) == batch_id)
            .values(canceled=False, abandon=False, updated_at=now)
        )
        rows = s.exec(
            select(Job).where(
                Job.batch_id == batch_id,
                Job.state == JobState.CANCELED.value,
                # a paid run is fetched even if the manifest no longer lists its job
                col(Job.listed).is_(True) | col(Job.run_id).is_not(None),
            )
        ).all()
        for job in rows:
            if job.run_id:
                new = JobState.RUNNING
            elif job.idem_key and _was_in_doubt(s, job):
                new = JobState.IN_DOUBT
            else:
                new = JobState.QUEUED
            transition(s, job, new, at=now, detail="run again after cancel")
        s.commit()
        return len(rows)


def _was_in_doubt(s: Session, job: Job) -> bool:
    """Whether ``job`` was canceled from ``in_doubt`` (its last event says so)."""
    last = s.exec(
        select(Event.from_state)
        .where(Event.job_id == job.id, Event.to_state == JobState.CANCELED.value)
        .order_by(col(Event.id).desc())
        .limit(1)
    ).first()
    return last == JobState.IN_DOUBT.value


# ------------------------------------------------------------------ counting


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
