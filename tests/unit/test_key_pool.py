"""The key pool on the in-memory store and virtual time (``engine.keys``).

Each fake key sees only the runs it created (as the API does: a run is visible to its
key only), so a job polled with any other key would be lost: every success here shows
the job was followed with the key that made its run.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from batchgen.clock import FakeClock, iso_utc
from batchgen.engine.budget import Budget
from batchgen.engine.dispatcher import EngineConfig, Outcome, RunEngine
from batchgen.engine.keys import KeyPool, PoolKey
from batchgen.engine.schedule import DurationModel, PollPolicy
from batchgen.errors import AuthError, ExitCode, PaymentRequired, RunNotFound
from batchgen.retry import RetryPolicy
from batchgen.runbase.answers import Run
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.states import JobState
from batchgen.store.memory import InMemoryStore
from batchgen.store.records import JobChanges, JobRecord
from tests.support.answers import api_run

MODEL = "bytedance/seedance-1-pro"
PRICE = 484_000


@dataclass
class KeyApi:
    """One API key: its own runs; ``broke`` answers POSTs 402, ``revoked`` all 401."""

    name: str
    clock: FakeClock
    limiter: RequestLimiter
    run_s: float = 20.0
    broke: bool = False
    revoked: bool = False
    #: runs made before the account refuses new ones (402)
    refuse_after: int | None = None
    posts: int = 0
    gets: int = 0
    runs: dict[str, float] = field(default_factory=dict)

    async def create_run(
        self, model: str, input: dict[str, Any], *, idempotency_key: str, priority: int = 1
    ) -> Run:
        await self.limiter.acquire(priority)
        self.posts += 1
        if self.revoked:
            raise AuthError("invalid API key", code="invalid_api_key")
        if self.broke or (self.refuse_after is not None and len(self.runs) >= self.refuse_after):
            raise PaymentRequired("insufficient balance", code="insufficient_balance")
        run_id = f"{self.name}-run-{len(self.runs)}"
        self.runs[run_id] = self.clock.now()
        return self._answer(run_id)

    async def get_run(self, run_id: str, *, priority: int = 0, on_sent: Any = None) -> Run:
        await self.limiter.acquire(priority)
        if on_sent is not None:
            on_sent(True)
        self.gets += 1
        if self.revoked:
            raise AuthError("invalid API key", code="invalid_api_key")
        if run_id not in self.runs:
            raise RunNotFound(f"no run {run_id}")  # another key's run: invisible
        return self._answer(run_id)

    def _answer(self, run_id: str) -> Run:
        created = self.runs[run_id]
        if self.clock.now() >= created + self.run_s:
            done = iso_utc(created + self.run_s)
            return api_run(
                run_id, "succeeded", PRICE, [f"https://f/{run_id}"], iso_utc(created), done
            )
        return api_run(run_id, "running", PRICE, [], iso_utc(created))


async def collect(job: JobRecord, urls: list[str], refresh: Any) -> JobChanges:
    return {"output_paths": (f"{job.idx}.mp4",), "checksums": (urls[0],)}


@dataclass
class Pool:
    """A batch of ``n`` jobs and ``keys`` fake keys, each with its limiter."""

    n: int = 12
    keys: int = 3
    clock: FakeClock = field(default_factory=FakeClock)
    store: InMemoryStore = field(default_factory=InMemoryStore)

    def __post_init__(self) -> None:
        self.batch = self.store.add_batch("pooled", MODEL)
        for i in range(self.n):
            self.store.add_job(self.batch.id, f"key{i}", i, input={"prompt": f"owl {i}"})
        self.apis = [
            KeyApi(f"k{i}", self.clock, RequestLimiter(20, 10.0, clock=self.clock))
            for i in range(self.keys)
        ]
        self.pool = KeyPool([PoolKey(f"fp{i}", a, a.limiter) for i, a in enumerate(self.apis)])

    async def run(self) -> tuple[Outcome, RunEngine]:
        first = self.pool.first
        engine = RunEngine(
            self.store,
            await self.store.batch(self.batch.id),
            client=first.client,
            limiter=first.limiter,
            keys=self.pool,
            collect=collect,
            materialize=lambda x: x,
            config=EngineConfig(concurrency=30),
            budget=Budget(None),
            durations=DurationModel(PollPolicy(min_interval_s=1.0)),
            retry=RetryPolicy(base_s=1.0, cap_s=8.0, rng=random.Random(3), key_pool=True),
            clock=self.clock,
        )
        return await engine.run(), engine

    def by_state(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self.store.jobs.values():
            out[job.state.value] = out.get(job.state.value, 0) + 1
        return out


def test_pick_prefers_a_key_with_room_and_skips_refused_keys() -> None:
    clock = FakeClock()
    limiters = [RequestLimiter(2, 10.0, clock=clock, burst=2) for _ in range(3)]
    pool = KeyPool([PoolKey(f"fp{i}", object(), lim) for i, lim in enumerate(limiters)])  # type: ignore[arg-type]
    limiters[0]._grant(clock.monotonic())
    limiters[0]._grant(clock.monotonic())
    limiters[1]._grant(clock.monotonic())
    picked = pool.pick()
    assert picked is not None and picked.fingerprint == "fp2"  # the least busy
    assert pool.refuse(pool.keys[2], "402 insufficient balance") == "go_on"
    picked = pool.pick()
    assert picked is not None and picked.fingerprint == "fp1"  # room before none
    assert pool.refuse(pool.keys[1], "402") == "go_on"
    assert pool.refuse(pool.keys[0], "402") == "soft"  # none may submit; all can poll
    assert pool.pick() is None
    assert pool.refuse(pool.keys[0], "401", revoked=True) == "soft"
    assert all(k.refused for k in pool.keys)


async def test_every_job_is_bound_to_and_polled_with_the_key_that_made_its_run() -> None:
    bench = Pool(n=12, keys=3)
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.OK, outcome.reason
    assert bench.by_state() == {"succeeded": 12}
    fps = {j.key_fingerprint for j in bench.store.jobs.values()}
    assert fps == {"fp0", "fp1", "fp2"}  # every key took a share
    for row in bench.store.ledger:
        job = bench.store.jobs[row.job_id]
        fp = job.key_fingerprint or ""
        assert row.key_fingerprint == fp
        assert row.run_id is not None and row.run_id.startswith(f"k{fp[2:]}-")


async def test_a_key_refused_402_stops_submitting_and_its_runs_are_still_polled() -> None:
    bench = Pool(n=12, keys=3)
    bench.apis[1].refuse_after = 1
    outcome, engine = await bench.run()
    assert outcome.exit_code == ExitCode.OK, outcome.reason
    assert bench.by_state() == {"succeeded": 12}
    assert len(bench.apis[1].runs) == 1 and bench.apis[1].gets >= 1  # its paid run polled
    assert bench.apis[1].posts == 2  # one refused, then set aside
    assert engine.state.keys.keys[1].refused is not None


async def test_a_key_revoked_401_strands_its_paid_runs_never_resubmitted() -> None:
    bench = Pool(n=9, keys=3)
    api = bench.apis[2]

    async def revoke_later() -> None:
        while len(api.runs) < 2:
            await bench.clock.sleep(0.5)
        api.revoked = True

    task = asyncio.ensure_future(revoke_later())
    outcome, _ = await bench.run()
    task.cancel()
    stranded = [j for j in bench.store.jobs.values() if j.key_fingerprint == "fp2"]
    assert outcome.exit_code == ExitCode.JOBS_FAILED, outcome.reason
    assert "fp2" in outcome.reason
    assert all(j.state is JobState.RUNNING for j in stranded)  # a resume with it polls them
    total_runs = sum(len(a.runs) for a in bench.apis)
    assert total_runs == 9  # nothing paid twice
    others = [j for j in bench.store.jobs.values() if j.key_fingerprint != "fp2"]
    assert all(j.state is JobState.SUCCEEDED for j in others)


async def test_jobs_of_a_key_no_longer_given_are_held_not_resubmitted() -> None:
    bench = Pool(n=4, keys=2)
    job = next(iter(bench.store.jobs.values()))
    await bench.store.move(
        job, JobState.SUBMITTING, at=0.0, attempts=1, idem_key="k", key_fingerprint="gone"
    )
    moved = bench.store.jobs[job.id]
    await bench.store.move(moved, JobState.RUNNING, at=0.0, run_id="gone-run-0")
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.JOBS_FAILED and "gone" in outcome.reason
    assert bench.store.jobs[job.id].state is JobState.RUNNING
    assert sum(a.posts for a in bench.apis) == 3  # the three others only


async def test_no_key_may_submit_stops_the_batch_with_exit_3() -> None:
    bench = Pool(n=5, keys=2)
    for api in bench.apis:
        api.broke = True
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.ACCOUNT, outcome.reason
    assert bench.by_state() == {"queued": 5}


async def test_a_job_in_doubt_is_resent_only_with_its_key_and_held_when_it_is_refused() -> None:
    bench = Pool(n=4, keys=2)
    bench.apis[0].broke = True  # fp0 answers 402 from now on
    job = next(iter(bench.store.jobs.values()))
    await bench.store.move(
        job, JobState.SUBMITTING, at=0.0, attempts=1, idem_key="lost", key_fingerprint="fp0"
    )
    await bench.store.move(bench.store.jobs[job.id], JobState.IN_DOUBT, at=0.0)
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.JOBS_FAILED and "fp0" in outcome.reason
    held = bench.store.jobs[job.id]
    assert held.key_fingerprint == "fp0" and held.run_id is None  # never sent with fp1
    assert len(bench.apis[1].runs) == 3  # the three others, on the key that may submit


async def test_a_queued_resend_of_a_key_no_longer_given_is_held_once_and_the_run_ends() -> None:
    bench = Pool(n=3, keys=2)
    job = next(iter(bench.store.jobs.values()))
    await bench.store.move(
        job, JobState.SUBMITTING, at=0.0, attempts=1, idem_key="after-a-500", key_fingerprint="gone"
    )
    await bench.store.move(bench.store.jobs[job.id], JobState.QUEUED, at=0.0)
    outcome, engine = await asyncio.wait_for(bench.run(), 10)
    assert outcome.exit_code == ExitCode.JOBS_FAILED and "gone" in outcome.reason
    assert bench.store.jobs[job.id].state is JobState.QUEUED  # a resume with it sends it
    assert sum(a.posts for a in bench.apis) == 2 and list(engine.state.keys.stranded) == [job.id]


async def test_a_download_whose_links_only_a_missing_key_can_refresh_is_held() -> None:
    bench = Pool(n=2, keys=2)
    job = next(iter(bench.store.jobs.values()))
    await bench.store.move(
        job, JobState.SUBMITTING, at=0.0, attempts=1, idem_key="k", key_fingerprint="gone"
    )
    await bench.store.move(bench.store.jobs[job.id], JobState.RUNNING, at=0.0, run_id="r-0")
    await bench.store.move(bench.store.jobs[job.id], JobState.DOWNLOADING, at=0.0)
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.JOBS_FAILED and "gone" in outcome.reason
    assert bench.store.jobs[job.id].state is JobState.DOWNLOADING  # not failed as lost
    assert sum(a.gets for a in bench.apis) >= 1 and all("r-0" not in a.runs for a in bench.apis)
