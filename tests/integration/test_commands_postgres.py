"""The user's batch-wide moves (``store.commands``: cancel, the run after a cancel,
retry) on a PostgreSQL batch that workers are working, on a real PostgreSQL.

A job a command moves is no worker's any more: its claim is cleared and its epoch
bumped, so another worker claims it at once (the old holder's heartbeat would otherwise
keep it for as long as that worker lives) and the old holder's copy writes nothing. And
a command waits for a worker's move in flight and leaves the job it moved alone: a job
whose intent was being committed is never canceled under its POST.
"""

from __future__ import annotations

import asyncio
import time

import psycopg

from batchgen.states import JobState
from batchgen.store import commands
from batchgen.store.pg.store import PostgresStore
from batchgen.store.records import JobChanges
from batchgen.store.schema import open_db
from tests.integration.test_engine_postgres_takeover import make_batch
from tests.support.pgkit import sql


def claims(url: str) -> list[dict[str, object]]:
    return sql(url, "SELECT id, state, owner, lease_until, epoch FROM job ORDER BY idx")


async def test_a_canceled_and_uncanceled_job_is_free_for_another_worker_at_once(
    postgres_url: str,
) -> None:
    a, b = [await PostgresStore.open(postgres_url, heartbeat_every=0) for _ in "ab"]
    engine = open_db(postgres_url)
    try:
        batch = make_batch(postgres_url, 3)
        old = await a.page_queued(batch, limit=3)  # worker A holds all three (30-s leases)
        assert len(old) == 3 and await b.page_queued(batch, limit=3) == []
        held = claims(postgres_url)
        assert {r["owner"] for r in held} == {a.owner}

        canceled = await asyncio.to_thread(commands.cancel, engine, batch, abandon=False, now=2.0)
        assert canceled["queued"] == 3
        assert await asyncio.to_thread(commands.uncancel, engine, batch, now=3.0) == 3
        freed = claims(postgres_url)
        assert all(r["owner"] is None and r["lease_until"] is None for r in freed)
        assert [r["epoch"] for r in freed] == [int(str(r["epoch"])) + 2 for r in held]

        # A's copy of a job (queued, as the job is again) writes nothing...
        intent: JobChanges = {"attempts": 1, "idem_key": "k-old"}
        assert await a.move(old[0], JobState.SUBMITTING, at=4.0, **intent) is None
        # ...another worker claims all three at once, not after A's lease...
        taken = await b.page_queued(batch, limit=3)
        assert [j.id for j in taken] == [j.id for j in old]
        # ...and A's copies still write nothing once it holds them
        for job in old:
            assert await a.move(job, JobState.SUBMITTING, at=5.0, **intent) is None
    finally:
        engine.dispose()
        await a.aclose()
        await b.aclose()
    rows = sql(postgres_url, "SELECT state, idem_key FROM job")
    assert rows == [{"state": "queued", "idem_key": None}] * 3
    moves = sql(postgres_url, "SELECT to_state FROM event WHERE to_state = 'submitting'")
    assert moves == []


async def test_cancel_waits_for_a_workers_intent_and_leaves_that_job_alone(
    postgres_url: str,
) -> None:
    engine = open_db(postgres_url)  # the schema
    batch = make_batch(postgres_url, 3)
    (first,) = sql(postgres_url, "SELECT id FROM job WHERE idx = 0")
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url) as worker:
            # a worker's intent, not committed yet (its row locked until it is)
            await worker.execute(
                "UPDATE job SET state = 'submitting', attempts = 1 WHERE id = %s", (first["id"],)
            )
            cancel = asyncio.create_task(
                asyncio.to_thread(commands.cancel, engine, batch, abandon=False, now=2.0)
            )
            await wait_for_a_lock_wait(postgres_url)
            assert not cancel.done()
            await worker.commit()  # the intent lands; its POST goes out now
        done = await asyncio.wait_for(cancel, 10)
    finally:
        engine.dispose()
    assert done["queued"] == 2  # the submitting job is not the command's
    states = sql(postgres_url, "SELECT idx, state FROM job ORDER BY idx")
    assert [r["state"] for r in states] == ["submitting", "canceled", "canceled"]


async def wait_for_a_lock_wait(url: str) -> None:
    """Until a session of this database waits for a row lock (the command)."""
    until = time.monotonic() + 10
    while time.monotonic() < until:
        rows = sql(url, "SELECT count(*) AS n FROM pg_stat_activity "
                   "WHERE datname = current_database() AND wait_event_type = 'Lock'")  # fmt: skip
        if rows[0]["n"]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the command never waited for the worker's row")
