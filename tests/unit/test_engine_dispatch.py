"""The run engine on the in-memory store and virtual time, against a fake transport.

No simulator, no socket, no sleep: ``FakeRunbase`` stands in for the two calls of
``RunbaseClient`` the engine makes (the transport; the HTTP layer has its own tests),
its runs finish after ``run_s`` seconds of ``FakeClock`` time, and the dispatcher
waits on that clock. The integration tier runs the same engine on the real simulator.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from batchgen.clock import FakeClock, iso_utc
from batchgen.engine.budget import Budget
from batchgen.engine.dispatcher import EngineConfig, Outcome, RunEngine
from batchgen.engine.schedule import DurationModel, PollPolicy
from batchgen.errors import (
    AuthError,
    ExitCode,
    Forbidden,
    InvalidRequest,
    PaymentRequired,
    RunbaseError,
    RunNotFound,
    ServerError,
    StateWriteError,
    TransportError,
)
from batchgen.files.download import DownloadError
from batchgen.retry import RetryPolicy
from batchgen.runbase.answers import Run
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.states import JobState
from batchgen.store.memory import InMemoryStore
from batchgen.store.records import DOWNLOAD_FAILED, JobChanges, JobRecord
from tests.support.answers import api_run

MODEL = "bytedance/seedance-1-pro"
PRICE = 484_000  # the model's price of the default input (1080p, 5 s)


@dataclass
class FakeRunbase:
    """``create_run`` and ``get_run`` as the API answers them; errors are queued."""

    store: InMemoryStore
    clock: FakeClock
    run_s: float = 30.0
    #: raised by the next POSTs / GETs, in order, before any answer
    post_errors: deque[RunbaseError] = field(default_factory=deque)
    get_errors: deque[RunbaseError] = field(default_factory=deque)
    #: once this many runs were created, the account refuses new ones (402)
    refuse_after: int | None = None
    #: (job state when the POST was sent, its idempotency key)
    posts: list[tuple[JobState, str]] = field(default_factory=list)
    gets: int = 0
    _runs: dict[str, tuple[float, str]] = field(default_factory=dict)
    _by_key: dict[str, str] = field(default_factory=dict)

    async def create_run(
        self, model: str, input: dict[str, Any], *, idempotency_key: str, priority: int = 1
    ) -> Run:
        sent = next(j for j in self.store.jobs.values() if j.idem_key == idempotency_key)
        self.posts.append((sent.state, idempotency_key))
        if self.refuse_after is not None and len(self._runs) >= self.refuse_after:
            raise PaymentRequired("insufficient balance", code="insufficient_balance")
        run_id = self._by_key.get(idempotency_key) or f"run_{len(self._runs)}"
        if run_id not in self._runs:  # a replay of the same key answers the same run
            self._runs[run_id] = (self.clock.now(), idempotency_key)
            self._by_key[idempotency_key] = run_id
        if self.post_errors:
            raise self.post_errors.popleft()
        return self._answer(run_id)

    async def get_run(
        self, run_id: str, *, priority: int = 0, on_sent: Callable[[bool], None] | None = None
    ) -> Run:
        if on_sent is not None:
            on_sent(True)
        self.gets += 1
        if self.get_errors:
            raise self.get_errors.popleft()
        return self._answer(run_id)

    def _answer(self, run_id: str) -> Run:
        created, _ = self._runs[run_id]
        urls = [f"https://files.example/{run_id}.mp4"]
        if self.clock.now() >= created + self.run_s:
            done = iso_utc(created + self.run_s)
            return api_run(run_id, "succeeded", PRICE, urls, iso_utc(created), done)
        return api_run(run_id, "running", PRICE, [], iso_utc(created))


@dataclass
class Files:
    """The collect step: the first ``broken`` tries fail as a file host's would."""

    broken: int = 0
    tries: int = 0

    async def __call__(
        self, job: JobRecord, urls: list[str], refresh: Callable[[], Awaitable[list[str]]]
    ) -> JobChanges:
        self.tries += 1
        if self.tries <= self.broken:
            raise DownloadError("cut short, again and again", index=0)
        return {"output_paths": (f"{job.idx}.mp4",), "checksums": (urls[0],)}


class FullDisk(InMemoryStore):
    """A store whose disk fills up once a job is to be recorded ``running``."""

    async def move(self, job: JobRecord, new: JobState, **kw: Any) -> JobRecord | None:
        if new is JobState.RUNNING:
            raise StateWriteError("state database s.db: cannot write (database or disk is full)")
        return await super().move(job, new, **kw)


