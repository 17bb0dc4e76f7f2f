"""Claims as data on a real PostgreSQL: several stores ("workers") on one batch.

Two workers paging one batch never get the same job; a worker that stops heartbeating
loses its jobs once its lease (on the database's clock) has run out, and a write of
its old claim (stale epoch) changes nothing; a budget holds across workers; a worker
leaving cleanly hands its jobs back at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from batchgen.errors import StateError, StateWriteError
from batchgen.states import JobState
from batchgen.store.pg import db
from batchgen.store.pg.rows import BudgetReached, job_record
from batchgen.store.pg.store import PostgresStore
from batchgen.store.reader import SCHEMA_VERSION
from batchgen.store.records import JobRecord, LedgerEntry
from tests.support.pgkit import sql

Q, S, D, R = JobState.QUEUED, JobState.SUBMITTING, JobState.IN_DOUBT, JobState.RUNNING
T0 = 1_700_000_000.0
#: short enough to wait out in a test, long enough for the statements in between on a
#: loaded 2-core machine (a heartbeat every third of it leaves a second to spare)
LEASE = 1.5

Opener = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def open_store(postgres_url: str) -> AsyncIterator[Opener]:
    """Open stores on the test's database (no automatic heartbeat unless asked);
    each is closed after the test."""
    opened: list[PostgresStore] = []

    async def make(**options: Any) -> PostgresStore:
        options.setdefault("heartbeat_every", 0)
        store = await PostgresStore.open(postgres_url, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()


def add_batch(url: str, jobs: int, *, estimate: int = 0) -> int:
    (row,) = sql(
        url,
        "INSERT INTO batch (name, model, manifest_path, manifest_sha256, out_dir, "
        "filename_template, created_at, updated_at) VALUES ('b', 'm', '', '', 'out', "
        "'{index}', 0, 0) RETURNING id",
    )
    for idx in range(jobs):
        sql(
            url,
            "INSERT INTO job (batch_id, key, idx, input_json, estimate_micro_usd, updated_at) "
            "VALUES (%(b)s, %(k)s, %(i)s, %(input)s, %(e)s, 0)",
            {"b": row["id"], "k": f"k{idx}", "i": idx, "e": estimate,
             "input": json.dumps({"prompt": f"p{idx}"})},
        )  # fmt: skip
    return int(row["id"])


def stored(url: str, job_id: int) -> JobRecord:
    return job_record(sql(url, "SELECT * FROM job WHERE id = %(id)s", {"id": job_id})[0])


def cursor(jobs: list[JobRecord]) -> tuple[int, int]:
    return (jobs[-1].idx, jobs[-1].id) if jobs else (-1, -1)


async def expire(store: PostgresStore) -> None:
    """Wait until the store's leases have run out on the database's clock."""
    await asyncio.sleep(store.lease_seconds + 0.3)


async def test_two_workers_paging_one_batch_never_get_the_same_job(
    postgres_url: str, open_store: Opener
) -> None:
    one, two = await open_store(), await open_store()
    b = add_batch(postgres_url, 60)

    async def drain(store: PostgresStore) -> list[JobRecord]:
        got: list[JobRecord] = []
        while page := await store.page_queued(b, after=cursor(got), limit=7):
            got += page
            await asyncio.sleep(0)
        return got

    first, second = await asyncio.gather(drain(one), drain(two))
    ids_one, ids_two = {j.id for j in first}, {j.id for j in second}
    assert not ids_one & ids_two
    assert len(ids_one | ids_two) == 60
    assert first and second  # both found work
    # each submits its own jobs; the other's intents on them are refused (live claim)
    job = first[0]
    assert (
        await two.record_intent(job, at=T0, attempt=1, idem_key="x", estimate_micro_usd=0) is None
    )
    mine = await one.record_intent(job, at=T0, attempt=1, idem_key="k", estimate_micro_usd=0)
    assert mine is not None and mine.state is S
    assert stored(postgres_url, job.id).idem_key == "k"


async def test_a_heartbeat_keeps_the_jobs_and_a_silent_worker_loses_them(
    postgres_url: str, open_store: Opener
) -> None:
    gone = await open_store(lease_seconds=LEASE)
    other = await open_store(lease_seconds=LEASE)
    b = add_batch(postgres_url, 3)
    queued = await gone.page_queued(b, limit=10)
    sent = await gone.record_intent(queued[0], at=T0, attempt=1, idem_key="k0",
                                    estimate_micro_usd=5)  # fmt: skip
    assert sent is not None
    running = await gone.record_run_id(sent, at=T0, run_id="run-0", cost_micro_usd=5)
    assert running is not None
    for _ in range(4):  # alive past its lease: nothing can be taken from it
        await asyncio.sleep(LEASE / 3)
        await gone.heartbeat()
        assert await other.load_active(b) == []
        assert await other.page_queued(b, limit=10) == []
    await expire(gone)  # it stops heartbeating (kill -9, a host gone)
    (taken,) = await other.load_active(b)
    assert (taken.id, taken.state, taken.run_id) == (running.id, R, "run-0")
    assert [j.idx for j in await other.page_queued(b, limit=10)] == [1, 2]
    row = sql(postgres_url, "SELECT owner, epoch FROM job WHERE id = %(id)s", {"id": taken.id})
    assert row[0]["owner"] == other.owner and row[0]["epoch"] == 2


async def test_the_automatic_heartbeat_keeps_the_claims_past_the_lease(
    postgres_url: str, open_store: Opener
) -> None:
    alive = await open_store(lease_seconds=LEASE, heartbeat_every=None)  # every LEASE / 3
    other = await open_store(lease_seconds=LEASE)
    b = add_batch(postgres_url, 2)
    assert len(await alive.page_queued(b, limit=5)) == 2
    await asyncio.sleep(LEASE * 1.5)
    assert await other.page_queued(b, limit=5) == []
    beat = sql(postgres_url, "SELECT heartbeat_at > started_at AS beat FROM worker "
               "WHERE id = %(id)s", {"id": alive.owner})  # fmt: skip
    assert beat == [{"beat": True}]


async def test_a_stale_epoch_write_changes_nothing(postgres_url: str, open_store: Opener) -> None:
    paused = await open_store(lease_seconds=LEASE)
    other = await open_store(lease_seconds=LEASE)
    b = add_batch(postgres_url, 1, estimate=700)
    (job,) = await paused.page_queued(b, limit=1)
    intent = await paused.record_intent(job, at=T0, attempt=1, idem_key="k",
                                        estimate_micro_usd=700)  # fmt: skip
    assert intent is not None
    # the worker pauses (its POST in flight) past its lease; another takes the job over
    await expire(paused)
    assert await other.recover_submitting(b, now=T0 + 1) == [
        job_record(sql(postgres_url, "SELECT * FROM job WHERE id = %(id)s", {"id": job.id})[0])
    ]
    assert stored(postgres_url, job.id).state is D
    events = sql(postgres_url, "SELECT count(*) AS n FROM event WHERE job_id = %(id)s",
                 {"id": job.id})  # fmt: skip
    # the paused worker wakes up with its answer: its move (old epoch) changes nothing
    charge = [LedgerEntry("charge", 700, "run-1")]
    late = await paused.record_run_id(intent, at=T0 + 2, run_id="run-1", cost_micro_usd=700,
                                      ledger=charge)  # fmt: skip
    assert late is None
    now = stored(postgres_url, job.id)
    assert (now.state, now.run_id) == (D, None)
    assert sql(postgres_url, "SELECT count(*) AS n FROM event WHERE job_id = %(id)s",
               {"id": job.id}) == events  # fmt: skip
    # ... not even with a fresh copy of the row: its claim is gone
    assert await paused.move(now, JobState.FAILED, at=T0 + 3) is None
    # the money it learnt is still money spent (written on its own)
    await paused.record_ledger(intent, charge, at=T0 + 2)
    totals = await other.totals(b)
    assert (totals.spent, totals.possible) == (700, 700)


async def test_a_live_workers_intent_is_not_recovered(
    postgres_url: str, open_store: Opener
) -> None:
    live, other = await open_store(), await open_store()
    b = add_batch(postgres_url, 1)
    (job,) = await live.page_queued(b, limit=1)
    assert await live.record_intent(job, at=T0, attempt=1, idem_key="k",
                                    estimate_micro_usd=0) is not None  # fmt: skip
    assert await other.recover_submitting(b, now=T0) == []
    assert await other.load_active(b) == []
    assert stored(postgres_url, job.id).state is S


async def test_a_worker_leaving_cleanly_hands_its_jobs_back_at_once(
    postgres_url: str, open_store: Opener
) -> None:
    leaving, staying = await open_store(), await open_store()
    b = add_batch(postgres_url, 2)
    (job, _) = await leaving.page_queued(b, limit=2)
    sent = await leaving.record_intent(job, at=T0, attempt=1, idem_key="k", estimate_micro_usd=0)
    assert sent is not None
    assert await leaving.record_run_id(sent, at=T0, run_id="r", cost_micro_usd=0) is not None
    await leaving.aclose()
    assert [j.state for j in await staying.load_active(b)] == [R]
    assert len(await staying.page_queued(b, limit=5)) == 1
    assert sql(postgres_url, "SELECT id FROM worker") == [{"id": staying.owner}]


async def test_the_budget_holds_across_workers(postgres_url: str, open_store: Opener) -> None:
    one = await open_store(budget_micro_usd=1000)
    two = await open_store(budget_micro_usd=1000)
    b = add_batch(postgres_url, 6, estimate=400)
    jobs_one = await one.page_queued(b, limit=3)
    jobs_two = await two.page_queued(b, limit=3)

    async def submit(store: PostgresStore, job: JobRecord) -> str:
        try:
            got = await store.record_intent(job, at=T0, attempt=1, idem_key=f"k{job.idx}",
                                            estimate_micro_usd=400)  # fmt: skip
        except BudgetReached:
            return "refused"
        return "sent" if got is not None else "lost"

    results = await asyncio.gather(
        *(submit(one, j) for j in jobs_one), *(submit(two, j) for j in jobs_two)
    )
    assert sorted(results) == ["refused"] * 4 + ["sent"] * 2  # 2 x 400 <= 1000 < 3 x 400
    assert (await one.totals(b)).possible == 800


async def test_the_schema_is_made_once_by_workers_starting_together(
    postgres_url: str, open_store: Opener
) -> None:
    stores = await asyncio.gather(*(open_store() for _ in range(4)))
    assert len({s.owner for s in stores}) == 4
    assert sql(postgres_url, "SELECT value FROM meta") == [{"value": str(SCHEMA_VERSION)}]
    assert len(sql(postgres_url, "SELECT id FROM worker")) == 4
    # a worker gone for an hour is forgotten by the next one to start; a recent one is kept
    sql(postgres_url, "INSERT INTO worker (id, host, pid, lease_until) VALUES "
        "('old', 'h', 1, now() - interval '2 hours'), ('recent', 'h', 2, now())")  # fmt: skip
    await open_store()
    ids = {r["id"] for r in sql(postgres_url, "SELECT id FROM worker")}
    assert "old" not in ids and "recent" in ids and len(ids) == 6


async def test_failures_are_ours_and_never_show_the_password(postgres_url: str) -> None:
    url = "postgresql://batchgen:hunter2@127.0.0.1:1/nowhere"
    with pytest.raises(StateWriteError) as refused:
        await PostgresStore.open(url)
    assert "hunter2" not in str(refused.value)
    assert "postgresql://batchgen:***@127.0.0.1:1/nowhere" in str(refused.value)
    assert db.masked("postgresql://u@h/d") == "postgresql://u@h/d"
    assert db.masked("postgresql://u:p@[::1]:5/d?x=1") == "postgresql://u:***@[::1]:5/d?x=1"
    sql(postgres_url, "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)")
    sql(postgres_url, "INSERT INTO meta VALUES ('schema_version', '99')")
    with pytest.raises(StateError, match="newer"):
        await PostgresStore.open(postgres_url)


async def test_one_intent_wins_when_two_workers_race_for_an_unclaimed_job(
    postgres_url: str, open_store: Opener
) -> None:
    stores = [await open_store() for _ in range(3)]
    b = add_batch(postgres_url, 1)
    job = job_record(sql(postgres_url, "SELECT * FROM job WHERE batch_id = %(b)s", {"b": b})[0])
    results = await asyncio.gather(
        *(s.record_intent(job, at=T0, attempt=1, idem_key=f"k-{i}", estimate_micro_usd=0)
          for i, s in enumerate(stores))
    )  # fmt: skip
    winners = [r for r in results if r is not None]
    assert len(winners) == 1  # one POST in flight per job
    events = sql(postgres_url, "SELECT to_state FROM event WHERE job_id = %(id)s", {"id": job.id})
    assert events == [{"to_state": "submitting"}]
    assert stored(postgres_url, job.id).idem_key == winners[0].idem_key


async def test_each_ledger_row_carries_the_fingerprint_of_the_key_that_paid(
    postgres_url: str, open_store: Opener
) -> None:
    store = await open_store(key_fingerprint="0123456789ab")
    b = add_batch(postgres_url, 1)
    (job,) = await store.page_queued(b, limit=1)
    sent = await store.record_intent(job, at=T0, attempt=1, idem_key="k", estimate_micro_usd=9)
    assert sent is not None
    charge = [LedgerEntry("charge", 9, "run-1")]
    assert await store.record_run_id(sent, at=T0, run_id="run-1", cost_micro_usd=9,
                                     ledger=charge) is not None  # fmt: skip
    rows = sql(postgres_url, "SELECT kind, run_id, attempt, idem_key, key_fingerprint "
               "FROM charge")  # fmt: skip
    assert rows == [{"kind": "charge", "run_id": "run-1", "attempt": 1, "idem_key": "k",
                     "key_fingerprint": "0123456789ab"}]  # fmt: skip
