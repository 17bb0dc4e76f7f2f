"""Picking up jobs that are being worked: this process's own at start, and, when several
processes share a batch (PostgreSQL), the jobs of a worker that is gone.

At start (``recover``), jobs left ``submitting`` become ``in_doubt`` (the POST may have
charged a run) and every active job is loaded: in doubt ones are resent with their key
or held, running ones polled, downloading ones downloaded. On PostgreSQL the store only
hands over jobs that no live worker holds (``claim_active``: its lease ran out), so the
same two calls, repeated every ``takeover_every_s`` (``take_over``), make a live worker
take over a dead worker's jobs: its paid runs are polled with their run id and never
submitted again; a POST it left in flight is in doubt and resent with the same
idempotency key. Jobs this engine already works are skipped (on PostgreSQL
``load_active`` returns this worker's own claims too).

A worker with takeover on does not end while the batch holds unfinished jobs that are
not its own (``others_unfinished``): they may be a dead worker's, to be taken over once
their leases run out. Jobs held in doubt (``--in-doubt hold``) do not count: they wait
for a person, and two workers each holding one would otherwise wait for each other.
"""

from __future__ import annotations

from batchgen.engine.poll import Poller
from batchgen.engine.state import ActiveRun, EngineState
from batchgen.states import TERMINAL, JobState
from batchgen.store.records import JobRecord, LedgerEntry

__all__ = ["known_ids", "others_unfinished", "recover"]


def known_ids(st: EngineState) -> set[int]:
    """The jobs this engine already works, in memory."""
    return _mine(st) | st.in_doubt_seen


def _mine(st: EngineState) -> set[int]:
    """The unfinished jobs this engine works now (not the ones it saw once)."""
    ids = {*st.running, *st.downloading, *st.held, *st.queued_ids}
    ids.update(j.id for j in st.resend)
    ids.update(j.id for _, _, j in st.later)
    ids.update(st.posts)  # a POST in flight: its job is submitting, and this worker's
    return ids


async def others_unfinished(st: EngineState) -> int:
    """Unfinished jobs of the batch that are not this engine's (module docstring)."""
    counts = await st.store.counts(st.batch.id)
    skip = {*TERMINAL, *((JobState.IN_DOUBT,) if st.cfg.in_doubt == "hold" else ())}
    unfinished = sum(n for state, n in counts.items() if JobState(state) not in skip)
    mine = _mine(st)
    if st.cfg.in_doubt == "hold":
        mine -= set(st.held)
    return max(0, unfinished - len(mine))


async def recover(st: EngineState, poller: Poller, *, skip: set[int] | None = None) -> None:
    """Recover what was being worked (module docstring); ``skip``: jobs already known."""
    now_wall = st.clock.now()
    for job in await st.store.recover_submitting(st.batch.id, now=now_wall):
        st.count(JobState.SUBMITTING, JobState.IN_DOUBT)
        st.emit(job, JobState.SUBMITTING, JobState.IN_DOUBT, "found submitting")
    mono = st.clock.monotonic()
    for job in await st.store.load_active(st.batch.id):
        if skip is not None and job.id in skip:
            continue
        if job.state is JobState.SUBMITTING:
            # its worker's lease ran out between the two reads: taken over still
            # submitting; in doubt now, as recover_submitting would have left it
            moved = await _in_doubt(st, job)
            if moved is None:
                continue
            job = moved
        state = job.state
        if state is JobState.IN_DOUBT:
            st.in_doubt_seen.add(job.id)
            st.budget.reserve(job.id, job.estimate_micro_usd)
            if st.cfg.in_doubt == "resubmit":
                st.resend.append(job)
            else:
                st.held[job.id] = job
        elif state in (JobState.RUNNING, JobState.DOWNLOADING):
            age = max(0.0, now_wall - (job.submitted_at or now_wall))
            act = ActiveRun(job, st.run_class(job), submitted=mono - age)
            if state is JobState.RUNNING:
                poller.add_running(act)
            else:
                st.downloading[job.id] = act


async def _in_doubt(st: EngineState, job: JobRecord) -> JobRecord | None:
    why = "found submitting at startup: the POST may have charged a run"
    return await st.move(
        job,
        JobState.IN_DOUBT,
        detail={"why": "found submitting at startup", "idem_key": job.idem_key},
        ledger=[LedgerEntry("possible", job.estimate_micro_usd, None, why)],
    )
