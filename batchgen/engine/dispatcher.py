"""The run engine: takes a batch's jobs to done under one shared request limit.

One dispatcher loop owns every decision; requests run as tasks that report back. The
engine is four objects around one ``EngineState`` (state.py): the dispatcher (here: the
loop, the queue paging, recovery, the end), the ``Submitter`` (submit.py), the
``Poller`` (poll.py) and the ``Collector`` (collect.py). The submitter hands each run it
creates to the poller (a reference given at construction); nothing else calls across.

- **Scheduling.** Every POST and GET takes a slot from the key's ``RequestLimiter``
  with a priority: polls that are due (0), then the submission (1), then early polls
  (2), which are only started when the limiter has slack. When a poll is due comes
  from ``schedule.DurationModel``: learned from the API's own ``createdAt`` /
  ``completedAt``, so most runs need exactly one poll.
- **Never pay twice.** At most one POST is in flight per key (so with many keys the
  submissions overlap, each key's in its own limiter's order), and never two for one
  job. Before each POST, the job's intent is committed (state ``submitting``, attempt
  number, idempotency key ``sha256(job key:attempt)[:32]``); the run id and
  ``costUsd`` are committed the moment the answer arrives. A POST whose answer was
  lost (``TransportError(sent=True)``) or that a crash interrupted is *in doubt*: it
  is sent again with the same key (``--in-doubt resubmit``) or held for ``batchgen
  retry --in-doubt``. A new attempt (new key) is only made after the run failed
  (refunded) or was lost (404, ``--on-lost resubmit``).
- **Errors.** Submitter, poller and collector ask ``batchgen.retry.decide`` about every
  error and do what it answers: 400 fails the job for good; 401 stops everything at
  once; 402/403/``USAGE_EXCEEDED`` stop submissions while paid runs are still polled
  and downloaded (a refusal that lasts on those GETs stops the batch); 500s and
  network errors back off with full jitter up to ``max_attempts`` per attempt; a
  failed run is resubmitted up to ``max_attempts`` attempts; a 429 is the client's.
- **State.** Only through the ``JobStore`` (``store.interface``), every move awaited:
  the SQLite store commits in its own thread, never on the loop's; the loop waits on
  the injected clock, so the unit tests run it on the in-memory store and virtual time.
- **Stopping.** ``stop("interrupted")`` (signal, ``--max-runtime``): no new
  submission, polls waiting for a slot are dropped, the POST and downloads in flight
  finish and are recorded. ``stop(..., hard=True)``: everything is cancelled now
  (every transition is already committed, so this is safe too).
- **Memory.** In memory: the active jobs (at most ``concurrency`` runs, plus the
  in-doubt ones) and one page of queued jobs, read in ``idx`` order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
from collections.abc import Callable, Sequence

from batchgen.clock import Clock, SystemClock
from batchgen.engine.budget import Budget
from batchgen.engine.collect import Collector
from batchgen.engine.keys import ApiClient, KeyPool, single
from batchgen.engine.poll import Poller
from batchgen.engine.schedule import DurationModel
from batchgen.engine.state import (
    STOP_CODES,
    CollectStep,
    EngineConfig,
    EngineState,
    Materializer,
    Outcome,
    idem_key,
)
from batchgen.engine.submit import Submitter
from batchgen.engine.takeover import Lookout, recover
from batchgen.errors import ExitCode
from batchgen.events import Observer
from batchgen.retry import RetryPolicy
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.states import JobState
from batchgen.store.interface import JobStore
from batchgen.store.records import BatchRecord

__all__ = ["EngineConfig", "Outcome", "RunEngine", "idem_key"]


log = logging.getLogger("batchgen.engine")


class RunEngine:
    """Takes one batch to done. ``await engine.run()`` -> ``Outcome``."""

    def __init__(
        self,
        store: JobStore,
        batch: BatchRecord,
        *,
        client: ApiClient,
        limiter: RequestLimiter,
        collect: CollectStep,
        materialize: Materializer,
        config: EngineConfig | None = None,
        budget: Budget | None = None,
        durations: DurationModel | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        observers: Sequence[Observer] = (),
        on_tick: Callable[[RunEngine], None] | None = None,
        keys: KeyPool | None = None,
    ) -> None:
        cfg = config or EngineConfig()
        # decide() reads the user's choices from the policy: the engine's settings win
        policy = dataclasses.replace(
            retry or RetryPolicy(),
            max_attempts=cfg.max_attempts,
            in_doubt=cfg.in_doubt,
            on_lost=cfg.on_lost,
            unreachable_s=cfg.unreachable_s,
        )
        self.state = st = EngineState(
            store=store,
            batch=batch,
            cfg=cfg,
            budget=budget or Budget(None),
            durations=durations or DurationModel(),
            retry=policy,
            clock=clock or SystemClock(),
            observers=list(observers),
            # several keys (the runner's pool), or the one client and limiter given
            keys=keys or single(client, limiter),
        )
        #: the key's limiter (the runner's progress line reads its rate)
        self.limiter = limiter
        self.poller = Poller(st, client, limiter)
        self.submitter = Submitter(st, client, materialize, self.poller)
        self.collector = Collector(st, client, collect)
        #: called once per turn of the loop (the runner's progress line)
        self.on_tick = on_tick
        #: monotonic time at which the run stops submitting (``--max-runtime``)
        self.deadline: float | None = None
        # paging the queued jobs in: the last (idx, id) read, whether the end was
        # reached, and whether a sweep from the start found nothing more
        self._cursor: tuple[int, int] = (-1, -1)
        self._exhausted = False
        self._swept = False
        #: when the batch row was last read for ``batchgen cancel``
        self._flags_at = -1.0
        #: when to take over gone workers' jobs and count the others' (``takeover``)
        self._lookout = Lookout(cfg.takeover_every_s)
        #: ``cancel --abandon`` seen: running jobs are no longer polled
        self._abandon = False

    # ------------------------------------------------------------ what the runner uses

    def stop(self, kind: str, reason: str, *, hard: bool = False) -> None:
        """Stop submitting (``kind`` in STOP_RANK); ``hard`` cancels everything now."""
        self.state.stop(kind, reason, hard=hard)

    def fail(self, exc: BaseException) -> None:
        """An error nothing in the engine handles: the run stops, ``run`` raises it."""
        self.state.fail(exc)

    @property
    def batch(self) -> BatchRecord:
        return self.state.batch

    @property
    def budget(self) -> Budget:
        return self.state.budget

    @property
    def clock(self) -> Clock:
        return self.state.clock

    @property
    def counts(self) -> dict[str, int]:
        return self.state.counts

    @property
    def in_doubt_seen(self) -> set[int]:
        return self.state.in_doubt_seen

    @property
    def active(self) -> int:
        return self.state.active

    @property
    def stopping(self) -> str | None:
        return self.state.stopping

    # ------------------------------------------------------------ the loop

    async def run(self) -> Outcome:
        st = self.state
        try:
            st.counts = await st.store.counts(st.batch.id)
            await self._recover()
            while True:
                # cleared before the turn, not after: a task may end while it awaits
                st.wake.clear()
                now = st.clock.monotonic()
                if st.hard is not None or st.crash is not None:
                    break
                await self._check_flags(now)
                await self._take_over(now)
                if self.deadline is not None and now >= self.deadline and not st.leaving:
                    st.stop("interrupted", "max runtime reached")
                if st.leaving:
                    self.poller.drop_waiting_polls()
                await self._refill()
                self._promote(now)
                self.poller.launch_polls(now)
                self.submitter.maybe_submit()
                self.poller.maybe_early_poll(now)
                self.collector.launch_downloads(now)
                if self.on_tick is not None:
                    self.on_tick(self)
                if self._done():
                    break
                await self._sleep(self._next_wake(now))
        except Exception as exc:  # the dispatcher itself (a state read or write, a bug)
            st.fail(exc)
        finally:
            await self._cancel_all()
        if st.crash is not None:
            raise st.crash
        return await self._outcome()

    async def _sleep(self, seconds: float) -> None:
        """Until a task wakes the loop, or ``seconds`` on the injected clock (so the unit
        tests run the engine on virtual time)."""
        st = self.state
        if st.wake.is_set():
            return
        waker = asyncio.ensure_future(st.wake.wait())
        sleeper = asyncio.ensure_future(st.clock.sleep(seconds))
        try:
            await asyncio.wait((waker, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
            sleeper.cancel()

    # ------------------------------------------------------------ startup

    async def _recover(self) -> None:
        await recover(self.state, self.poller)

    async def _take_over(self, now: float) -> None:
        """Several workers on one batch: the jobs of a worker whose lease ran out, and the
        count of the others' jobs this one waits for (``batchgen.engine.takeover``)."""
        if await self._lookout.look(self.state, self.poller, now, idle=self._idle()):
            self._swept = False  # queued jobs a gone worker had claimed: sweep again

    # ------------------------------------------------------------ the queue

    async def _refill(self) -> None:
        st = self.state
        if st.stop_kind is not None or st.leaving:
            return
        if len(st.ready) >= st.cfg.page_size // 2:
            return
        if self._exhausted:
            if st.ready or st.resend or st.later or self._swept:
                return
            # A sweep from the start finds jobs re-queued behind the cursor (retry).
            self._swept, self._exhausted, self._cursor = True, False, (-1, -1)
        rows = await st.store.page_queued(st.batch.id, after=self._cursor, limit=st.cfg.page_size)
        if len(rows) < st.cfg.page_size:
            self._exhausted = True
        now_wall, mono = st.clock.now(), st.clock.monotonic()
        for job in rows:
            self._cursor = (job.idx, job.id)
            # a job whose POST is starting is still queued in the store until its intent
            # commits: a sweep must not queue it a second time (another key's POST)
            held = job.id in st.queued_ids or job.id in st.posts
            held = held or job.id in st.keys.stranded  # its key is gone
            if held or await self.submitter.holds_paid_run(job):
                continue
            self._swept = False
            st.queued_ids.add(job.id)
            if job.next_attempt_at > now_wall:
                st.defer(job, mono + job.next_attempt_at - now_wall)
            else:
                st.ready.append(job)

    def _promote(self, now: float) -> None:
        st = self.state
        while st.later and st.later[0][0] <= now:
            _, _, job = heapq.heappop(st.later)
            if job.state is JobState.IN_DOUBT:
                st.resend.append(job)
            else:
                st.ready.appendleft(job)

    def _has_submittable(self) -> bool:
        st = self.state
        return bool(st.resend or st.ready or st.later or not self._exhausted)

    async def _check_flags(self, now: float) -> None:
        st = self.state
        if now - self._flags_at < st.cfg.flags_every_s:
            return
        self._flags_at = now
        flags = await st.store.batch_flags(st.batch.id)
        if flags.canceled and st.stop_kind != "canceled":
            st.stop("canceled", "canceled (batchgen cancel)")
            st.counts = await st.store.counts(st.batch.id)
            for job in [*st.ready, *st.resend, *(j for _, _, j in st.later)]:
                st.queued_ids.discard(job.id)
                if job.state is JobState.IN_DOUBT:
                    st.held[job.id] = job  # cancel leaves in-doubt jobs to a person
            st.ready.clear()
            st.later.clear()
            st.resend.clear()
        if flags.abandon and not self._abandon:
            self._abandon = True
            self.poller.abandon()

    def _idle(self) -> bool:
        """This worker's own work is done: nothing to submit, in flight or followed."""
        st = self.state
        busy = st.polls or st.downloads or st.posts or st.running or st.downloading
        return not (busy or self._has_submittable())

    def _done(self) -> bool:
        st = self.state
        busy = bool(st.polls or st.downloads or st.posts)
        if st.leaving:
            return not busy
        if st.stop_kind is None and self._has_submittable():
            return False
        if st.stop_kind is None and (not self._exhausted or self._lookout.others):
            return False
        return not (busy or st.running or st.downloading)

    def _next_wake(self, now: float) -> float:
        st = self.state
        tick = min(0.25, max(0.02, st.durations.policy.min_interval_s / 2))
        nxt = now + tick
        early = self.poller.early_waiting_id
        for act in st.running.values():
            busy = act.job.id in st.polls and act.job.id != early
            if not busy and act.next_poll < nxt:
                nxt = act.next_poll
        if st.later:
            nxt = min(nxt, st.later[0][0])
        return max(0.0, nxt - now)

    # ------------------------------------------------------------ the end

    async def _cancel_all(self) -> None:
        st = self.state
        if st.crash is not None:
            # the POSTs in flight may be answered with a paid run's id: record (or name) it
            await self._grace(st.post_tasks())
        elif st.hard is None and st.leaving:
            await self._grace([*st.post_tasks(), *st.downloads.values()])
        tasks = [
            t
            for t in (*st.post_tasks(), *st.polls.values(), *st.downloads.values())
            if not t.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _grace(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait up to ``grace_s`` for ``tasks``; a hard stop (a second signal) ends it."""
        st = self.state
        loop = asyncio.get_running_loop()
        end = loop.time() + st.cfg.grace_s
        while st.hard is None:
            # an error meanwhile: only the POSTs in flight are still worth their answers
            posts = st.post_tasks()
            pending = [t for t in tasks if not t.done() and (st.crash is None or t in posts)]
            if not pending:
                return
            left = end - loop.time()
            if left <= 0:
                return
            st.wake.clear()
            wake = asyncio.ensure_future(st.wake.wait())
            await asyncio.wait([*pending, wake], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()

    async def _outcome(self) -> Outcome:
        st = self.state
        if st.hard is not None:
            return st.hard
        # Other processes (retry, cancel) may have moved jobs: decide on the stored truth.
        st.counts = await st.store.counts(st.batch.id)
        all_done = all(n == 0 for state, n in st.counts.items() if state != "succeeded")
        if st.stop_kind is not None and not (st.stop_kind == "canceled" and all_done):
            return Outcome(STOP_CODES[st.stop_kind], st.stop_reason)
        if st.counts.get(JobState.FAILED.value, 0):
            return Outcome(ExitCode.JOBS_FAILED, "jobs failed")
        if (stranded := st.keys.stranded_reason()) is not None:
            return Outcome(ExitCode.JOBS_FAILED, stranded)
        if st.held:
            return Outcome(
                ExitCode.JOBS_FAILED,
                f"{len(st.held)} job(s) held in doubt: batchgen retry BATCH --in-doubt",
            )
        return Outcome(ExitCode.OK, "done")