@dataclass
class Bench:
    """One batch of ``n`` jobs in an in-memory store, and an engine to run it."""

    n: int = 5
    config: EngineConfig = field(default_factory=EngineConfig)
    budget_usd: float | None = None
    clock: FakeClock = field(default_factory=FakeClock)
    store: InMemoryStore = field(default_factory=InMemoryStore)
    files: Files = field(default_factory=Files)

    def __post_init__(self) -> None:
        self.batch = self.store.add_batch("nightly", MODEL)
        for i in range(self.n):
            self.store.add_job(self.batch.id, f"key{i}", i, input={"prompt": f"fox {i}"})
        self.api = FakeRunbase(self.store, self.clock)

    async def run(self) -> tuple[Outcome, RunEngine]:
        limit = None if self.budget_usd is None else round(self.budget_usd * 1e6)
        engine = RunEngine(
            self.store,
            await self.store.batch(self.batch.id),
            client=self.api,
            limiter=RequestLimiter(20, 10.0, clock=self.clock),
            collect=self.files,
            materialize=lambda x: x,
            config=self.config,
            budget=Budget(limit),
            durations=DurationModel(PollPolicy(min_interval_s=1.0)),
            retry=RetryPolicy(base_s=1.0, cap_s=8.0, rng=random.Random(7)),
            clock=self.clock,
        )
        return await engine.run(), engine

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self.store.jobs.values():
            out[job.state.value] = out.get(job.state.value, 0) + 1
        return out

    def charged(self) -> int:
        return sum(r.amount_micro_usd for r in self.store.ledger if r.kind == "charge")


async def test_a_batch_runs_to_done_on_virtual_time() -> None:
    bench = Bench(n=5)
    started, wall = bench.clock.monotonic(), time.monotonic()
    outcome, engine = await bench.run()
    assert outcome.exit_code == ExitCode.OK, outcome.reason
    assert bench.states() == {"succeeded": 5}
    assert engine.counts["succeeded"] == 5
    assert len(bench.api.posts) == 5 and bench.charged() == 5 * PRICE
    # the runs took 30 s of the fake clock; the test took far less than that
    assert bench.clock.monotonic() - started >= 30.0
    assert time.monotonic() - wall < 5.0
    job = next(j for j in bench.store.jobs.values() if j.idx == 0)
    assert [e.to_state for e in bench.store.events if e.job_id == job.id] == [
        JobState.SUBMITTING,
        JobState.RUNNING,
        JobState.DOWNLOADING,
        JobState.SUCCEEDED,
    ]
    assert job.output_paths == ("0.mp4",) and job.run_id is not None


async def test_the_intent_is_committed_before_its_post() -> None:
    bench = Bench(n=3)
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.OK
    # every POST found its job already submitting, with the key it was sent with
    assert [state for state, _ in bench.api.posts] == [JobState.SUBMITTING] * 3
    assert len({key for _, key in bench.api.posts}) == 3


async def test_a_lost_answer_is_resent_with_the_same_key_and_paid_once() -> None:
    bench = Bench(n=2)
    bench.api.post_errors.append(TransportError("reset", sent=True))
    outcome, engine = await bench.run()
    assert outcome.exit_code == ExitCode.OK, outcome.reason
    assert len(engine.in_doubt_seen) == 1
    job = bench.store.jobs[next(iter(engine.in_doubt_seen))]
    # sent twice with one key (the service answers the same run), one attempt
    assert [key for _, key in bench.api.posts].count(job.idem_key or "") == 2
    assert job.attempts == 1 and len(bench.api.posts) == 3
    possible = [r.amount_micro_usd for r in bench.store.ledger if r.kind == "possible"]
    assert sum(possible) == 0 and len(possible) == 2  # counted while in doubt, then settled
    assert bench.charged() == 2 * PRICE


async def test_a_refused_request_fails_its_job_and_the_rest_go_on() -> None:
    bench = Bench(n=3)
    bench.api.post_errors.append(InvalidRequest("prompt too long", code="invalid_input"))
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.JOBS_FAILED
    assert bench.states() == {"failed": 1, "succeeded": 2}
    failed = next(j for j in bench.store.jobs.values() if j.state is JobState.FAILED)
    assert failed.error_code == "invalid_input" and failed.idem_key is None


async def test_a_server_error_is_tried_again_after_the_backoff() -> None:
    bench = Bench(n=1)
    bench.api.post_errors.extend([ServerError("busy", status=503)] * 2)
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.OK, outcome.reason
    assert len(bench.api.posts) == 3 and bench.states() == {"succeeded": 1}
    # two failures counted against the attempt, then reset by the run it made
    assert bench.store.jobs[min(bench.store.jobs)].errors == 0


