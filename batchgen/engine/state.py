"""The run engine's one shared state, and the bookkeeping every collaborator uses.

The engine (``dispatcher.RunEngine``) is four objects: the dispatcher owns the loop,
``Submitter`` (submit.py), ``Poller`` (poll.py) and ``Collector`` (collect.py) each own
one stage. They share exactly one ``EngineState`` (below): every attribute two of them
read or write is declared and documented in it; what only one of them uses lives in
that one. Jobs change only through ``EngineState.move``, which commits the transition
through the ``JobStore`` (``store.interface``; the engine sees only its plain
records), keeps the in-memory counts and tells the observers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Unpack

from batchgen.clock import Clock
from batchgen.engine.budget import Budget

# the API's two calls live with the keys that send them; named here too, as before
from batchgen.engine.keys import KeyPool, PoolKey
from batchgen.engine.schedule import DurationModel, RunClass, run_class
from batchgen.errors import ExitCode, StateError, StateWriteError
from batchgen.events import Observer, TransitionEvent
from batchgen.retry import Action, Decision, RetryPolicy
from batchgen.states import JobState
from batchgen.store.interface import JobStore
from batchgen.store.records import BatchRecord, JobChanges, JobRecord, LedgerEntry

log = logging.getLogger(__name__)

InDoubtPolicy = Literal["resubmit", "hold"]
LostPolicy = Literal["fail", "resubmit"]


#: brings a succeeded run's files home: (job, urls, refresh) -> fields for ``succeeded``
CollectStep = Callable[
    [JobRecord, list[str], Callable[[], Awaitable[list[str]]]], Awaitable[JobChanges]
]
#: turns a job's canonical input into the API input (local images -> data URIs)
Materializer = Callable[[dict[str, Any]], dict[str, Any]]


def idem_key(job_key: str, attempt: int, batch: str = "") -> str:
    # The batch name is part of it: a nightly manifest sends the same inputs every night
    # (same job keys), and tonight's POST must make a new run, not replay last night's.
    material = f"{batch}/{job_key}:{attempt}" if batch else f"{job_key}:{attempt}"
    return hashlib.sha256(material.encode()).hexdigest()[:32]


@dataclass
class EngineConfig:
    concurrency: int = 10
    max_attempts: int = 5
    in_doubt: InDoubtPolicy = "resubmit"
    on_lost: LostPolicy = "fail"
    download_concurrency: int = 4
    #: POSTs in flight at once (never more than one per key). A process killed with a
    #: POST in flight may pay for it twice when the service ignores idempotency keys (a
    #: resend then makes a second run): 1, the default, bounds that to one run per kill;
    #: more lets a pool of many keys reach their rate, one possible extra run per POST
    posts_in_flight: int = 1
    #: how often the batch row is re-read to notice ``batchgen cancel``
    flags_every_s: float = 1.0
    #: queued jobs read (on PostgreSQL: claimed) at a time; several workers sharing a
    #: batch want a small page, so that the work spreads between them
    page_size: int = 200
    #: how often jobs left by a gone worker are looked for again (its leases ran out:
    #: ``recover_submitting`` then ``load_active``); None: only at start, as on SQLite,
    #: where the batch lock makes this process the batch's only one
    takeover_every_s: float | None = None
    #: how long an interrupted run waits for the POST and downloads in flight
    grace_s: float = 30.0
    #: POSTs refused at connect (nothing sent) for at least this long and max_attempts
    #: times in a row: the service is unreachable; stop, resumable (exit 75)
    unreachable_s: float = 30.0


@dataclass
class Outcome:
    exit_code: ExitCode
    reason: str


#: why submitting stopped, ranked: the highest rank decides the exit code
STOP_RANK = {"account": 5, "budget": 4, "interrupted": 3, "canceled": 2}
STOP_CODES = {
    "account": ExitCode.ACCOUNT,
    "budget": ExitCode.BUDGET,
    "interrupted": ExitCode.INTERRUPTED,
    "canceled": ExitCode.JOBS_FAILED,
}


@dataclass
class ActiveRun:
    """A job with a run: polled while running, then downloaded."""

    job: JobRecord
    cls: RunClass
    submitted: float  # monotonic
    next_poll: float = 0.0
    last_poll: float | None = None
    polls: int = 0
    poll_errors: int = 0
    urls: list[str] = field(default_factory=list)
    dl_errors: int = 0
    next_download: float = 0.0


@dataclass(eq=False)
class Post:
    """One POST in flight: its job, the key sending it, and its task."""

    job: JobRecord
    key: PoolKey
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class EngineState:
    """Everything the dispatcher, submitter, poller and collector share."""

    # ------------------------------------------------ given at construction, never replaced
    #: where jobs, their events and the ledger live (the engine's only way to them)
    store: JobStore
    batch: BatchRecord
    cfg: EngineConfig
    #: the batch's spend limit: reserved before a POST, settled by its answer
    budget: Budget
    #: how long runs take: when each one is polled
    durations: DurationModel
    #: backoff of transient errors (submit, poll, download)
    retry: RetryPolicy
    clock: Clock
    observers: list[Observer]
    #: the API keys, each with its client and limiter (``engine.keys``)
    keys: KeyPool

    # ------------------------------------------------ the queue (queued jobs in memory)
    #: queued, due now, in idx order (the dispatcher pages them in, the submitter takes)
    ready: deque[JobRecord] = field(default_factory=deque)
    #: in doubt: sent again with the same idempotency key, before anything new
    resend: deque[JobRecord] = field(default_factory=deque)
    #: backing off: a heap of (due monotonic, sequence, job)
    later: list[tuple[float, int, JobRecord]] = field(default_factory=list)
    #: tie-breaker of ``later``
    seq: itertools.count[int] = field(default_factory=itertools.count)
    #: the ids of the queued jobs held in ``ready``, ``resend`` and ``later``
    queued_ids: set[int] = field(default_factory=set)
    #: in doubt, waiting for a person (``--in-doubt hold``, attempts used up, cancel)
    held: dict[int, JobRecord] = field(default_factory=dict)
    #: the submitter could not reserve the next job's estimate (the poller then need
    #: not keep a request spare for a submission)
    budget_blocked: bool = False

    # ------------------------------------------------ runs
    #: job id -> its run while ``running`` (the poller's)
    running: dict[int, ActiveRun] = field(default_factory=dict)
    #: job id -> its run while ``downloading`` (the collector's)
    downloading: dict[int, ActiveRun] = field(default_factory=dict)
    #: run class -> the job polled to learn how long runs of that class take
    probes: dict[RunClass, int] = field(default_factory=dict)

    # ------------------------------------------------ tasks in flight
    #: the POSTs in flight (their intent committed or being committed): job id -> its
    #: POST; at most one per key, so one key's POSTs keep its limiter's order
    posts: dict[int, Post] = field(default_factory=dict)
    #: job id -> its poll in flight (or waiting for a slot)
    polls: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    #: job id -> its download in flight
    downloads: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    #: set by anything the dispatcher should look at now (a task ended, a stop)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    # ------------------------------------------------ stopping
    #: why submitting stopped (a key of STOP_RANK), None while it goes on
    stop_kind: str | None = None
    stop_reason: str = ""
    #: a hard stop: everything is cancelled now, with this outcome
    hard: Outcome | None = None
    #: the first error no part of the engine knows how to handle: the run stops now
    crash: BaseException | None = None
    #: no new request of any kind: the run is winding down
    leaving: bool = False

    # ------------------------------------------------ what the runner reads
    #: jobs by state, kept by ``move`` (read from the store when the run starts, and
    #: again when others may have moved jobs)
    counts: dict[str, int] = field(default_factory=dict)
    #: jobs found or put in doubt during this run
    in_doubt_seen: set[int] = field(default_factory=set)

    # ------------------------------------------------------------ stopping

    def account_answer(
        self,
        decision: Decision,
        key: PoolKey | None,
        exc: BaseException,
        strand: Callable[[str], None],
    ) -> Decision | None:
        """A refusal of the account met by a paid run's request (a poll, a download),
        for the poller and the collector alike. None: dealt with here (the job stranded
        with its refused key, or the batch stopped); else the decision left to act on.

        With several keys a refusal is that key's alone: a 401 strands its jobs, a 402 /
        403 stops it submitting and its run is asked again later. Otherwise a 401 stops
        the batch at once and a 402 / 403 stops new submissions (paid runs go on)."""
        if self.keys.several and key is not None:
            if decision.action is Action.SET_KEY_ASIDE:  # a 401: its runs cannot be read
                stop = self.keys.refuse(key, str(exc), revoked=True)
                strand(f"its key {key.label} was refused ({exc})")
                if stop != "go_on":
                    why = f"account: no key may submit (the last: {exc})"
                    self.stop("account", why, hard=stop == "hard")
                return None
            if decision.action is Action.STOP_SUBMITTING:
                if self.keys.refuse(key, str(exc)) != "go_on":
                    self.stop("account", f"account: {exc}")
                return dataclasses.replace(decision, action=Action.RETRY)
        if decision.action in (Action.STOP_BATCH, Action.SET_KEY_ASIDE):
            self.stop("account", f"account: {exc}", hard=True)
            return None
        if decision.action is Action.STOP_SUBMITTING:  # the run is paid: asked again later
            self.stop("account", f"account: {exc}")
        return decision

    def stop(self, kind: str, reason: str, *, hard: bool = False) -> None:
        """Stop submitting (``kind`` in STOP_RANK); ``hard`` cancels everything now."""
        if hard:
            if self.hard is None:
                code = STOP_CODES.get(kind, ExitCode.INTERRUPTED)
                self.hard = Outcome(code, reason)
        elif self.stop_kind is None or STOP_RANK[kind] > STOP_RANK[self.stop_kind]:
            self.stop_kind, self.stop_reason = kind, reason
        if kind == "interrupted" or hard:
            self.leaving = True
        self.wake.set()

    def fail(self, exc: BaseException) -> None:
        """An error no part of the engine handles (a bug, a state write that failed):
        stop at once; ``run`` raises it once the tasks are wound down. Every transition is
        committed before its request, so what was paid is on record; a job whose POST
        may have been sent stays ``submitting`` (in doubt on resume), never queued."""
        if self.crash is None:
            self.crash = exc
            self.leaving = True
        elif exc is not self.crash:
            # a paid run's id that could not be recorded must never go unsaid: it is
            # logged, and it becomes the reason the run stopped unless one already is
            if isinstance(exc, StateWriteError) and exc.unrecorded:
                log.error("%s", exc)
                first = self.crash
                if not (isinstance(first, StateWriteError) and first.unrecorded):
                    self.crash = exc
            log.debug("a further error after the first", exc_info=exc)
        self.wake.set()

    @property
    def stopping(self) -> str | None:
        return self.stop_reason or (self.hard.reason if self.hard else None)

    @property
    def active(self) -> int:
        """Runs held against the concurrency: running, plus the POSTs in flight."""
        return len(self.running) + len(self.posts)

    def post_tasks(self) -> list[asyncio.Task[None]]:
        """The tasks of the POSTs in flight."""
        return [p.task for p in self.posts.values() if p.task is not None]

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task whose unexpected error stops the run (never "was never retrieved")."""
        task = asyncio.create_task(coro)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.fail(task.exception() or RuntimeError("task failed"))

    # ------------------------------------------------------------ the queue

    def defer(self, job: JobRecord, due: float) -> None:
        heapq.heappush(self.later, (due, next(self.seq), job))

    def requeue(self, job: JobRecord, delay: float) -> None:
        assert job.id is not None
        self.queued_ids.add(job.id)
        if delay > 0:
            self.defer(job, self.clock.monotonic() + delay)
        else:
            self.ready.appendleft(job)

    def run_class(self, job: JobRecord) -> RunClass:
        return run_class(self.batch.model, dict(job.input))

    # ------------------------------------------------------------ bookkeeping

    async def move(
        self,
        job: JobRecord,
        new: JobState,
        *,
        detail: dict[str, Any] | str | None = None,
        ledger: Sequence[LedgerEntry] = (),
        **changes: Unpack[JobChanges],
    ) -> JobRecord | None:
        """Commit ``job``'s move to ``new`` (awaited: durable when it returns); None when
        another process moved it first."""
        old = job.state
        try:
            moved = await self.store.move(
                job, new, at=self.clock.now(), detail=detail, ledger=ledger, **changes
            )
        except (StateWriteError, StateError) as failure:
            run_id = changes.get("run_id") or job.run_id
            paid = ""
            if run_id and old is JobState.SUBMITTING:
                paid = (
                    f"; run {run_id} was created (and paid) but is not recorded: the job "
                    "stays submitting and is in doubt on resume"
                )
            elif run_id:
                paid = f" (run {run_id})"
            message = f"job #{job.idx} {old.value} -> {new.value}: {failure}{paid}"
            unrecorded = bool(run_id) and old is JobState.SUBMITTING
            raise StateWriteError(message, run_id=run_id, unrecorded=unrecorded) from failure
        if moved is None:
            log.info("job %s changed elsewhere (no longer %s); leaving it", job.key, old.value)
            self.forget(job)
            return None
        self.count(old, new)
        # observers (the --log-file) get the error a move records, and the run it left
        why = detail if isinstance(detail, str) else changes.get("last_error")
        self.emit(moved, old, new, why, run_id=moved.run_id or job.run_id)
        return moved

    def forget(self, job: JobRecord) -> None:
        """Drop the stale copy ``job`` (another process changed the row) from memory."""
        assert job.id is not None
        self.queued_ids.discard(job.id)
        if self.held.get(job.id) is job:
            del self.held[job.id]
        for table in (self.running, self.downloading):
            act = table.get(job.id)
            if act is not None and act.job is job:
                del table[job.id]
                if self.probes.get(act.cls) == job.id:
                    del self.probes[act.cls]

    def count(self, old: JobState, new: JobState) -> None:
        self.counts[old.value] = self.counts.get(old.value, 0) - 1
        self.counts[new.value] = self.counts.get(new.value, 0) + 1

    def emit(
        self,
        job: JobRecord,
        old: JobState,
        new: JobState,
        detail: str | None,
        run_id: str | None = None,
    ) -> None:
        ev = TransitionEvent(
            at=self.clock.now(),
            batch=self.batch.name,
            job_key=job.key,
            job_idx=job.idx,
            from_state=old.value,
            to_state=new.value,
            run_id=run_id or job.run_id,
            detail=detail,
        )
        for obs in self.observers:
            try:
                obs.transition(ev)
            except Exception as exc:  # a bug in an observer: stop the run (exit 70)
                self.fail(exc)


# the API's two calls are declared with the keys that send them (``engine.keys``);
# the stages import them from here, as before the key pool
__all__ = ["ActiveRun", "EngineState", "Post"]
