"""Polling: due polls first, early polls only on spare requests, and what an answer means.

When each run is polled comes from ``schedule.DurationModel``; the ``Poller`` launches
the polls (priority 0 when due, 2 when early), learns from every finished run and moves
the job: succeeded -> downloading (the collector takes it from
``EngineState.downloading``), failed -> queued again (a new attempt) or failed, 404 ->
the ``--on-lost`` policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from batchgen.clock import api_duration
from batchgen.engine.keys import ApiClient, PoolKey, RunLike
from batchgen.engine.schedule import RunClass
from batchgen.engine.state import ActiveRun, EngineState
from batchgen.errors import RunbaseError
from batchgen.retry import Action, Attempt, Stage, decide
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.states import JobState
from batchgen.store.records import JobChanges, LedgerEntry

log = logging.getLogger("batchgen.engine")


class Poller:
    """Owns ``EngineState.running`` and the polls in flight (``EngineState.polls``)."""

    def __init__(self, state: EngineState, client: ApiClient, limiter: RequestLimiter) -> None:
        self.state = state
        self.client = client
        #: the key's limiter: how many polls may wait for a slot, and its slack
        self.limiter = limiter
        #: the one early poll, if any, and its job
        self._early: asyncio.Task[None] | None = None
        self._early_id: int | None = None
        #: whether the early poll is on the wire (out of the limiter)
        self._early_sent = False

    @property
    def early_waiting_id(self) -> int | None:
        """The job of the early poll still waiting for spare capacity (None: no such poll;
        one already sent is a poll in flight like any other: its answer is coming)."""
        return None if self._early is None or self._early_sent else self._early_id

    def add_running(self, act: ActiveRun) -> None:
        """A job whose run was created (or found): poll it from now on."""
        st = self.state
        assert act.job.id is not None
        st.running[act.job.id] = act
        if not st.durations.known(act.cls) and act.cls not in st.probes:
            st.probes[act.cls] = act.job.id
        self._schedule(act)

    def _schedule(self, act: ActiveRun) -> None:
        act.next_poll = self.state.durations.next_poll(
            act.cls,
            submitted=act.submitted,
            last_poll=act.last_poll,
            polls=act.polls,
            probe=self.state.probes.get(act.cls) == act.job.id,
        )

    def launch_polls(self, now: float) -> None:
        st = self.state
        if st.leaving:
            return
        # every key's polls may wait for its slots (one key: its limiter's)
        room = sum(k.limiter.max_requests for k in st.keys.keys) - len(st.polls)
        if room <= 0:
            return
        waiting = self.early_waiting_id
        due = [
            a
            for a in st.running.values()
            if a.next_poll <= now and (a.job.id not in st.polls or a.job.id == waiting)
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

    def maybe_early_poll(self, now: float) -> None:
        st = self.state
        if st.leaving or self._early is not None:
            return
        submit_soon = (
            st.stop_kind is None
            and (st.resend or st.ready)
            and st.active < st.cfg.concurrency
            and not st.budget_blocked
        )
        reserve = 1 if submit_soon else 0
        slack = {k.fingerprint for k in st.keys.keys if k.limiter.has_slack(reserve=reserve)}
        if not slack:
            return
        best: ActiveRun | None = None
        best_score = -1.0
        for act in st.running.values():
            if st.keys.several and act.job.key_fingerprint not in slack:
                continue  # spare capacity is a key's: an early poll goes with the run's key
            if act.job.id in st.polls or not st.durations.early_ok(
                act.cls, now=now, submitted=act.submitted, last_poll=act.last_poll
            ):
                continue
            score = (now - act.submitted) / max(1e-6, st.durations.median_s(act.cls))
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
        task = self.state.spawn(self._poll(act, priority, on_sent))
        self.state.polls[act.job.id] = task
        return task

    def drop_waiting_polls(self) -> None:
        for task in list(self.state.polls.values()):
            task.cancel()

    async def _poll(
        self, act: ActiveRun, priority: int, on_sent: Callable[[bool], None] | None
    ) -> None:
        st = self.state
        job_id = act.job.id
        assert job_id is not None and act.job.run_id is not None
        try:
            key, why = st.keys.follow(act.job)
            if key is None:  # only its key may read its run: left running, reported
                self._strand(act, why)
                return
            try:
                run = await key.client.get_run(act.job.run_id, priority=priority, on_sent=on_sent)
            except RunbaseError as exc:
                await self._poll_failed(act, exc, key)
                return
            act.poll_errors = 0
            act.polls += 1
            act.last_poll = st.clock.monotonic()
            await self.on_run(act, run)
        finally:
            me = asyncio.current_task()
            # A cancelled early poll may already have been replaced by a due one.
            if st.polls.get(job_id) is me:
                del st.polls[job_id]
            if self._early is me:
                self._early, self._early_id = None, None
            st.wake.set()

    def _strand(self, act: ActiveRun, why: str) -> None:
        """A paid run no key given can read: it stays ``running`` (a resume with its key
        polls it), is reported, and is never submitted again."""
        self._leave_running(act)
        self.state.keys.strand(act.job, why)
        log.warning("job %s: run %s not polled: %s", act.job.key, act.job.run_id, why)

    async def _poll_failed(self, act: ActiveRun, exc: RunbaseError, key: PoolKey) -> None:
        """``retry.decide`` says: poll again later, the run is lost, or stop."""
        st = self.state
        attempt = Attempt(failures=act.poll_errors, attempts=act.job.attempts)
        decision = decide(exc, attempt, Stage.POLL, st.retry)
        answer = st.account_answer(decision, key, exc, lambda why: self._strand(act, why))
        if answer is None:
            return
        decision = answer
        if decision.action in (Action.RESUBMIT, Action.FAIL_JOB):  # a 404: the run is lost
            await self._lost(act, exc, resubmit=decision.action is Action.RESUBMIT)
            return
        if decision.counted:
            act.poll_errors += 1
        act.next_poll = st.clock.monotonic() + decision.delay_s
        log.info(
            "job #%d: poll of %s failed (%s), again in %.1fs",
            act.job.idx,
            act.job.run_id,
            exc,
            decision.delay_s,
        )

    async def on_run(self, act: ActiveRun, run: RunLike) -> None:
        """What the API said of a run (a poll, or a POST replaying a finished run)."""
        st = self.state
        job = act.job
        assert job.id is not None
        if run.status == "succeeded":
            seconds = api_duration(run.created_at, run.completed_at)
            if seconds is not None:
                self._learn(act.cls, seconds)
            self._leave_running(act)
            moved = await st.move(
                job,
                JobState.DOWNLOADING,
                run_created_at=run.created_at,
                run_completed_at=run.completed_at,
            )
            if moved is not None:
                act.job, act.urls = moved, list(run.urls)
                st.downloading[job.id] = act
        elif run.status == "failed":
            self._leave_running(act)
            paid = await st.store.run_net(job.id, job.run_id or run.id)
            st.budget.refund(paid)
            why = "run failed: refunded"
            refund = [LedgerEntry("refund", paid, job.run_id, why)] if paid > 0 else []
            err: JobChanges = {
                "last_error": run.error or "run failed",
                "error_code": run.error_code,
                "cost_micro_usd": 0,
                "run_created_at": run.created_at,
                "run_completed_at": run.completed_at,
            }
            if job.attempts < st.cfg.max_attempts:
                again: JobChanges = {**err, "run_id": None, "idem_key": None, "errors": 0}
                detail = {"run_failed": run.id}
                moved = await st.move(job, JobState.QUEUED, detail=detail, ledger=refund, **again)
                if moved is not None and st.stop_kind is None:
                    st.requeue(moved, 0.0)
            else:
                failed: JobChanges = {**err, "finished_at": st.clock.now()}
                await st.move(job, JobState.FAILED, ledger=refund, **failed)
        else:
            self._schedule(act)

    async def _lost(self, act: ActiveRun, exc: RunbaseError, *, resubmit: bool) -> None:
        st = self.state
        job = act.job
        self._leave_running(act)
        last_error, code = f"run {job.run_id} lost: {exc}", exc.code
        if resubmit:
            moved = await st.move(
                job,
                JobState.QUEUED,
                run_id=None,
                idem_key=None,
                last_error=last_error,
                error_code=code,
            )
            if moved is not None and st.stop_kind is None:
                st.requeue(moved, 0.0)
        else:
            await st.move(
                job,
                JobState.FAILED,
                last_error=last_error,
                error_code=code,
                finished_at=st.clock.now(),
            )

    def _leave_running(self, act: ActiveRun) -> None:
        st = self.state
        assert act.job.id is not None
        st.running.pop(act.job.id, None)
        if st.probes.get(act.cls) == act.job.id:
            del st.probes[act.cls]
            if not st.durations.known(act.cls):
                rest = [a for a in st.running.values() if a.cls == act.cls]
                if rest:
                    oldest = min(rest, key=lambda a: a.submitted)
                    st.probes[act.cls] = oldest.job.id or 0
                    self._schedule(oldest)

    def _learn(self, cls: RunClass, seconds: float) -> None:
        st = self.state
        st.durations.observe(cls, seconds)
        st.probes.pop(cls, None)
        for act in st.running.values():
            if act.cls == cls:
                self._schedule(act)

    def abandon(self) -> None:
        """``batchgen cancel --abandon``: stop polling every run (they are left running)."""
        st = self.state
        for job_id in list(st.running):
            task = st.polls.get(job_id)
            if task is not None:
                task.cancel()
            st.running.pop(job_id, None)
        st.probes.clear()
