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

``Lookout`` decides when to look. The takeover itself (claims, a write) comes every
``takeover_every_s``: a dead worker's jobs wait for its lease anyway. But the count of
the others' jobs is what an idle worker waits on, and a count a period old keeps it up
to a period past the batch's end (the first count even comes before the worker claimed
anything: every queued job is then the others'). So once the worker's own work is done
it counts again at once, and then every ``IDLE_COUNT_S`` while it waits (one short read
of the batch's counts): it ends within that of the last job of the batch, whichever
worker finished it.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchgen.engine.poll import Poller
from batchgen.engine.state import ActiveRun, EngineState
from batchgen.states import TERMINAL, JobState
from batchgen.store.records import JobRecord, LedgerEntry

__all__ = ["IDLE_COUNT_S", "Lookout", "known_ids", "others_unfinished", "recover"]

#: how often a worker whose own work is done counts the others' unfinished jobs (the
#: first count at once): it ends within this of the batch's last job
IDLE_COUNT_S = 0.5


@dataclass
class Lookout:
    """When a worker on a shared batch takes over and counts (module docstring)."""

    #: ``takeover_every_s``; None: never (SQLite: the process is the batch's only one)
    every: float | None
    #: unfinished jobs of the batch that other workers hold (not ending before them)
    others: int = 0
    _took_at: float = -1.0  # monotonic: the last takeover
    _counted_at: float = -1.0  # monotonic: the last count while idle
    _idle: bool = False  # this worker's own work was done at the last look

    async def look(self, st: EngineState, poller: Poller, now: float, *, idle: bool) -> bool:
        """Take over and count when due; ``idle``: this worker's own work is done.
        True when it took over (queued jobs a gone worker held: sweep the queue again)."""
        if self.every is None or st.leaving:
            return False
        if now - self._took_at >= self.every:
            self._took_at = self._counted_at = now
            await recover(st, poller, skip=known_ids(st))
            self.others = await others_unfinished(st)
            self._idle = idle
            return True
        if not idle:
            self._idle = False
        elif self.others and (not self._idle or now - self._counted_at >= IDLE_COUNT_S):
            self._idle, self._counted_at = True, now
            self.others = await others_unfinished(st)
        return False


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
