"""One POST in flight per key (issue 12 point 1): several keys submit at once when the
run allows it (``posts_in_flight``; the default, 1, keeps one POST per process).

The real engine with a pool of four real ``RunbaseClient``s against one simulator that
knows the four keys; every run-creating POST is answered late (``slow_rate``), so POSTs
overlap whenever the engine lets them. Each key's client is wrapped in a counter that
passes every call through (``Counting``): what was in flight at once, per key and per
job. The budget test runs on SQLite (the engine's reservations) and on PostgreSQL (the
store's check in the intent's transaction), with the intents of four keys racing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from batchgen.engine.budget import Budget
from batchgen.engine.dispatcher import EngineConfig, Outcome, RunEngine
from batchgen.engine.keys import KeyPool, PoolKey
from batchgen.engine.schedule import DurationModel, PollPolicy
from batchgen.errors import ExitCode
from batchgen.retry import RetryPolicy
from batchgen.run.runner import arun_batch
from batchgen.runbase.answers import Run
from batchgen.runbase.client import RunbaseClient
from batchgen.runbase.models import load_model
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.runbase.shared_window import key_fingerprint
from batchgen.sim import Simulator
from batchgen.store.interface import JobStore
from batchgen.store.pg.store import PostgresStore
from batchgen.store.sqlite_store import SqliteStore
from tests.support.engine import MODEL, bid, make_batch, prompts, simple_collect, tiny_sim_config
from tests.support.pgkit import sql
from tests.support.runs import opts

RATE = (20, 1.0)
KEYS = [f"sk-posts-{i}-{'p' * 24}" for i in range(4)]
PRICE = load_model(MODEL).price_micro_usd(prompts(1)[0])


@dataclass
class InFlight:
    """POSTs in flight: at once, per key, per job (idempotency key), and the most seen."""

    now: int = 0
    most: int = 0
    per_key: Counter[str] = field(default_factory=Counter)
    per_job: Counter[str] = field(default_factory=Counter)
    key_most: int = 0
    job_most: int = 0
    sent: Counter[str] = field(default_factory=Counter)

    def start(self, key: str, job: str) -> None:
        self.now += 1
        self.per_key[key] += 1
        self.per_job[job] += 1
        self.sent[job] += 1
        self.most = max(self.most, self.now)
        self.key_most = max(self.key_most, self.per_key[key])
        self.job_most = max(self.job_most, self.per_job[job])

    def end(self, key: str, job: str) -> None:
        self.now -= 1
        self.per_key[key] -= 1
        self.per_job[job] -= 1


class Counting:
    """A key's real client, every call passed through; its POSTs counted in flight."""

    def __init__(self, name: str, client: RunbaseClient, seen: InFlight) -> None:
        self.name, self.client, self.seen = name, client, seen

    async def create_run(
        self, model: str, input: dict[str, Any], *, idempotency_key: str, priority: int = 1
    ) -> Run:
        self.seen.start(self.name, idempotency_key)
        try:
            return await self.client.create_run(
                model, input, idempotency_key=idempotency_key, priority=priority
            )
        finally:
            self.seen.end(self.name, idempotency_key)

    async def get_run(
        self, run_id: str, *, priority: int = 0, on_sent: Callable[[bool], None] | None = None
    ) -> Run:
        return await self.client.get_run(run_id, priority=priority, on_sent=on_sent)


def sim_config() -> Any:
    return tiny_sim_config(keys=list(KEYS), rate=RATE, time_scale=0.002, slow_rate=1.0,
                           slow_s=0.05, seed=3)  # fmt: skip


