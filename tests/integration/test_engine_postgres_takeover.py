"""The engine on ``PostgresStore`` when workers share a batch and one of them dies.

A worker killed mid-run (its engine cancelled, its store never closed, no heartbeat:
what ``kill -9`` leaves) holds a POST whose run was made and paid but not recorded,
runs it had created, and a page of claimed queued jobs. A live worker with takeover on
finishes its own jobs, does not end while the dead worker's are unfinished, and takes
them over once their leases run out: every job succeeds, the paid runs are polled and
never made again, the unrecorded POST is resent with its key (one run, one charge).
And a budget the store checks in the intent's transaction is every worker's budget
stop (exit 4), the spend never over it. Real PostgreSQL, the stand-in API of
``test_engine_postgres``, virtual time for the engines (the leases are on the
database's real clock).
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import psycopg

from batchgen.clock import FakeClock
from batchgen.engine.budget import Budget
from batchgen.engine.dispatcher import EngineConfig, Outcome, RunEngine
from batchgen.engine.schedule import DurationModel, PollPolicy
from batchgen.errors import ExitCode
from batchgen.retry import RetryPolicy
from batchgen.runbase.answers import Run
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.store.pg.store import PostgresStore
from tests.integration.test_engine_postgres import PRICE, Api, collect
from tests.support.pgkit import sql

JOBS = 30


def make_batch(url: str, jobs: int) -> int:
    (row,) = sql(
        url,
        "INSERT INTO batch (name, model, manifest_path, manifest_sha256, out_dir, "
        "filename_template, created_at, updated_at) VALUES ('shared', "
        "'bytedance/seedance-1-pro', '', '', 'out', '{index}', 0, 0) RETURNING id",
    )
    b = int(row["id"])
    sql(url, "INSERT INTO job (batch_id, key, idx, input_json, estimate_micro_usd, updated_at) "
        "SELECT %(b)s, 'key' || i, i, %(input)s, %(price)s, 0 FROM generate_series(0, %(n)s - 1) i",
        {"b": b, "n": jobs, "input": json.dumps({"prompt": "a fox"}), "price": PRICE})  # fmt: skip
    return b


def engine(store: PostgresStore, batch: Any, api: Any, clock: FakeClock, **cfg: Any) -> RunEngine:
    return RunEngine(
        store, batch, client=api, limiter=RequestLimiter(20, 10.0, clock=clock),
        collect=collect, materialize=lambda x: x,
        config=EngineConfig(page_size=5, concurrency=4, **cfg), budget=Budget(None),
        durations=DurationModel(PollPolicy(min_interval_s=1.0)),
        retry=RetryPolicy(base_s=1.0, cap_s=8.0, rng=random.Random(7)), clock=clock,
    )  # fmt: skip


def table(url: str, query: str) -> Any:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


class DyingApi(Api):
    """The service as the worker about to die sees it: from the ``die_at``-th POST on,
    the run is made (and paid) but no answer ever comes, nor to any later request."""

    die_at = 6
    dead = asyncio.Event()

    async def create_run(
        self, model: str, input: dict[str, Any], *, idempotency_key: str, priority: int = 1
    ) -> Run:
        run = await super().create_run(model, input, idempotency_key=idempotency_key)
        if sum(self.posts.values()) >= self.die_at:
            self.dead.set()
            await asyncio.Event().wait()
        return run

    async def get_run(self, run_id: str, **kw: Any) -> Run:
        if self.dead.is_set():
            await asyncio.Event().wait()
        return await super().get_run(run_id, **kw)


async def test_a_live_worker_takes_over_a_dead_workers_jobs(postgres_url: str) -> None:
    clock = FakeClock()
    dying = DyingApi(postgres_url, clock)
    dying.dead = asyncio.Event()
    dead = await PostgresStore.open(postgres_url, lease_seconds=1.0, heartbeat_every=0)
    live = await PostgresStore.open(postgres_url)
    try:
        b = make_batch(postgres_url, JOBS)  # the schema is the stores'
        task = asyncio.create_task(engine(dead, await dead.batch(b), dying, clock).run())
        await asyncio.wait_for(dying.dead.wait(), 30)
        task.cancel()  # kill -9: nothing more is written, nothing handed back
        await asyncio.gather(task, return_exceptions=True)
        held = table(postgres_url, "SELECT state, count(*) FROM job WHERE owner IS NOT NULL "
                     "GROUP BY state")  # fmt: skip
        assert dict(held).get("submitting") == 1  # the POST whose answer never came

        # the same service (it remembers the runs and their keys), answering again
        api = Api(postgres_url, clock, runs=dying.runs, by_key=dying.by_key, posts=dying.posts)
        worker = engine(live, await live.batch(b), api, clock, takeover_every_s=0.5)
        outcome: Outcome = await asyncio.wait_for(worker.run(), 60)
    finally:
        await live.aclose()
        await dead.aclose()
    assert outcome.exit_code == ExitCode.OK, outcome
    assert dict(table(postgres_url, "SELECT state, count(*) FROM job GROUP BY state")) == {
        "succeeded": JOBS
    }
    assert len(api.runs) == JOBS  # no run made twice: the unrecorded one was resent
    assert sum(api.posts.values()) == JOBS + 1  # ... with its key, once
    (charged,) = table(postgres_url, "SELECT sum(amount_micro_usd) FROM charge "
                       "WHERE kind = 'charge'")  # fmt: skip
    (possible,) = table(postgres_url, "SELECT coalesce(sum(amount_micro_usd), 0) FROM charge "
                        "WHERE kind = 'possible'")  # fmt: skip
    assert charged == (JOBS * PRICE,) and possible == (0,)


async def test_the_stores_budget_is_every_workers_budget_stop(postgres_url: str) -> None:
    clock = FakeClock()
    api = Api(postgres_url, clock)
    stores = [await PostgresStore.open(postgres_url, budget_micro_usd=5 * PRICE) for _ in "ab"]
    try:
        b = make_batch(postgres_url, 20)
        engines = [engine(s, await s.batch(b), api, clock) for s in stores]
        outcomes = await asyncio.wait_for(asyncio.gather(*(e.run() for e in engines)), 60)
    finally:
        for store in stores:
            await store.aclose()
    assert [o.exit_code for o in outcomes] == [ExitCode.BUDGET, ExitCode.BUDGET]
    assert all(o.reason.startswith("budget:") for o in outcomes)
    states = dict(table(postgres_url, "SELECT state, count(*) FROM job GROUP BY state"))
    assert states == {"succeeded": 5, "queued": 15}
    (charged,) = table(postgres_url, "SELECT sum(amount_micro_usd) FROM charge "
                       "WHERE kind = 'charge'")  # fmt: skip
    assert charged == (5 * PRICE,)
