"""Shared state of the run engine and the bookkeeping its parts use.

``RunEngine`` (engine.py) is assembled from parts that each own one stage:
``Submitter`` (submitter.py), ``Poller`` (poller.py), ``Downloader`` (collector.py).
They share the state declared here and change jobs only through ``_move``, which
commits the transition (``store.jobs.move``), keeps the in-memory counts, and tells
the observers.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sqlalchemy import Engine

from batchgen.clock import Clock, SystemClock
from batchgen.engine.budget import Budget
from batchgen.engine.schedule import DurationModel, RunClass, run_class
from batchgen.errors import ExitCode, StateWriteError
from batchgen.events import Observer, TransitionEvent
from batchgen.retry import RetryPolicy
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.states import JobState
from batchgen.store import jobs as store
from batchgen.store.charges import LedgerEntry
from batchgen.store.failures import state_failure
from batchgen.store.schema import Batch, Job

log = logging.getLogger(__name__)

InDoubtPolicy = Literal["resubmit", "hold"]
LostPolicy = Literal["fail", "resubmit"]


class RunLike(Protocol):
    id: str
    status: str
    cost_micro_usd: int | None
    urls: list[str]
    created_at: str | None
    completed_at: str | None
    error: str | None
    error_code: str | None


class ApiClient(Protocol):
    async def create_run(
        self, model: str, input: dict[str, Any], *, idempotency_key: str, priority: int = 1
    ) -> RunLike: ...

    async def get_run(
        self, run_id: str, *, priority: int = 0, on_sent: Callable[[bool], None] | None = None
    ) -> RunLike: ...


#: brings a succeeded run's files home: (job, urls, refresh) -> fields for ``succeeded``
Collector = Callable[
    [Job, list[str], Callable[[], Awaitable[list[str]]]], Awaitable[dict[str, Any]]
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
    #: how often the batch row is re-read to notice ``batchgen cancel``
    flags_every_s: float = 1.0
    page_size: int = 200
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
    job: Job
    cls: RunClass
    submitted: float  # monotonic
    next_poll: float = 0.0
    last_poll: float | None = None
    polls: int = 0
    poll_errors: int = 0
    urls: list[str] = field(default_factory=list)
    dl_errors: int = 0
    next_download: float = 0.0


class EngineBase:
    """The engine's state and the bookkeeping every part of it shares."""

    def __init__(
        self,
        db: Engine,
        batch: Batch,
        *,
        client: ApiClient,
        limiter: RequestLimiter,
        collect: Collector,
        materialize: Materializer,
        config: EngineConfig | None = None,
        budget: Budget | None = None,
        durations: DurationModel | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        observers: Sequence[Observer] = (),
        on_tick: Callable[[Any], None] | None = None,
    ) -> None:
        assert batch.id is not None
        self.db = db
        self.batch = batch
        self.batch_id: int = batch.id
        self.client = client
        self.limiter = limiter
        self.collect = collect
        self.materialize = materialize
        self.cfg = config or EngineConfig()
        self.budget = budget or Budget(None)
        self.durations = durations or DurationModel()
        self.retry = retry or RetryPolicy(max_attempts=self.cfg.max_attempts)
        self.clock: Clock = clock or SystemClock()
        self.observers = list(observers)
        self.on_tick = on_tick

        self._ready: deque[Job] = deque()  # queued, due now, in idx order
        self._resend: deque[Job] = deque()  # in doubt: resend with the same key
        self._later: list[tuple[float, int, Job]] = []  # (due monotonic, seq, job) backoff
        self._seq = itertools.count()
        self._queued_ids: set[int] = set()  # queued jobs held in the structures above
        self._held: dict[int, Job] = {}  # in doubt, waiting for a person
        self._running: dict[int, ActiveRun] = {}
        self._downloading: dict[int, ActiveRun] = {}
        self._probes: dict[RunClass, int] = {}
        self._cursor: tuple[int, int] = (-1, -1)
        self._exhausted = False
        self._swept = False

        self._submit_task: asyncio.Task[None] | None = None
        self._submitting: Job | None = None
        self._polls: dict[int, asyncio.Task[None]] = {}
        self._early: asyncio.Task[None] | None = None  # the one early poll, if any
        self._early_id: int | None = None  # ... and its job
        self._early_sent = False  # ... and whether it is on the wire (out of the limiter)
        self._downloads: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()

        self._stop: str | None = None  # key of STOP_RANK
        self._stop_reason = ""
        self._hard: Outcome | None = None
        #: the first error no part of the engine knows how to handle: the run stops now
        self._crash: BaseException | None = None
        self._leaving = False
        self._budget_blocked = False
        self._flags_at = -1.0
        self._abandon = False
        #: POSTs in a row that could not even connect: the service is unreachable
        self._unreachable = 0
        self._unreachable_since = 0.0
        self.deadline: float | None = None  # monotonic; set by the runner

        self.counts: dict[str, int] = store.counts(db, self.batch_id)
        self.in_doubt_seen: set[int] = set()
        self.started = self.clock.monotonic()

    @property
    def _early_waiting_id(self) -> int | None:
        """The job of the early poll still waiting for spare capacity (None: no such poll;
        one already sent is a poll in flight like any other: its answer is coming)."""
        return None if self._early is None or self._early_sent else self._early_id

    # ------------------------------------------------------------ public

    def stop(self, kind: str, reason: str, *, hard: bool = False) -> None:
        """Stop submitting (``kind`` in STOP_RANK); ``hard`` cancels everything now."""
        if hard:
            if self._hard is None:
                code = STOP_CODES.get(kind, ExitCode.INTERRUPTED)
                self._hard = Outcome(code, reason)
        elif self._stop is None or STOP_RANK[kind] > STOP_RANK[self._stop]:
            self._stop, self._stop_reason = kind, reason
        if kind == "interrupted" or hard:
            self._leaving = True
        self._wake.set()

    def fail(self, exc: BaseException) -> None:
        """An error no part of the engine handles (a bug, a state write that failed):
        stop at once; ``run`` raises it once the tasks are wound down. Every transition is
        committed before its request, so what was paid is on record; a job whose POST
        may have been sent stays ``submitting`` (in doubt on resume), never queued."""
        if self._crash is None:
            self._crash = exc
            self._leaving = True
        elif exc is not self._crash:
            # a paid run's id that could not be recorded must never go unsaid: it is
            # logged, and it becomes the reason the run stopped unless one already is
            if isinstance(exc, StateWriteError) and exc.unrecorded:
                log.error("%s", exc)
                first = self._crash
                if not (isinstance(first, StateWriteError) and first.unrecorded):
                    self._crash = exc
            log.debug("a further error after the first", exc_info=exc)
        self._wake.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task whose unexpected error stops the run (never "was never retrieved")."""
        task = asyncio.create_task(coro)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.fail(task.exception() or RuntimeError("task failed"))

    @property
    def stopping(self) -> str | None:
        return self._stop_reason or (self._hard.reason if self._hard else None)

    @property
    def active(self) -> int:
        return len(self._running) + (1 if self._submitting is not None else 0)

    def _defer(self, job: Job, due: float) -> None:
        heapq.heappush(self._later, (due, next(self._seq), job))

    def _requeue(self, job: Job, delay: float) -> None:
        assert job.id is not None
        self._queued_ids.add(job.id)
        if delay > 0:
            self._defer(job, self.clock.monotonic() + delay)
        else:
            self._ready.appendleft(job)

    def _cls(self, job: Job) -> RunClass:
        return run_class(self.batch.model, store.job_input(job))

    # ------------------------------------------------------------ bookkeeping

    def _move(
        self,
        job: Job,
        new: JobState,
        *,
        detail: dict[str, Any] | str | None = None,
        ledger_rows: Sequence[LedgerEntry] = (),
        **fields: Any,
    ) -> Job | None:
        old = JobState(job.state)
        try:
            moved = store.move(
                self.db,
                job,
                new,
                at=self.clock.now(),
                detail=detail,
                ledger_rows=ledger_rows,
                **fields,
            )
        except Exception as exc:
            failure = state_failure(exc, self.db.url.database)
            if failure is None:
                raise
            run_id = fields.get("run_id") or job.run_id
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
            raise StateWriteError(message, run_id=run_id, unrecorded=unrecorded) from exc
        if moved is None:
            log.info("job %s changed elsewhere (no longer %s); leaving it", job.key, old.value)
            self._forget(job)
            return None
        self._count(old, new)
        # observers (the --log-file) get the error a move records, and the run it left
        why = detail if isinstance(detail, str) else fields.get("last_error")
        self._emit(moved, old, new, why, run_id=moved.run_id or job.run_id)
        return moved

    def _forget(self, job: Job) -> None:
        """Drop the stale copy ``job`` (another process changed the row) from memory."""
        assert job.id is not None
        self._queued_ids.discard(job.id)
        if self._held.get(job.id) is job:
            del self._held[job.id]
        for table in (self._running, self._downloading):
            act = table.get(job.id)
            if act is not None and act.job is job:
                del table[job.id]
                if self._probes.get(act.cls) == job.id:
                    del self._probes[act.cls]

    def _count(self, old: JobState, new: JobState) -> None:
        self.counts[old.value] = self.counts.get(old.value, 0) - 1
        self.counts[new.value] = self.counts.get(new.value, 0) + 1

    def _emit(
        self, job: Job, old: JobState, new: JobState, detail: str | None, run_id: str | None = None
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

    # ------------------------------------------------------------ provided by the parts

    def _add_running(self, act: ActiveRun, now: float) -> None:
        raise NotImplementedError

    def _on_run(self, act: ActiveRun, run: RunLike) -> None:
        raise NotImplementedError