async def run_pool(
    store: JobStore,
    batch_id: int,
    sim: Simulator,
    out: Path,
    *,
    budget_micro_usd: int | None = None,
    during: Callable[[InFlight], Awaitable[None]] | None = None,
    posts: int = len(KEYS),
) -> tuple[Outcome, RunEngine, InFlight]:
    seen = InFlight()
    async with AsyncExitStack() as stack:
        files = await stack.enter_async_context(aiohttp.ClientSession())
        pooled = []
        for key in KEYS:
            limiter = RequestLimiter(*RATE)
            client = RunbaseClient(sim.base_url, key, limiter=limiter, timeout_s=5)
            await stack.enter_async_context(client)
            fingerprint = key_fingerprint(key)
            pooled.append(PoolKey(fingerprint, Counting(fingerprint, client, seen), limiter))
        pool = KeyPool(pooled)
        engine = RunEngine(
            store, await store.batch(batch_id), client=pool.first.client,
            limiter=pool.first.limiter, keys=pool, collect=simple_collect(files, out),
            materialize=lambda x: x, config=EngineConfig(concurrency=40, posts_in_flight=posts),
            budget=Budget(budget_micro_usd), durations=DurationModel(PollPolicy(0.85, 0.25, 0.01)),
            retry=RetryPolicy(base_s=0.01, cap_s=0.05, key_pool=True),
        )  # fmt: skip
        task = asyncio.ensure_future(engine.run())
        if during is not None:
            await during(seen)
        outcome = await asyncio.wait_for(task, 30)
    return outcome, engine, seen


@asynccontextmanager
async def sqlite_batch(tmp_path: Path, jobs: int) -> AsyncIterator[tuple[JobStore, int]]:
    db, batch = make_batch(tmp_path / "s.db", prompts(jobs), tmp_path / "out")
    async with aclosing(SqliteStore(db)) as store:
        yield store, bid(batch)


