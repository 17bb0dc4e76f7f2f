"""The run engine on ``PostgresStore``: two engines, two workers, one batch.

The real ``RunEngine`` (submitter, poller, collector) on a real PostgreSQL, against a
stand-in for the API's two calls that answers a replayed idempotency key with the run
it made for it, on virtual time. Every job succeeds once, every POST finds its intent
committed, a lost answer is resent with its key and paid once, and the ledger adds up,
whichever worker took which job. (``--db postgresql://`` is not wired into the runner
yet: this is the seam it will use.)
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from batchgen.clock import FakeClock, iso_utc
from batchgen.engine.budget import Budget
from batchgen.engine.dispatcher import EngineConfig, Outcome, RunEngine
from batchgen.engine.schedule import DurationModel, PollPolicy
from batchgen.errors import ExitCode, RunbaseError, TransportError
from batchgen.retry import RetryPolicy
from batchgen.runbase.answers import Run
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.store.pg.store import PostgresStore
from batchgen.store.records import JobChanges, JobRecord
from tests.support.answers import api_run
from tests.support.pgkit import sql

JOBS = 60
PRICE = 484_000
RUN_S = 30.0


@dataclass
class Api:
    """``create_run`` / ``get_run`` as the service answers them, on virtual time."""

    url: str
    clock: FakeClock
    #: raised by the next POSTs after the run is made (an answer lost on the way back)
    lost: list[RunbaseError] = field(default_factory=list)
    runs: dict[str, tuple[float, str]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    posts: Counter[str] = field(default_factory=Counter)
    #: the stored state of the job at each POST
    states: Counter[str] = field(default_factory=Counter)

    async def create_run(
        self, model: str, input: dict[str, Any], *, idempotency_key: str, priority: int = 1
    ) -> Run:
        (row,) = sql(self.url, "SELECT state FROM job WHERE idem_key = %(k)s",
                     {"k": idempotency_key})  # fmt: skip
        self.states[row["state"]] += 1
        self.posts[idempotency_key] += 1
        run_id = self.by_key.setdefault(idempotency_key, f"run_{len(self.by_key)}")
        self.runs.setdefault(run_id, (self.clock.now(), idempotency_key))
        if self.lost:
            raise self.lost.pop()
        return self._answer(run_id)

    async def get_run(
        self, run_id: str, *, priority: int = 0, on_sent: Callable[[bool], None] | None = None
    ) -> Run:
        if on_sent is not None:
            on_sent(True)
        return self._answer(run_id)

    def _answer(self, run_id: str) -> Run:
        created, _ = self.runs[run_id]
        if self.clock.now() >= created + RUN_S:
            done = iso_utc(created + RUN_S)
            return api_run(run_id, "succeeded", PRICE, [f"https://f/{run_id}.mp4"],
                       iso_utc(created), done)  # fmt: skip
        return api_run(run_id, "running", PRICE, [], iso_utc(created))


async def collect(
    job: JobRecord, urls: list[str], refresh: Callable[[], Awaitable[list[str]]]
) -> JobChanges:
    return {"output_paths": (f"{job.idx}.mp4",), "checksums": (urls[0],)}


async def test_two_engines_share_one_postgresql_batch(postgres_url: str) -> None:
    stores = [await PostgresStore.open(postgres_url) for _ in range(2)]
    try:
        (row,) = sql(
            postgres_url,
            "INSERT INTO batch (name, model, manifest_path, manifest_sha256, out_dir, "
            "filename_template, created_at, updated_at) VALUES ('nightly', "
            "'bytedance/seedance-1-pro', '', '', 'out', '{index}', 0, 0) RETURNING id",
        )
        b = int(row["id"])
        sql(postgres_url, "INSERT INTO job (batch_id, key, idx, input_json, updated_at) "
            "SELECT %(b)s, 'key' || i, i, %(input)s, 0 FROM generate_series(0, %(n)s - 1) i",
            {"b": b, "n": JOBS, "input": json.dumps({"prompt": "a fox"})})  # fmt: skip
        clock = FakeClock()
        api = Api(postgres_url, clock, lost=[TransportError("reset", sent=True)])

        async def run(store: PostgresStore) -> Outcome:
            engine = RunEngine(
                store, await store.batch(b), client=api,
                limiter=RequestLimiter(20, 10.0, clock=clock), collect=collect,
                materialize=lambda x: x, config=EngineConfig(page_size=10, concurrency=4),
                budget=Budget(None), durations=DurationModel(PollPolicy(min_interval_s=1.0)),
                retry=RetryPolicy(base_s=1.0, cap_s=8.0, rng=random.Random(7)), clock=clock,
            )  # fmt: skip
            return await engine.run()

        outcomes = await asyncio.wait_for(asyncio.gather(*(run(s) for s in stores)), 120)
        assert [o.exit_code for o in outcomes] == [ExitCode.OK, ExitCode.OK]
    finally:
        for store in stores:
            await store.aclose()
    with psycopg.connect(postgres_url) as conn:
        states: dict[str, int] = dict(
            conn.execute("SELECT state, count(*) FROM job GROUP BY state").fetchall()
        )
        charged = conn.execute("SELECT sum(amount_micro_usd) FROM charge "
                               "WHERE kind = 'charge'").fetchone()  # fmt: skip
        possible = conn.execute("SELECT coalesce(sum(amount_micro_usd), 0) FROM charge "
                                "WHERE kind = 'possible'").fetchone()  # fmt: skip
    assert states == {"succeeded": JOBS}
    assert api.states == Counter({"submitting": JOBS + 1})  # every POST after its intent
    assert len(api.runs) == JOBS  # the lost answer was resent with its key: one run
    assert sorted(api.posts.values()) == [1] * (JOBS - 1) + [2]
    assert charged == (JOBS * PRICE,) and possible == (0,)
