"""A worker on a shared PostgreSQL batch ends when the batch does, not a takeover
period later.

The takeover look (claims of gone workers' jobs) comes every few seconds here, as it
does every third of a lease in a run; the count of the others' unfinished jobs a worker
waits for is refreshed at once when its own work is done, then every
``IDLE_COUNT_S`` (``engine.takeover.Lookout``). Before, its first count came before it
had claimed anything (every queued job counted as another's) and was refreshed only
every period: a lone worker stayed up to a period past its batch's end. Real
PostgreSQL, the real engine, a stand-in API whose runs take a fifth of a second, on the
real clock (the end is measured against the jobs' stored ``finished_at``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchgen.clock import SystemClock, iso_utc
from batchgen.engine.budget import Budget
from batchgen.engine.dispatcher import EngineConfig, Outcome, RunEngine
from batchgen.engine.schedule import DurationModel, PollPolicy
from batchgen.engine.takeover import IDLE_COUNT_S
from batchgen.errors import ExitCode
from batchgen.retry import RetryPolicy
from batchgen.runbase.answers import Run
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.store.pg.store import PostgresStore
from tests.integration.test_engine_postgres import PRICE, collect
from tests.integration.test_engine_postgres_takeover import make_batch
from tests.support.answers import api_run
from tests.support.pgkit import sql

#: the takeover look's period: far longer than the batch itself
PERIOD_S = 8.0
RUN_S = 0.2


@dataclass
class QuickApi:
    """The API's two calls: a run succeeds ``RUN_S`` after its POST."""

    runs: dict[str, float] = field(default_factory=dict)

    async def create_run(
        self, model: str, input: dict[str, Any], *, idempotency_key: str, priority: int = 1
    ) -> Run:
        self.runs.setdefault(idempotency_key, time.time())
        return self._answer(idempotency_key)

    async def get_run(
        self, run_id: str, *, priority: int = 0, on_sent: Callable[[bool], None] | None = None
    ) -> Run:
        if on_sent is not None:
            on_sent(True)
        return self._answer(run_id)

    def _answer(self, run_id: str) -> Run:
        created = self.runs[run_id]
        if time.time() < created + RUN_S:
            return api_run(run_id, "running", PRICE, [], iso_utc(created))
        urls = [f"https://f/{run_id}.mp4"]
        return api_run(run_id, "succeeded", PRICE, urls, iso_utc(created), iso_utc(time.time()))


async def work(store: PostgresStore, batch_id: int, api: QuickApi, concurrency: int) -> float:
    """Run one worker to its end; the wall time it ended at."""
    clock = SystemClock()
    engine = RunEngine(
        store, await store.batch(batch_id), client=api,
        limiter=RequestLimiter(1000, 1.0, clock=clock), collect=collect,
        materialize=lambda x: x, budget=Budget(None), clock=clock,
        config=EngineConfig(page_size=4, concurrency=concurrency, takeover_every_s=PERIOD_S),
        durations=DurationModel(PollPolicy(min_interval_s=0.05), prior=lambda _: RUN_S),
        retry=RetryPolicy(base_s=0.1, cap_s=0.5, rng=random.Random(7)),
    )  # fmt: skip
    outcome: Outcome = await engine.run()
    assert outcome.exit_code == ExitCode.OK, outcome
    return time.time()


def last_finished(url: str, batch_id: int) -> float:
    (row,) = sql(url, "SELECT count(*) AS n, max(finished_at) AS at FROM job "
                 "WHERE batch_id = %(b)s AND state = 'succeeded'", {"b": batch_id})  # fmt: skip
    assert row["n"] == 12
    return float(row["at"])


async def test_a_lone_worker_ends_with_its_batch_not_a_period_later(postgres_url: str) -> None:
    store = await PostgresStore.open(postgres_url)
    try:
        b = make_batch(postgres_url, 12)
        started = time.time()
        ended = await asyncio.wait_for(work(store, b, QuickApi(), 4), 30)
    finally:
        await store.aclose()
    last = last_finished(postgres_url, b)
    # its first count (before it claimed anything) said 12 jobs were others': it ends at
    # its own last job all the same, well inside the first period
    assert ended - last < 1.0 + IDLE_COUNT_S, (ended - last, last - started)
    assert ended - started < PERIOD_S / 2


async def test_two_workers_end_promptly_after_the_batchs_last_job(postgres_url: str) -> None:
    stores = [await PostgresStore.open(postgres_url) for _ in "ab"]
    try:
        b = make_batch(postgres_url, 12)
        api = QuickApi()
        # the fast one runs out of its own work first and waits for the slow one's jobs
        fast, slow = stores
        both = asyncio.gather(work(fast, b, api, 4), work(slow, b, api, 1))
        ends = await asyncio.wait_for(both, 30)
    finally:
        for store in stores:
            await store.aclose()
    last = last_finished(postgres_url, b)
    for ended in ends:
        assert ended - last < 1.0 + IDLE_COUNT_S, [e - last for e in ends]
