"""The run engine: takes a batch's jobs to done under one shared request limit.

One dispatcher loop owns every decision; requests run as tasks that report back.

- **Scheduling.** Every POST and GET takes a slot from the key's ``RequestLimiter``
  with a priority: polls that are due (0), then the submission (1), then early polls
  (2), which are only started when the limiter has slack. When a poll is due comes
  from ``polling.DurationModel``: learned from the API's own ``createdAt`` /
  ``completedAt``, so most runs need exactly one poll.
- **Never pay twice.** At most one POST is in flight. Before it, the job's intent is
  committed (state ``submitting``, attempt number, idempotency key
  ``sha256(job key:attempt)[:32]``); the run id and ``costUsd`` are committed the
  moment the answer arrives. A POST whose answer was lost (``TransportError(sent=
  True)``) or that a crash interrupted is *in doubt*: it is sent again with the same
  key (``--in-doubt resubmit``) or held for ``batchgen retry --in-doubt``. A new
  attempt (new key) is only made after the run failed (refunded) or was lost (404,
  ``--on-lost resubmit``).
- **Errors.** From the type: 400 fails the job for good; 401 (or 403 on a poll) stops
  everything at once; 402/403/``USAGE_EXCEEDED`` on a POST stop submissions while paid
  runs are still polled and downloaded; 500s and network errors back off with full
  jitter (``RetryPolicy``) up to ``max_attempts`` per attempt; a failed run is
  resubmitted up to ``max_attempts`` attempts; a 429 is the client's business.
- **Stopping.** ``stop("interrupted")`` (signal, ``--max-runtime``): no new
  submission, polls waiting for a slot are dropped, the POST and downloads in flight
  finish and are recorded. ``stop(..., hard=True)``: everything is cancelled now
  (every transition is already committed, so this is safe too).
- **Memory.** In memory: the active jobs (at most ``concurrency`` runs, plus the
  in-doubt ones) and one page of queued jobs, read in ``idx`` order.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging

from batchgen.engine.collect import Downloader
from batchgen.engine.poll import Poller
from batchgen.engine.state import STOP_CODES, ActiveRun, EngineConfig, Outcome, idem_key
from batchgen.engine.submit import Submitter
from batchgen.errors import ExitCode
from batchgen.states import JobState
from batchgen.store import jobs as store

__all__ = ["EngineConfig", "Outcome", "RunEngine", "idem_key"]


log = logging.getLogger("batchgen.engine")


class RunEngine(Submitter, Poller, Downloader):
    """Takes one batch to done. ``await engine.run()`` -> ``Outcome``."""

    async def run(self) -> Outcome:
        self._recover()
        try:
            while True:
                now = self.clock.monotonic()
                if self._hard is not None or self._crash is not None:
                    break
                self._check_flags(now)
                if self.deadline is not None and now >= self.deadline and not self._leaving:
                    self.stop("interrupted", "max runtime reached")
                if self._leaving:
                    self._drop_waiting_polls()
                self._refill()
                self._promote(now)
                self._launch_polls(now)
                self._maybe_submit()
                self._maybe_early_poll(now)
                self._launch_downloads(now)
                if self.on_tick is not None:
                    self.on_tick(self)
                if self._done():
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._next_wake(now))
        except Exception as exc:  # the dispatcher itself (a state read or write, a bug)
            self.fail(exc)
        finally:
            await self._cancel_all()
        if self._crash is not None:
            raise self._crash
        return self._outcome()

    # ------------------------------------------------------------ startup

    def _recover(self) -> None:
        now_wall = self.clock.now()
        for job in store.recover_submitting(self.db, self.batch_id, now=now_wall):
            self._count(JobState.SUBMITTING, JobState.IN_DOUBT)
            self._emit(job, JobState.SUBMITTING, JobState.IN_DOUBT, "found submitting")
        mono = self.clock.monotonic()
        for job in store.load_active(self.db, self.batch_id):
            assert job.id is not None
            state = JobState(job.state)
            if state is JobState.IN_DOUBT:
                self.in_doubt_seen.add(job.id)
                self.budget.reserve(job.id, job.estimate_micro_usd)
                if self.cfg.in_doubt == "resubmit":
                    self._resend.append(job)
                else:
                    self._held[job.id] = job
            elif state in (JobState.RUNNING, JobState.DOWNLOADING):
                age = max(0.0, now_wall - (job.submitted_at or now_wall))
                act = ActiveRun(job, self._cls(job), submitted=mono - age)
                if state is JobState.RUNNING:
                    self._add_running(act, mono)
                else:
                    self._downloading[job.id] = act

    # ------------------------------------------------------------ the queue

    def _refill(self) -> None:
        if self._stop is not None or self._leaving:
            return
        if len(self._ready) >= self.cfg.page_size // 2:
            return
        if self._exhausted:
            if self._ready or self._resend or self._later or self._swept:
                return
            # A sweep from the start finds jobs re-queued behind the cursor (retry).
            self._swept, self._exhausted, self._cursor = True, False, (-1, -1)
        rows = store.page_queued(
            self.db, self.batch_id, after=self._cursor, limit=self.cfg.page_size
        )
        if len(rows) < self.cfg.page_size:
            self._exhausted = True
        now_wall, mono = self.clock.now(), self.clock.monotonic()
        for job in rows:
            assert job.id is not None
            self._cursor = (job.idx, job.id)
            if job.id in self._queued_ids or self._holds_paid_run(job):
                continue
            self._swept = False
            self._queued_ids.add(job.id)
            if job.next_attempt_at > now_wall:
                self._defer(job, mono + job.next_attempt_at - now_wall)
            else:
                self._ready.append(job)

    def _promote(self, now: float) -> None:
        while self._later and self._later[0][0] <= now:
            _, _, job = heapq.heappop(self._later)
            if job.state == JobState.IN_DOUBT.value:
                self._resend.append(job)
            else:
                self._ready.appendleft(job)

    def _has_submittable(self) -> bool:
        return bool(self._resend or self._ready or self._later or not self._exhausted)

    def _check_flags(self, now: float) -> None:
        if now - self._flags_at < self.cfg.flags_every_s:
            return
        self._flags_at = now
        canceled, abandon = store.batch_flags(self.db, self.batch_id)
        if canceled and self._stop != "canceled":
            self.stop("canceled", "canceled (batchgen cancel)")
            self.counts = store.counts(self.db, self.batch_id)
            for job in [*self._ready, *self._resend, *(j for _, _, j in self._later)]:
                assert job.id is not None
                self._queued_ids.discard(job.id)
                if job.state == JobState.IN_DOUBT.value:
                    self._held[job.id] = job  # cancel leaves in-doubt jobs to a person
            self._ready.clear()
            self._later.clear()
            self._resend.clear()
        if abandon and not self._abandon:
            self._abandon = True
            for job_id in list(self._running):
                task = self._polls.get(job_id)
                if task is not None:
                    task.cancel()
                self._running.pop(job_id, None)
            self._probes.clear()

    def _done(self) -> bool:
        busy = bool(self._polls or self._downloads or self._submit_task)
        if self._leaving:
            return not busy
        if self._stop is None and self._has_submittable():
            return False
        if self._stop is None and not self._exhausted:
            return False
        return not (busy or self._running or self._downloading)

    def _next_wake(self, now: float) -> float:
        tick = min(0.25, max(0.02, self.durations.policy.min_interval_s / 2))
        nxt = now + tick
        for act in self._running.values():
            busy = act.job.id in self._polls and act.job.id != self._early_waiting_id
            if not busy and act.next_poll < nxt:
                nxt = act.next_poll
        if self._later:
            nxt = min(nxt, self._later[0][0])
        return max(0.0, nxt - now)

    async def _cancel_all(self) -> None:
        if self._crash is not None:
            # the POST in flight may be answered with a paid run's id: record (or name) it
            await self._grace([self._submit_task] if self._submit_task else [])
        elif self._hard is None and self._leaving:
            await self._grace([t for t in (self._submit_task, *self._downloads.values()) if t])
        tasks = [
            t
            for t in (self._submit_task, *self._polls.values(), *self._downloads.values())
            if t is not None and not t.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _grace(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait up to ``grace_s`` for ``tasks``; a hard stop (a second signal) ends it."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.cfg.grace_s
        post = self._submit_task
        while self._hard is None:
            # an error meanwhile: only the POST in flight is still worth its answer
            pending = [t for t in tasks if not t.done() and (self._crash is None or t is post)]
            if not pending:
                return
            left = end - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            wake = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait([*pending, wake], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()

    def _outcome(self) -> Outcome:
        if self._hard is not None:
            return self._hard
        # Other processes (retry, cancel) may have moved jobs: decide on the stored truth.
        self.counts = store.counts(self.db, self.batch_id)
        all_done = all(n == 0 for st, n in self.counts.items() if st != "succeeded")
        if self._stop is not None and not (self._stop == "canceled" and all_done):
            return Outcome(STOP_CODES[self._stop], self._stop_reason)
        if self.counts.get(JobState.FAILED.value, 0):
            return Outcome(ExitCode.JOBS_FAILED, "jobs failed")
        if self._held:
            return Outcome(
                ExitCode.JOBS_FAILED,
                f"{len(self._held)} job(s) held in doubt: batchgen retry BATCH --in-doubt",
            )
        return Outcome(ExitCode.OK, "done")