async def test_server_errors_past_the_attempts_fail_the_job() -> None:
    bench = Bench(n=1, config=EngineConfig(max_attempts=3))
    bench.api.post_errors.extend([ServerError("busy", status=503)] * 3)
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.JOBS_FAILED
    job = next(iter(bench.store.jobs.values()))
    assert job.state is JobState.FAILED and job.errors == 3


async def test_a_refused_payment_stops_submitting_but_paid_runs_finish() -> None:
    bench = Bench(n=4, config=EngineConfig(concurrency=10))
    bench.api.run_s = 60.0
    bench.api.refuse_after = 2
    outcome, engine = await bench.run()
    assert outcome.exit_code == ExitCode.ACCOUNT
    assert bench.states() == {"succeeded": 2, "queued": 2}
    assert engine.stopping and "account" in engine.stopping


async def test_a_refused_key_on_a_poll_stops_at_once() -> None:
    bench = Bench(n=2)
    bench.api.get_errors.append(AuthError("key disabled", code="unauthorized"))
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.ACCOUNT
    assert "succeeded" not in bench.states()


async def test_a_lost_run_is_resubmitted_as_a_new_attempt_when_asked() -> None:
    bench = Bench(n=1, config=EngineConfig(on_lost="resubmit"))
    bench.api.get_errors.append(RunNotFound("no such run", code="run_not_found"))
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.OK, outcome.reason
    keys = [key for _, key in bench.api.posts]
    assert len(keys) == 2 and keys[0] != keys[1]  # a new attempt: a new key, paid again
    assert next(iter(bench.store.jobs.values())).attempts == 2


async def test_a_lost_run_fails_its_job_by_default() -> None:
    bench = Bench(n=1)
    bench.api.get_errors.append(RunNotFound("no such run", code="run_not_found"))
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.JOBS_FAILED
    assert bench.states() == {"failed": 1}


async def test_the_budget_stops_submitting_before_it_is_passed() -> None:
    bench = Bench(n=5, budget_usd=2 * PRICE / 1e6 + 0.01)
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.BUDGET
    assert bench.states() == {"succeeded": 2, "queued": 3}
    assert bench.charged() == 2 * PRICE


async def test_a_job_canceled_elsewhere_is_left_alone() -> None:
    bench = Bench(n=3)
    first = min(bench.store.jobs)
    bench.store.set_state(first, JobState.CANCELED)
    bench.store.batches[bench.batch.id] = dataclasses.replace(bench.batch, canceled=True)
    outcome, _ = await bench.run()
    assert bench.api.posts == []  # canceled before the first turn: nothing is sent
    assert outcome.exit_code == ExitCode.JOBS_FAILED
    assert bench.store.jobs[first].state is JobState.CANCELED


async def test_a_download_that_keeps_failing_fails_its_job_and_keeps_its_run() -> None:
    bench = Bench(n=1, config=EngineConfig(max_attempts=3), files=Files(broken=5))
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.JOBS_FAILED
    job = next(iter(bench.store.jobs.values()))
    assert job.state is JobState.FAILED and job.error_code == DOWNLOAD_FAILED
    assert bench.files.tries == 3 and job.run_id is not None  # paid: retry fetches again
    assert len(bench.api.posts) == 1


async def test_a_download_that_fails_once_is_tried_again_later() -> None:
    bench = Bench(n=1, files=Files(broken=1))
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.OK, outcome.reason
    assert bench.files.tries == 2 and len(bench.api.posts) == 1


async def test_a_refusal_on_polls_stops_submitting_then_the_batch_if_it_lasts() -> None:
    # one answer to a 403 everywhere: no new POST, the paid run is polled again...
    bench = Bench(n=1)
    bench.api.get_errors.append(Forbidden("spend cap", code="api_key_spend_limit_exceeded"))
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.ACCOUNT and bench.states() == {"succeeded": 1}
    # ... until it lasts max_attempts polls: a key that cannot read its runs never will
    bench = Bench(n=1, config=EngineConfig(max_attempts=3))
    bench.api.get_errors.extend([Forbidden("ip", code="ip_not_allowed")] * 3)
    outcome, _ = await bench.run()
    assert outcome.exit_code == ExitCode.ACCOUNT and bench.states() == {"running": 1}
    assert bench.api.gets == 3


async def test_a_run_that_cannot_be_recorded_is_named_and_its_job_stays_submitting() -> None:
    bench = Bench(n=2, store=FullDisk())
    try:
        await bench.run()
    except StateWriteError as exc:
        assert "run_0 was created (and paid) but is not recorded" in str(exc)
        assert exc.run_id == "run_0"
    else:
        raise AssertionError("a failed state write must stop the run")
    # in doubt on resume, found again with its key: never queued, never sent twice
    assert bench.states() == {"submitting": 1, "queued": 1}
    assert len(bench.api.posts) == 1
