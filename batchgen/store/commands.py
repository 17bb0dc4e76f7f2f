"""The moves a user asks for, batch-wide: ``retry`` (re-queue failed and held jobs,
``--pay-again``), ``cancel`` (and ``--abandon``) and the ``run`` after a cancel.

Each is one ``BEGIN IMMEDIATE`` transaction over the batch, through
``schema.transition`` (an event row per job), so a runner in another process sees
either all of it or none; its own check-and-set moves then find the jobs changed.

On PostgreSQL, where workers run beside the command, two more things hold:

- the jobs a command moves are read ``FOR UPDATE``: a worker's move in flight (an
  intent being committed) is waited for, and a job it moved meanwhile no longer
  matches the state asked for and is left alone (never a submitting job canceled);
- a job a command moves is no worker's any more (``_free_claims``): its ``owner`` and
  ``lease_until`` are cleared and its ``epoch`` bumped, so any live worker claims it at
  once (not after the old holder's heartbeat-renewed lease), and the old holder's
  writes of its copy (conditioned on owner and epoch) match no row.

SQLite has neither (the batch lock; no claim columns): there both are no-ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, text, update
from sqlmodel import Session, col, select

from batchgen.states import JobState
from batchgen.store import ledger
from batchgen.store.records import DOWNLOAD_FAILED, OUTPUT_LOST
from batchgen.store.schema import Batch, Event, Job, transition


def _session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


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
    moved: list[Job] = []
    with _session(engine) as s:
        if again:
            for job in s.exec(select(Job).where(col(Job.id).in_(again)).with_for_update()).all():
                if JobState(job.state) in (JobState.FAILED, JobState.CANCELED, JobState.IN_DOUBT):
                    transition(
                        s, job, JobState.QUEUED, at=now, detail="retry --pay-again",
                        errors=0, next_attempt_at=0.0, run_id=None, idem_key=None, listed=True,
                    )  # fmt: skip
                    done["pay_again"] += 1
                    moved.append(job)
        states = ([JobState.FAILED.value] if failed else []) + (
            [JobState.IN_DOUBT.value] if in_doubt else []
        )
        rows = s.exec(
            select(Job)
            .where(Job.batch_id == batch_id, col(Job.state).in_(states))
            .with_for_update()
        ).all()
        conn: Any = s.connection().connection.driver_connection
        for job in rows:
            assert job.id is not None
            if job.id in again:
                continue
            if job.state == JobState.IN_DOUBT.value:
                transition(s, job, JobState.QUEUED, at=now, detail="retry --in-doubt")
                done["in_doubt"] += 1
                moved.append(job)
            elif job.error_code == DOWNLOAD_FAILED and job.run_id:
                transition(s, job, JobState.DOWNLOADING, at=now, detail="retry --failed")
                done["downloads"] += 1
                moved.append(job)
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
                moved.append(job)
        _free_claims(s, moved)
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
                select(Job)
                .where(Job.batch_id == batch_id, Job.state == state.value)
                .with_for_update()
            ).all()
            for job in rows:
                transition(s, job, JobState.CANCELED, at=now, detail="batchgen cancel")
            done[state.value] = len(rows)
            _free_claims(s, rows)
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
            select(Job)
            .where(
                Job.batch_id == batch_id,
                Job.state == JobState.CANCELED.value,
                # a paid run is fetched even if the manifest no longer lists its job
                col(Job.listed).is_(True) | col(Job.run_id).is_not(None),
            )
            .with_for_update()
        ).all()
        for job in rows:
            if job.run_id:
                new = JobState.RUNNING
            elif job.idem_key and _was_in_doubt(s, job):
                new = JobState.IN_DOUBT
            else:
                new = JobState.QUEUED
            transition(s, job, new, at=now, detail="run again after cancel")
        _free_claims(s, rows)
        s.commit()
        return len(rows)


def _free_claims(s: Session, jobs: Sequence[Job]) -> None:
    """On PostgreSQL: ``jobs``, moved by a command, are no worker's any more (module
    docstring). SQLite has no claims (its batch lock): nothing to do there."""
    ids = [job.id for job in jobs]
    if not ids or s.get_bind().dialect.name != "postgresql":
        return
    s.flush()  # the moves first: one transaction, in order
    free = "UPDATE job SET owner = NULL, lease_until = NULL, epoch = epoch + 1 WHERE id = ANY(:ids)"
    s.connection().execute(text(free), {"ids": ids})


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
