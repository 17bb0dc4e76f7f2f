"""Submitting: one POST in flight per key, its intent committed first, never paid twice.

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

from batchgen.engine.choose import next_post
from batchgen.engine.keys import ApiClient, PoolKey
from batchgen.engine.poll import Poller
from batchgen.engine.state import ActiveRun, EngineState, Materializer, Post, idem_key
from batchgen.errors import InvalidRequest, RunbaseError, ServerError, TransportError, UsageError
from batchgen.manifest.images import too_large_message
from batchgen.retry import Action, Attempt, Decision, Stage, decide
from batchgen.runbase.models import load_model
from batchgen.states import JobState
from batchgen.store.records import BudgetReached, JobChanges, JobRecord, LedgerEntry

log = logging.getLogger("batchgen.engine")

#: ``createdAt`` comes in milliseconds: a run is only taken as older than the resend
#: when it is older by more than that rounding
CREATED_AT_PRECISION_S = 0.005


class Submitter:
    """Owns the POSTs in flight (``EngineState.posts``), at most one per key and
    ``posts_in_flight`` in all: takes the next jobs from the queue, commits each one's
    intent, sends it with its key, and hands the run to the poller.

    ``posts_in_flight`` is 1 by default: a process killed with a POST in flight may pay
    for it again on resume when the service ignores idempotency keys, so one POST at a
    time bounds that to one run per kill. Up to one per key when the user allows it:
    with many keys a single POST in flight makes the submitter the bottleneck (16 keys
    reached 0.45 of their bound). One per key keeps each key's order as it was: its POST
    waits in its own limiter behind its due polls, and a refusal of that key (402, 401)
    meets one POST, not a burst. Every decision about a start (the queue, the key, the
    budget's reservation) is taken synchronously on the loop, so N POSTs starting
    together reserve exactly as N started one after the other."""

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
        """Start a POST on each key that has none in flight, while jobs wait and the
        concurrency and the budget allow."""
        while self._start_one():
            pass

    def _start_one(self) -> bool:
        """Start one POST; False when none can start now."""
        st = self.state
        if st.stop_kind is not None or st.leaving or st.active >= st.cfg.concurrency:
            return False
        if len(st.posts) >= st.cfg.posts_in_flight:  # what a kill may pay twice
            return False
        found = next_post(st)
        if found is None:
            return False
        queue, index, job, key = found
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
            return False
        st.budget_blocked = False
        # Out of the queue now; a requeue after a failed POST puts it back.
        del queue[index]
        st.queued_ids.discard(job.id)
        post = Post(job, key)
        st.posts[job.id] = post
        post.task = st.spawn(self._submit(job, estimate, key))
        return True

    async def holds_paid_run(self, job: JobRecord) -> bool:
        """A queued job that holds a paid run (left so by an older batchgen, say) is
        polled, never submitted again: True when it was moved to ``running``."""
        st = self.state
        if job.run_id is None:
            return False
        if not await st.store.run_paid(job.id, job.run_id):
            return False  # its run failed and was refunded: a new attempt may pay
        detail = "holds a paid run: polled, not resent"
        moved = await st.move(job, JobState.RUNNING, detail=detail)
        if moved is not None:
            mono = st.clock.monotonic()
            self.poller.add_running(ActiveRun(moved, st.run_class(moved), submitted=mono))
        return True

    def _estimate(self, job: JobRecord) -> int:
        if job.estimate_micro_usd:
            return job.estimate_micro_usd
        try:
            return load_model(self.state.batch.model).price_micro_usd(dict(job.input))
        except (KeyError, ValueError):
            return 0

    async def _submit(self, job: JobRecord, estimate: int, key: PoolKey) -> None:
        st = self.state
        try:
            await self._submit_inner(job, estimate, key)
        finally:
            assert job.id is not None
            st.posts.pop(job.id, None)
            st.wake.set()

    async def _submit_inner(self, job: JobRecord, estimate: int, pool_key: PoolKey) -> None:
        st = self.state
        if job.idem_key and not job.run_id:
            attempt, key = job.attempts, job.idem_key  # a resend: same attempt, same key
        else:
            attempt = job.attempts + 1
            key = idem_key(job.key, attempt, st.batch.name)
        try:
            api_input = self.materialize(dict(job.input))
        except (UsageError, OSError, ValueError) as exc:  # an image changed or vanished
            await self._failed(job, exc, self._decide(job, exc), code="input")
            return
        # the key is part of the intent: its run is visible to that key only
        intent: JobChanges = {"attempts": attempt, "idem_key": key, "estimate_micro_usd": estimate}
        if pool_key.fingerprint is not None:
            intent["key_fingerprint"] = pool_key.fingerprint
        detail = {"attempt": attempt, "idem_key": key}
        try:
            moved = await st.move(job, JobState.SUBMITTING, detail=detail, **intent)
        except BudgetReached as exc:
            # the store refused the intent (PostgreSQL: the spend of every worker on the
            # batch, summed in the intent's transaction): this worker's budget stop
            st.budget.release(job.id)
            if job.state is JobState.IN_DOUBT:
                st.held[job.id] = job  # left in doubt, as a budget stop leaves it
            st.stop("budget", str(exc))
            return
        if moved is None:
            st.budget.release(job.id)
            return
        job = moved
        possible, lost_at = await st.store.possible_for_key(job.id, key)
        sent_at = st.clock.now()
        try:
            run = await pool_key.client.create_run(
                st.batch.model, api_input, idempotency_key=key, priority=1
            )
        except RunbaseError as exc:
            if isinstance(exc, InvalidRequest) and exc.status == 413:  # name the image
                message = too_large_message(exc.message, dict(job.input), api_input)
                exc = InvalidRequest(message, code=exc.code, status=413)
            await self._submit_failed(job, exc, pool_key)
            return
        self._unreachable = 0
        cost = run.cost_micro_usd
        if cost is None:
            cost = estimate
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
        recorded = await st.move(
            job,
            JobState.RUNNING,
            detail={"run_id": run.id, "cost_micro_usd": cost},
            ledger=rows,
            run_id=run.id,
            cost_micro_usd=cost,
            submitted_at=st.clock.now(),
            errors=0,
            last_error=None,
            error_code=None,
        )
        if recorded is None:
            log.error("job %s: run %s created but the job changed meanwhile", job.key, run.id)
            await st.store.record_ledger(job, rows, at=st.clock.now())
            return
        act = ActiveRun(recorded, st.run_class(recorded), submitted=mono)
        self.poller.add_running(act)
        if run.status in ("succeeded", "failed"):  # an idempotent replay of a finished run
            await self.poller.on_run(act, run)

    def _decide(self, job: JobRecord, exc: BaseException) -> Decision:
        """``retry.decide`` for a failed submission of ``job``."""
        now = self.state.clock.monotonic()
        since = self._unreachable_since if self._unreachable else now
        attempt = Attempt(
            failures=job.errors,
            attempts=job.attempts,
            refused_in_a_row=self._unreachable,
            refused_for_s=now - since,
        )
        try:
            return decide(exc, attempt, Stage.SUBMIT, self.state.retry)
        except ValueError:  # not ours (a ValueError of the input): the job cannot be sent
            return Decision(Action.FAIL_JOB)

    async def _submit_failed(self, job: JobRecord, exc: RunbaseError, key: PoolKey) -> None:
        """The POST failed: ``decide`` says what happens to the job and the batch."""
        st = self.state
        decision = self._decide(job, exc)
        if st.keys.several and decision.action in (Action.STOP_SUBMITTING, Action.SET_KEY_ASIDE):
            await self._key_refused(job, exc, key, revoked=decision.action is Action.SET_KEY_ASIDE)
            return
        refused = isinstance(exc, TransportError) and not exc.sent
        if refused:  # could not even connect: nothing was sent, not this job's fault
            if self._unreachable == 0:
                self._unreachable_since = st.clock.monotonic()
            self._unreachable += 1
        else:
            self._unreachable = 0
        if decision.maybe_charged:  # sent, no answer: it may have created a run
            await self._in_doubt(job, exc, decision)
        elif decision.action in (Action.RETRY, Action.STOP_SUBMITTING):
            await self._again(job, exc, decision)
        elif decision.action in (Action.STOP_BATCH, Action.SET_KEY_ASIDE):
            st.budget.release(job.id)
            await st.move(job, JobState.QUEUED, last_error=str(exc), error_code=exc.code)
            if refused:
                lasted = st.clock.monotonic() - self._unreachable_since
                st.stop(
                    "interrupted",
                    f"cannot reach the API for {lasted:.0f}s ({exc}); nothing was sent: "
                    "resume when it is reachable",
                    hard=True,
                )
            else:
                st.stop("account", f"account: {exc}", hard=True)
        else:
            await self._failed(job, exc, decision, code=exc.code)

    async def _key_refused(
        self, job: JobRecord, exc: RunbaseError, key: PoolKey, *, revoked: bool
    ) -> None:
        """Several keys, and this one was refused (402, 403, ``USAGE_EXCEEDED``; 401 when
        ``revoked``): the POST made no run, so the job goes back to the front of the
        queue unbound, for another key; the batch stops only when no key may submit."""
        st = self.state
        st.budget.release(job.id)
        stop = st.keys.refuse(key, str(exc), revoked=revoked)
        # a job once in doubt may hold a run its lost POST made with this key: it stays
        # bound to it (held, reported), never sent with another key
        held = job.id in st.in_doubt_seen
        changes: JobChanges = {"last_error": str(exc), "error_code": exc.code}
        if not held:
            changes["key_fingerprint"] = None
        moved = await st.move(job, JobState.QUEUED, **changes)
        if held:
            st.keys.strand(moved or job, f"its key {key.label} no longer submits ({exc})")
        if stop != "go_on":
            st.stop("account", f"account: no key may submit (the last: {exc})", hard=stop == "hard")
        elif moved is not None and not held:
            st.requeue(moved, 0.0)

    async def _failed(
        self, job: JobRecord, exc: BaseException, decision: Decision, *, code: str | None
    ) -> None:
        """The job fails for good (a refused request or input, its tries used up)."""
        st = self.state
        st.budget.release(job.id)
        now = st.clock.now()
        changes: JobChanges = {"finished_at": now, "last_error": str(exc), "error_code": code}
        if isinstance(exc, InvalidRequest):
            changes["idem_key"] = None  # refused as asked: no run was made with that key
        elif isinstance(exc, RunbaseError) and decision.counted:
            changes["errors"] = job.errors + 1  # the last of its transient failures
        await st.move(job, JobState.FAILED, **changes)

    async def _again(self, job: JobRecord, exc: RunbaseError, decision: Decision) -> None:
        """Back in the queue with the same key: again after ``decision.delay_s``, or (the
        account refused it) for a later run, as ``stop`` ends this one's submissions."""
        st = self.state
        # A 5xx may have created a run: its reservation stays held; nothing else could.
        if not isinstance(exc, ServerError) or decision.action is Action.STOP_SUBMITTING:
            st.budget.release(job.id)
        changes: JobChanges = {"last_error": str(exc), "error_code": exc.code}
        if decision.action is Action.STOP_SUBMITTING:
            await st.move(job, JobState.QUEUED, **changes)
            st.stop("account", f"account: {exc}")
            return
        delay = decision.delay_s
        changes["errors"] = job.errors + (1 if decision.counted else 0)
        changes["next_attempt_at"] = st.clock.now() + delay
        moved = await st.move(job, JobState.QUEUED, **changes)
        if moved is not None:
            st.requeue(moved, delay)

    async def _in_doubt(self, job: JobRecord, exc: RunbaseError, decision: Decision) -> None:
        st = self.state
        errors = job.errors + 1
        # Sent, no answer: it may have created and charged a run. Counted as charged.
        amount = st.budget.lost(job.id, job.estimate_micro_usd)
        rows = [LedgerEntry("possible", amount, None, f"POST answer lost ({exc})")]
        moved = await st.move(
            job,
            JobState.IN_DOUBT,
            detail={"why": str(exc)},
            ledger=rows,
            errors=errors,
            last_error=str(exc),
            error_code=exc.code,
        )
        if moved is None:
            await st.store.record_ledger(job, rows, at=st.clock.now())
            return
        st.in_doubt_seen.add(job.id)
        if decision.action is Action.HOLD:
            st.held[job.id] = moved
        else:
            st.queued_ids.add(job.id)
            st.defer(moved, st.clock.monotonic() + decision.delay_s)


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
