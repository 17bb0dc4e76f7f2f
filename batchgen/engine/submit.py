"""Submitting: one POST at a time, its intent committed first, never paid twice.

The order for one submission: reserve the estimate in the budget, commit ``submitting``
with the attempt number and idempotency key, send, commit ``running`` with the run id
and ``costUsd`` the moment the answer arrives. A resend of a job in doubt keeps its
attempt and key; a new attempt (new key) is made only after a run failed or was lost.

Money goes to the ledger with the transition that learns of it: a ``charge`` row with
the run id, a ``possible`` row when the answer was lost (the reservation stays counted:
the POST may have charged a run). When a resend with the same key answers with a run
created before the resend (``createdAt`` before the midpoint between the moment the
answer was lost and the moment the resend was sent, and at least 5 ms before the
resend; so the two clocks may differ by up to half that gap), the lost POST made that
run: the possible row is settled by an opposite one. A run created later means the
service ignored the key: the possible charge stays, and the job is reported as "may
have been paid twice".
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from batchgen.engine.poll import Poller
from batchgen.engine.state import ActiveRun, ApiClient, EngineState, Materializer, idem_key
from batchgen.errors import (
    InvalidRequest,
    RateLimited,
    RunbaseError,
    ServerError,
    TransportError,
    UsageError,
)
from batchgen.manifest.images import too_large_message
from batchgen.runbase.models import load_model
from batchgen.states import JobState
from batchgen.store import charges, ledger
from batchgen.store import jobs as store
from batchgen.store.charges import LedgerEntry
from batchgen.store.schema import Job

log = logging.getLogger("batchgen.engine")

#: ``createdAt`` comes in milliseconds: a run is only taken as older than the resend
#: when it is older by more than that rounding
CREATED_AT_PRECISION_S = 0.005


class Submitter:
    """Owns the one POST in flight (``EngineState.submit_task``): takes the next job from
    the queue, commits its intent, sends it, and hands the run to the poller."""

    def __init__(
        self,
        state: EngineState,
        client: ApiClient,
        materialize: Materializer,
        poller: Poller,
    ) -> None:
        self.state = state
        self.client = client
        self.materialize = materialize
        #: takes every run a POST created (and the answer of a replayed finished run)
        self.poller = poller
        #: POSTs in a row that could not even connect: the service is unreachable
        self._unreachable = 0
        self._unreachable_since = 0.0

    def maybe_submit(self) -> None:
        st = self.state
        if st.submit_task is not None or st.stop_kind is not None or st.leaving:
            return
        if st.active >= st.cfg.concurrency:
            return
        job = st.resend[0] if st.resend else (st.ready[0] if st.ready else None)
        if job is None:
            return
        assert job.id is not None
        estimate = self._estimate(job)
        if not st.budget.reserve(job.id, estimate):
            st.budget_blocked = True
            if st.active == 0:
                remaining = (st.budget.remaining() or 0) / 1e6
                st.stop(
                    "budget",
                    f"budget: next job needs ${estimate / 1e6:.3f}, ${remaining:.3f} left",
                )
            return
        st.budget_blocked = False
        self._next_job()
        # Out of the queue now; a requeue after a failed POST puts it back.
        st.queued_ids.discard(job.id)
        st.submitting = job
        st.submit_task = st.spawn(self._submit(job, estimate))

    def holds_paid_run(self, job: Job) -> bool:
        """A queued job that holds a paid run (left so by an older batchgen, say) is
        polled, never submitted again: True when it was moved to ``running``."""
        st = self.state
        if job.run_id is None:
            return False
        assert job.id is not None
        if not ledger.run_paid(st.db, job.id, job.run_id):
            return False  # its run failed and was refunded: a new attempt may pay
        moved = st.move(job, JobState.RUNNING, detail="holds a paid run: polled, not resent")
        if moved is not None:
            mono = st.clock.monotonic()
            self.poller.add_running(ActiveRun(moved, st.run_class(moved), submitted=mono))
        return True

    def _next_job(self) -> Job | None:
        st = self.state
        if st.resend:
            return st.resend.popleft()
        if st.ready:
            return st.ready.popleft()
        return None

    def _estimate(self, job: Job) -> int:
        st = self.state
        if job.estimate_micro_usd:
            return job.estimate_micro_usd
        try:
            return load_model(st.batch.model).price_micro_usd(store.job_input(job))
        except (KeyError, ValueError):
            return 0

    async def _submit(self, job: Job, estimate: int) -> None:
        st = self.state
        assert job.id is not None
        try:
            await self._submit_inner(job, estimate)
        finally:
            st.submitting = None
            st.submit_task = None
            st.wake.set()

    async def _submit_inner(self, job: Job, estimate: int) -> None:
        st = self.state
        assert job.id is not None
        now_wall = st.clock.now()
        if job.idem_key and not job.run_id:
            attempt, key = job.attempts, job.idem_key  # a resend: same attempt, same key
        else:
            attempt = job.attempts + 1
            key = idem_key(job.key, attempt, st.batch.name)
        try:
            api_input = self.materialize(store.job_input(job))
        except (UsageError, OSError, ValueError) as exc:  # an image changed or vanished
            st.budget.release(job.id)
            st.move(
                job, JobState.FAILED, last_error=str(exc), error_code="input", finished_at=now_wall
            )
            return
        moved = st.move(
            job,
            JobState.SUBMITTING,
            detail={"attempt": attempt, "idem_key": key},
            attempts=attempt,
            idem_key=key,
            estimate_micro_usd=estimate,
        )
        if moved is None:
            st.budget.release(job.id)
            return
        job = moved
        assert job.id is not None
        possible, lost_at = ledger.possible_for_key(st.db, job.id, key)
        sent_at = st.clock.now()
        try:
            run = await self.client.create_run(
                st.batch.model, api_input, idempotency_key=key, priority=1
            )
        except RunbaseError as exc:
            if isinstance(exc, InvalidRequest) and exc.status == 413:  # name the image
                message = too_large_message(exc.message, store.job_input(job), api_input)
                exc = InvalidRequest(message, code=exc.code, status=413)
            self._submit_failed(job, exc)
            return
        self._unreachable = 0
        cost = run.cost_micro_usd
        if cost is None:
            cost = estimate
        assert job.id is not None
        st.budget.settle(job.id, cost, estimate)
        rows = [LedgerEntry("charge", cost, run.id)]
        if possible > 0:
            threshold = min((lost_at + sent_at) / 2, sent_at - CREATED_AT_PRECISION_S)
            if _created_before(run.created_at, threshold):
                why = f"settled: run {run.id} was made by the POST whose answer was lost"
                rows.append(LedgerEntry("possible", -possible, run.id, why))
                st.budget.settle_possible(possible)
            else:
                log.warning(
                    "job %s: the resend made a new run %s (the service ignored the "
                    "Idempotency-Key?): may have been paid twice, up to $%.3f more",
                    job.key,
                    run.id,
                    possible / 1e6,
                )
        mono = st.clock.monotonic()
        recorded = st.move(
            job,
            JobState.RUNNING,
            detail={"run_id": run.id, "cost_micro_usd": cost},
            ledger_rows=rows,
            run_id=run.id,
            cost_micro_usd=cost,
            submitted_at=st.clock.now(),
            errors=0,
            last_error=None,
            error_code=None,
        )
        if recorded is None:
            log.error("job %s: run %s created but the job changed meanwhile", job.key, run.id)
            charges.record(st.db, job, rows, st.clock.now())
            return
        act = ActiveRun(recorded, st.run_class(recorded), submitted=mono)
        self.poller.add_running(act)
        if run.status in ("succeeded", "failed"):  # an idempotent replay of a finished run
            self.poller.on_run(act, run)

    def _submit_failed(self, job: Job, exc: RunbaseError) -> None:
        st = self.state
        assert job.id is not None
        now_wall = st.clock.now()
        err: dict[str, Any] = {"last_error": str(exc), "error_code": exc.code}
        if isinstance(exc, InvalidRequest):
            st.budget.release(job.id)
            st.move(job, JobState.FAILED, idem_key=None, finished_at=now_wall, **err)
        elif exc.stops_batch or exc.stops_submitting:
            # Answered with a refusal: nothing was created. Back in the queue for later.
            st.budget.release(job.id)
            st.move(job, JobState.QUEUED, **err)
            st.stop("account", f"account: {exc}", hard=exc.stops_batch)
        elif isinstance(exc, TransportError) and exc.sent:
            self._unreachable = 0
            self._in_doubt(job, exc)
        elif isinstance(exc, TransportError):
            self._refused(job, exc)
        else:
            self._unreachable = 0
            # A 429 storm, or a 5xx (a run may exist: its reservation stays held).
            # Again later with the same key.
            if not isinstance(exc, ServerError):
                st.budget.release(job.id)
            counts = not isinstance(exc, RateLimited)  # a 429 storm is not the job's fault
            errors = job.errors + (1 if counts else 0)
            if errors >= st.cfg.max_attempts:
                st.budget.release(job.id)
                st.move(job, JobState.FAILED, finished_at=now_wall, errors=errors, **err)
                return
            delay = st.retry.delay(errors - 1 if counts else 0)
            moved = st.move(
                job, JobState.QUEUED, errors=errors, next_attempt_at=now_wall + delay, **err
            )
            if moved is not None:
                st.requeue(moved, delay)

    def _refused(self, job: Job, exc: RunbaseError) -> None:
        """Could not even connect (refused, DNS): nothing was sent, and it is not this
        job's fault, so it costs no attempt. If it lasts, the service (or our network) is
        down: stop, resumable, rather than fail every job of the batch in turn."""
        st = self.state
        assert job.id is not None
        now = st.clock.monotonic()
        if self._unreachable == 0:
            self._unreachable_since = now
        self._unreachable += 1
        st.budget.release(job.id)
        err: dict[str, Any] = {"last_error": str(exc), "error_code": exc.code}
        lasted = now - self._unreachable_since
        if self._unreachable >= st.cfg.max_attempts and lasted >= st.cfg.unreachable_s:
            st.move(job, JobState.QUEUED, **err)
            st.stop(
                "interrupted",
                f"cannot reach the API for {lasted:.0f}s ({exc}); nothing was sent: "
                "resume when it is reachable",
                hard=True,
            )
            return
        delay = st.retry.delay(min(self._unreachable - 1, 8))
        moved = st.move(job, JobState.QUEUED, next_attempt_at=st.clock.now() + delay, **err)
        if moved is not None:
            st.requeue(moved, delay)

    def _in_doubt(self, job: Job, exc: RunbaseError) -> None:
        st = self.state
        assert job.id is not None
        errors = job.errors + 1
        # Sent, no answer: it may have created and charged a run. Counted as charged.
        amount = st.budget.lost(job.id, job.estimate_micro_usd)
        rows = [LedgerEntry("possible", amount, None, f"POST answer lost ({exc})")]
        moved = st.move(
            job,
            JobState.IN_DOUBT,
            detail={"why": str(exc)},
            ledger_rows=rows,
            errors=errors,
            last_error=str(exc),
            error_code=exc.code,
        )
        if moved is None:
            charges.record(st.db, job, rows, st.clock.now())
            return
        st.in_doubt_seen.add(job.id)
        if st.cfg.in_doubt == "hold" or errors >= st.cfg.max_attempts:
            st.held[job.id] = moved
        else:
            st.queued_ids.add(job.id)
            st.defer(moved, st.clock.monotonic() + st.retry.delay(errors - 1))


def _created_before(created_at: str | None, threshold: float) -> bool:
    """Whether the API's ``createdAt`` is earlier than ``threshold`` (epoch seconds)."""
    if not created_at:
        return False
    try:
        created = dt.datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    return created.timestamp() < threshold