@asynccontextmanager
async def postgres_batch(url: str, jobs: int) -> AsyncIterator[tuple[JobStore, int]]:
    # the store's own check: the spend of every worker, summed in the intent's transaction
    store = await PostgresStore.open(url, budget_micro_usd=5 * PRICE + PRICE // 2)
    (row,) = sql(url, "INSERT INTO batch (name, model, manifest_path, manifest_sha256, "
                 "out_dir, filename_template, created_at, updated_at) VALUES ('pooled', "
                 "%(model)s, '', '', 'out', '{index}', 0, 0) RETURNING id",
                 {"model": MODEL})  # fmt: skip
    batch_id = int(row["id"])
    sql(url, "INSERT INTO job (batch_id, key, idx, input_json, updated_at) SELECT %(b)s, "
        "'key' || i, i, json_build_object('prompt', 'a red fox, take ' || i)::text, 0 "
        "FROM generate_series(0, %(n)s - 1) i", {"b": batch_id, "n": jobs})  # fmt: skip
    async with aclosing(store):
        yield store, batch_id


async def test_posts_of_different_keys_overlap_and_one_job_never_has_two(
    tmp_path: Path,
) -> None:
    jobs = 24
    held: list[int] = []

    async def watch(seen: InFlight) -> None:
        while sim.stats()["runs_succeeded"] < jobs and len(held) < 5000:
            held.append(sim.slow_answers)  # POSTs the service holds at this moment
            await asyncio.sleep(0.002)

    async with Simulator(sim_config()) as sim, sqlite_batch(tmp_path, jobs) as (store, b):
        outcome, _, seen = await run_pool(store, b, sim, tmp_path / "out", during=watch)
        stats = sim.stats()
    assert outcome.exit_code == ExitCode.OK, outcome.reason
    assert seen.most > 1 and max(held) > 1  # POSTs of different keys were in flight at once
    assert seen.key_most == 1  # one key: one POST at a time, in its limiter's order
    assert seen.job_most == 1 and set(seen.sent.values()) == {1}  # one POST per job, ever
    assert stats["runs_created"] == jobs and stats["idempotent_replays"] == 0
    assert all(k["runs_created"] > 0 and k["max_in_window"] <= RATE[0] for k in stats["keys"])


async def test_by_default_one_post_is_in_flight_per_process_whatever_the_keys(
    tmp_path: Path,
) -> None:
    """A kill -9 loses the answers of the POSTs in flight; a service ignoring idempotency
    keys then charges their resends again. One POST at a time bounds that to one."""
    jobs = 12
    async with Simulator(sim_config()) as sim, sqlite_batch(tmp_path, jobs) as (store, b):
        outcome, _, seen = await run_pool(
            store, b, sim, tmp_path / "out", posts=EngineConfig().posts_in_flight
        )
        stats = sim.stats()
    assert outcome.exit_code == ExitCode.OK, outcome.reason
    assert seen.most == 1 and sum(seen.sent.values()) == jobs
    # the keys still share the work: a POST goes with whichever key is free
    assert sum(1 for k in stats["keys"] if k["runs_created"] > 0) > 1


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
async def test_intents_of_several_keys_racing_never_pass_the_budget(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    jobs = 16
    async with Simulator(sim_config()) as sim:
        if where == "sqlite":  # the engine's reservations, taken as each POST starts
            batch = sqlite_batch(tmp_path, jobs)
            limit: int | None = 5 * PRICE + PRICE // 2
        else:  # the store refuses the intent (BudgetReached); the engine knows no limit
            batch = postgres_batch(request.getfixturevalue("postgres_url"), jobs)
            limit = None
        async with batch as (store, b):
            outcome, _, seen = await run_pool(
                store, b, sim, tmp_path / "out", budget_micro_usd=limit
            )
            counts = {state: n for state, n in (await store.counts(b)).items() if n}
        stats = sim.stats()
    assert outcome.exit_code == ExitCode.BUDGET, outcome.reason
    assert seen.most > 1  # the intents did race
    assert stats["charged_micro_usd"] <= 5 * PRICE + PRICE // 2
    assert stats["runs_created"] == 5  # exactly what fits: reservations are exact
    assert counts == {"succeeded": 5, "queued": jobs - 5}


async def test_a_key_emptied_while_its_post_is_in_flight_ends_the_batch_on_the_others(
    tmp_path: Path,
) -> None:
    jobs = 40

    async def empty_key_two(seen: InFlight) -> None:
        fingerprint = key_fingerprint(KEYS[1])
        while not (sim.stats()["keys"][1]["runs_created"] >= 2 and seen.per_key[fingerprint]):
            await asyncio.sleep(0.001)
        sim.state.empty_balance(2)

    async with Simulator(sim_config()) as sim, sqlite_batch(tmp_path, jobs) as (store, b):
        outcome, engine, _ = await run_pool(store, b, sim, tmp_path / "out", during=empty_key_two)
        counts = {state: n for state, n in (await store.counts(b)).items() if n}
        stats = sim.stats()
    assert outcome.exit_code in (ExitCode.OK, ExitCode.JOBS_FAILED), outcome.reason
    assert engine.state.keys.keys[1].refused is not None
    assert counts == {"succeeded": jobs}  # its paid runs still polled, the rest on the others
    assert stats["runs_created"] == jobs  # nothing paid twice


async def test_every_key_emptied_mid_run_stops_with_exit_3_and_polls_what_was_paid(
    tmp_path: Path,
) -> None:
    jobs = 40

    async def empty_all(seen: InFlight) -> None:
        while sim.stats()["runs_created"] < 6 or seen.now < 2:
            await asyncio.sleep(0.001)
        for n in range(1, len(KEYS) + 1):
            sim.state.empty_balance(n)

    async with Simulator(sim_config()) as sim, sqlite_batch(tmp_path, jobs) as (store, b):
        outcome, engine, _ = await run_pool(store, b, sim, tmp_path / "out", during=empty_all)
        counts = {state: n for state, n in (await store.counts(b)).items() if n}
        stats = sim.stats()
    assert outcome.exit_code == ExitCode.ACCOUNT, outcome.reason
    assert all(k.refused is not None for k in engine.state.keys.keys)
    paid = stats["runs_created"]
    assert 6 <= paid < jobs and counts.get("succeeded") == paid  # every paid run finished
    assert counts == {"succeeded": paid, "queued": jobs - paid}


@pytest.mark.parametrize("posts", [1, 4])
async def test_the_runs_posts_in_flight_reach_the_engine(tmp_path: Path, posts: int) -> None:
    """``--posts-in-flight`` (``RunOptions.posts_in_flight``) is what the engine keeps:
    the most POSTs the service held at once."""
    jobs = 12
    held: list[int] = [0]
    db, batch = make_batch(tmp_path / "s.db", prompts(jobs), tmp_path / "out")
    db.dispose()
    async with Simulator(sim_config()) as sim:

        async def watch() -> None:
            while True:
                held.append(sim.slow_answers)
                await asyncio.sleep(0.002)

        watcher = asyncio.ensure_future(watch())
        summary = await arun_batch(
            tmp_path / "s.db", api_key=KEYS[0], api_keys=KEYS[1:], batch=batch.name,
            options=opts(sim.base_url, rate=RATE, posts_in_flight=posts,
                         state_dir=tmp_path / "state"),
        )  # fmt: skip
        watcher.cancel()
    assert summary.exit_code == ExitCode.OK, summary.reason
    assert max(held) == posts
