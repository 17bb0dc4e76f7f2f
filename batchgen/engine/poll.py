"""Polling: due polls first, early polls only on spare requests, and what an answer means.

When each run is polled comes from ``polling.DurationModel``; this part launches the
polls (priority 0 when due, 2 when early), learns from every finished run and moves
the job: succeeded -> downloading, failed -> queued again (a new attempt) or failed,
404 -> the ``--on-lost`` policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from batchgen.clock import api_duration
from batchgen.engine.schedule import RunClass
from batchgen.engine.state import ActiveRun, EngineBase, RunLike
from batchgen.errors import (
    AuthError,
    Forbidden,
    RunbaseError,
    RunNotFound,
)
from batchgen.states import JobState
from batchgen.store import ledger
from batchgen.store.charges import LedgerEntry

log = logging.getLogger("batchgen.engine")


class Poller(EngineBase):
    def _add_running(self, act: ActiveRun, now: float) -> None:
        assert act.job.id is not None
        self._running[act.job.id] = act
        if not self.durations.known(act.cls) and act.cls not in self._probes:
            self._probes[act.cls] = act.job.id
        self._schedule(act)

    def _schedule(self, act: ActiveRun) -> None:
        act.next_poll = self.durations.next_poll(
            act.cls,
            submitted=act.submitted,
            last_poll=act.last_poll,
            polls=act.polls,
            probe=self._probes.get(act.cls) == act.job.id,
        )

    def _launch_polls(self, now: float) -> None:
        if self._leaving:
            return
        room = self.limiter.max_requests - len(self._polls)
        if room <= 0:
            return
        waiting = self._early_waiting_id
        due = [
            a
            for a in self._running.values()
            if a.next_poll <= now and (a.job.id not in self._polls or a.job.id == waiting)
        ]
        due.sort(key=lambda a: a.next_poll)
        for act in due[:room]:
            if act.job.id == waiting and self._early is not None:
                # Its early poll is still waiting for spare capacity, which may never
                # come; now that the run is due, it goes again as a due poll. (One
                # already sent is left alone: the key paid for it, its answer counts.)
                self._early.cancel()
                self._early, self._early_id = None, None
            self._start_poll(act, priority=0)

    def _maybe_early_poll(self, now: float) -> None:
        if self._leaving or self._early is not None:
            return
        submit_soon = (
            self._stop is None
            and (self._resend or self._ready)
            and self.active < self.cfg.concurrency
            and not self._budget_blocked
        )
        if not self.limiter.has_slack(reserve=1 if submit_soon else 0):
            return
        best: ActiveRun | None = None
        best_score = -1.0
        for act in self._running.values():
            if act.job.id in self._polls or not self.durations.early_ok(
                act.cls, now=now, submitted=act.submitted, last_poll=act.last_poll
            ):
                continue
            score = (now - act.submitted) / max(1e-6, self.durations.median_s(act.cls))
            if score > best_score:
                best, best_score = act, score
        if best is not None:
            self._early_sent = False
            self._early = self._start_poll(best, priority=2, on_sent=self._early_left)
            self._early_id = best.job.id

    def _early_left(self, sent: bool) -> None:
        self._early_sent = sent

    def _start_poll(
        self, act: ActiveRun, *, priority: int, on_sent: Callable[[bool], None] | None = None
    ) -> asyncio.Task[None]:
        assert act.job.id is not None
        task = self._spawn(self._poll(act, priority, on_sent))
        self._polls[act.job.id] = task
        return task

    def _drop_waiting_polls(self) -> None:
        for task in list(self._polls.values()):
            task.cancel()

    async def _poll(
        self, act: ActiveRun, priority: int, on_sent: Callable[[bool], None] | None
    ) -> None:
        job_id = act.job.id
        assert job_id is not None and act.job.run_id is not None
        try:
            try:
                run = await self.client.get_run(act.job.run_id, priority=priority, on_sent=on_sent)
            except RunNotFound as exc:
                self._lost(act, exc)
                return
            except (AuthError, Forbidden) as exc:
                self.stop("account", f"account: {exc}", hard=True)
                return
            except RunbaseError as exc:
                act.poll_errors += 1
                act.next_poll = self.clock.monotonic() + self.retry.delay(
                    min(act.poll_errors - 1, 8)
                )
                log.info(
                    "job #%d: poll of %s failed (%s), again in %.1fs",
                    act.job.idx,
                    act.job.run_id,
                    exc,
                    act.next_poll - self.clock.monotonic(),
                )
                return
            act.poll_errors = 0
            act.polls += 1
            act.last_poll = self.clock.monotonic()
            self._on_run(act, run)
        finally:
            me = asyncio.current_task()
            # A cancelled early poll may already have been replaced by a due one.
            if self._polls.get(job_id) is me:
                del self._polls[job_id]
            if self._early is me:
                self._early, self._early_id = None, None
            self._wake.set()

    def _on_run(self, act: ActiveRun, run: RunLike) -> None:
        job = act.job
        assert job.id is not None
        if run.status == "succeeded":
            seconds = api_duration(run.created_at, run.completed_at)
            if seconds is not None:
                self._learn(act.cls, seconds)
            self._leave_running(act)
            moved = self._move(
                job,
                JobState.DOWNLOADING,
                run_created_at=run.created_at,
                run_completed_at=run.completed_at,
            )
            if moved is not None:
                act.job, act.urls = moved, list(run.urls)
                self._downloading[job.id] = act
        elif run.status == "failed":
            self._leave_running(act)
            paid = ledger.run_net(self.db, job.id, job.run_id or run.id)
            self.budget.refund(paid)
            why = "run failed: refunded"
            refund = [LedgerEntry("refund", paid, job.run_id, why)] if paid > 0 else []
            err: dict[str, Any] = {
                "last_error": run.error or "run failed",
                "error_code": run.error_code,
                "cost_micro_usd": 0,
                "run_created_at": run.created_at,
                "run_completed_at": run.completed_at,
            }
            if job.attempts < self.cfg.max_attempts:
                moved = self._move(
                    job,
                    JobState.QUEUED,
                    detail={"run_failed": run.id},
                    ledger_rows=refund,
                    run_id=None,
                    idem_key=None,
                    errors=0,
                    **err,
                )
                if moved is not None and self._stop is None:
                    self._requeue(moved, 0.0)
            else:
                self._move(
                    job, JobState.FAILED, ledger_rows=refund, finished_at=self.clock.now(), **err
                )
        else:
            self._schedule(act)

    def _lost(self, act: ActiveRun, exc: RunbaseError) -> None:
        job = act.job
        self._leave_running(act)
        err: dict[str, Any] = {
            "last_error": f"run {job.run_id} lost: {exc}",
            "error_code": exc.code,
        }
        if self.cfg.on_lost == "resubmit" and job.attempts < self.cfg.max_attempts:
            moved = self._move(job, JobState.QUEUED, run_id=None, idem_key=None, **err)
            if moved is not None and self._stop is None:
                self._requeue(moved, 0.0)
        else:
            self._move(job, JobState.FAILED, finished_at=self.clock.now(), **err)

    def _leave_running(self, act: ActiveRun) -> None:
        assert act.job.id is not None
        self._running.pop(act.job.id, None)
        if self._probes.get(act.cls) == act.job.id:
            del self._probes[act.cls]
            if not self.durations.known(act.cls):
                rest = [a for a in self._running.values() if a.cls == act.cls]
                if rest:
                    oldest = min(rest, key=lambda a: a.submitted)
                    self._probes[act.cls] = oldest.job.id or 0
                    self._schedule(oldest)

    def _learn(self, cls: RunClass, seconds: float) -> None:
        self.durations.observe(cls, seconds)
        self._probes.pop(cls, None)
        for act in self._running.values():
            if act.cls == cls:
                self._schedule(act)
