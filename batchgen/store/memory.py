"""``InMemoryStore``: the ``JobStore`` contract in plain dictionaries, for unit tests.

It keeps the same rules as the SQLite store, or the engine's unit tests would prove
nothing: a move is a check-and-set on the job's state, checked against the transition
table, with one event and its ledger rows in the same step; the ledger sums are the
same sums. Each call runs to completion before it first yields to the loop, so writes
are atomic, first in first out, and a cancelled caller cannot interrupt one.

``add_batch`` and ``add_job`` stand in for ``sync_batch`` (the manifest's rows);
``set_state`` stands in for another process (``batchgen cancel``) changing a job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Unpack

from batchgen.states import JobState, check_transition
from batchgen.store.interface import JobStore
from batchgen.store.ledger import PossibleJob, Totals
from batchgen.store.records import (
    ACTIVE,
    BatchFlags,
    BatchRecord,
    Failure,
    JobChanges,
    JobRecord,
    LedgerEntry,
    RunTimes,
    check_changes,
)


@dataclass(frozen=True, slots=True)
class EventRow:
    batch_id: int
    job_id: int
    at: float
    from_state: JobState
    to_state: JobState
    detail: Mapping[str, Any] | str | None


@dataclass(frozen=True, slots=True)
class LedgerRow:
    batch_id: int
    job_id: int
    run_id: str | None
    attempt: int
    idem_key: str | None
    kind: str
    amount_micro_usd: int
    at: float
    detail: str | None
    key_fingerprint: str | None = None


class InMemoryStore(JobStore):
    """Jobs, events and the ledger in memory (see ``store.interface`` for the contract)."""

    def __init__(self) -> None:
        self.batches: dict[int, BatchRecord] = {}
        self.jobs: dict[int, JobRecord] = {}
        self.events: list[EventRow] = []
        self.ledger: list[LedgerRow] = []
        self._ids = itertools.count(1)
        self._closed = False

    # ------------------------------------------------------------ setting up

    def add_batch(self, name: str = "batch", model: str = "model", **fields: Any) -> BatchRecord:
        values: dict[str, Any] = {
            "manifest_path": "manifest.yaml",
            "manifest_sha256": "",
            "out_dir": "out",
            "filename_template": "{idx}",
        }
        values.update(fields)
        batch = BatchRecord(id=next(self._ids), name=name, model=model, **values)
        self.batches[batch.id] = batch
        return batch

    def add_job(self, batch_id: int, key: str, idx: int, **fields: Any) -> JobRecord:
        values: dict[str, Any] = {"variant": 0, "input": {}, "axes": {}, "listed": True}
        values.update(fields)
        values.setdefault("state", JobState.QUEUED)
        job = JobRecord(id=next(self._ids), batch_id=batch_id, key=key, idx=idx, **values)
        self.jobs[job.id] = job
        return job

    def set_state(self, job_id: int, state: JobState) -> None:
        """Another process changed the job (no check: ``cancel`` has its own)."""
        self.jobs[job_id] = dataclasses.replace(self.jobs[job_id], state=state)

    # ------------------------------------------------------------ plumbing

    async def _enter(self, write: bool) -> None:
        # Nothing here suspends: a call runs to its end before another one starts.
        if self._closed:
            raise RuntimeError("the store is closed")

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.sleep(0)

    def _of(self, batch_id: int) -> list[JobRecord]:
        return sorted(
            (j for j in self.jobs.values() if j.batch_id == batch_id), key=lambda j: (j.idx, j.id)
        )

    def _add_ledger(self, job: JobRecord, entries: Sequence[LedgerEntry], at: float) -> None:
        for e in entries:
            self.ledger.append(
                LedgerRow(
                    job.batch_id, job.id, e.run_id, job.attempts, job.idem_key,
                    e.kind, e.amount_micro_usd, at, e.detail, job.key_fingerprint,
                )
            )  # fmt: skip

    def _transition(
        self,
        job: JobRecord,
        new: JobState,
        at: float,
        detail: Mapping[str, Any] | str | None,
        changes: Mapping[str, Any],
    ) -> JobRecord:
        check_transition(job.state, new)
        moved = dataclasses.replace(job, state=new, updated_at=at, **changes)
        self.jobs[job.id] = moved
        self.events.append(EventRow(job.batch_id, job.id, at, job.state, new, detail))
        return moved

    # ------------------------------------------------------------ batches

    async def batch(self, batch_id: int) -> BatchRecord:
        await self._enter(False)
        if batch_id not in self.batches:
            raise LookupError(f"no batch with id {batch_id}")
        return self.batches[batch_id]

    async def batch_flags(self, batch_id: int) -> BatchFlags:
        batch = await self.batch(batch_id)
        return BatchFlags(batch.canceled, batch.abandon)

    async def touch_batch(self, batch_id: int, now: float) -> None:
        await self._enter(True)
        if batch_id in self.batches:
            self.batches[batch_id] = dataclasses.replace(self.batches[batch_id], updated_at=now)

    # ------------------------------------------------------------ loading work

    async def recover_submitting(self, batch_id: int, *, now: float) -> list[JobRecord]:
        await self._enter(True)
        out = []
        for job in self._of(batch_id):
            if job.state is not JobState.SUBMITTING:
                continue
            why = "found submitting at startup: the POST may have charged a run"
            self._add_ledger(job, [LedgerEntry("possible", job.estimate_micro_usd, None, why)], now)
            detail = {"why": "found submitting at startup", "idem_key": job.idem_key}
            out.append(self._transition(job, JobState.IN_DOUBT, now, detail, {}))
        return out

    async def load_active(self, batch_id: int) -> list[JobRecord]:
        await self._enter(False)
        return [j for j in self._of(batch_id) if j.state in ACTIVE]

    async def page_queued(
        self, batch_id: int, *, after: tuple[int, int] = (-1, -1), limit: int
    ) -> list[JobRecord]:
        await self._enter(False)
        rows = [
            j
            for j in self._of(batch_id)
            if j.state is JobState.QUEUED and j.listed and (j.idx, j.id) > after
        ]
        return rows[:limit]

    # ------------------------------------------------------------ moving jobs

    async def move(
        self,
        job: JobRecord,
        new: JobState,
        *,
        at: float,
        detail: Mapping[str, Any] | str | None = None,
        ledger: Sequence[LedgerEntry] = (),
        **changes: Unpack[JobChanges],
    ) -> JobRecord | None:
        check_changes(changes)
        await self._enter(True)
        fresh = self.jobs.get(job.id)
        if fresh is None or fresh.state is not job.state:
            return None
        check_transition(fresh.state, new)  # before the ledger: nothing half-written
        self._add_ledger(fresh, ledger, at)
        return self._transition(fresh, new, at, detail, dict(changes))

    async def record_ledger(
        self, job: JobRecord, entries: Sequence[LedgerEntry], *, at: float
    ) -> None:
        await self._enter(True)
        self._add_ledger(job, entries, at)

    # ------------------------------------------------------------ reading

    async def counts(self, batch_id: int) -> dict[str, int]:
        await self._enter(False)
        out = {st.value: 0 for st in JobState}
        for j in self._of(batch_id):
            if j.listed or j.state is not JobState.QUEUED:
                out[j.state.value] += 1
        return out

    async def in_doubt_since(self, batch_id: int, since: float) -> int:
        await self._enter(False)
        doubt = JobState.IN_DOUBT
        ids = {
            e.job_id
            for e in self.events
            if e.batch_id == batch_id and e.at >= since and doubt in (e.from_state, e.to_state)
        }
        ids.update(j.id for j in self._of(batch_id) if j.state is doubt)
        return len(ids)

    async def failures(self, batch_id: int, *, limit: int = 100) -> list[Failure]:
        await self._enter(False)
        failed = [j for j in self._of(batch_id) if j.state is JobState.FAILED][:limit]
        return [Failure(j.key, j.idx, j.last_error, j.error_code) for j in failed]

    async def recent_durations(self, model: str, *, limit: int = 500) -> list[RunTimes]:
        await self._enter(False)
        ids = {b.id for b in self.batches.values() if b.model == model}
        runs = [
            (j.finished_at, RunTimes(j.input, j.run_created_at, j.run_completed_at))
            for j in self.jobs.values()
            if j.batch_id in ids and j.run_created_at is not None and j.run_completed_at is not None
        ]
        # latest finished first; never finished last (as SQL sorts NULL in DESC)
        runs.sort(key=lambda r: (r[0] is None, -(r[0] or 0.0)))
        return [times for _, times in runs[:limit]]

    def _possible_by_job(self, batch_id: int) -> dict[int, int]:
        """job id -> net possible amount, the estimate of a job found submitting included."""
        out: dict[int, int] = {}
        for row in self.ledger:
            if row.batch_id == batch_id and row.kind == "possible":
                out[row.job_id] = out.get(row.job_id, 0) + row.amount_micro_usd
        for j in self._of(batch_id):
            if j.state is JobState.SUBMITTING:
                out[j.id] = out.get(j.id, 0) + j.estimate_micro_usd
        return out

    async def totals(self, batch_id: int) -> Totals:
        await self._enter(False)
        rows = [r for r in self.ledger if r.batch_id == batch_id]
        charged = sum(r.amount_micro_usd for r in rows if r.kind == "charge")
        refunded = sum(r.amount_micro_usd for r in rows if r.kind == "refund")
        possible = sum(self._possible_by_job(batch_id).values())
        return Totals(charged, refunded, max(0, possible))

    async def possible_jobs(self, batch_id: int, *, limit: int = 100) -> list[PossibleJob]:
        await self._enter(False)
        possible = self._possible_by_job(batch_id)
        out = []
        for j in self._of(batch_id):
            if possible.get(j.id, 0) > 0:
                runs = {r.run_id for r in self.ledger if r.job_id == j.id and r.kind == "charge"}
                paid = len(runs - {None})
                out.append(PossibleJob(j.key, j.idx, possible[j.id], paid))
        return out[:limit]

    async def run_net(self, job_id: int, run_id: str) -> int:
        await self._enter(False)
        sign = {"charge": 1, "refund": -1}
        return sum(
            sign.get(r.kind, 0) * r.amount_micro_usd
            for r in self.ledger
            if r.job_id == job_id and r.run_id == run_id
        )

    async def run_paid(self, job_id: int, run_id: str) -> bool:
        return await self.run_net(job_id, run_id) > 0

    async def possible_for_key(self, job_id: int, idem_key: str) -> tuple[int, float]:
        await self._enter(False)
        rows = [
            r
            for r in self.ledger
            if r.job_id == job_id and r.idem_key == idem_key and r.kind == "possible"
        ]
        if not rows:
            return 0, 0.0
        last = max((r.at for r in rows if r.amount_micro_usd > 0), default=0.0)
        return sum(r.amount_micro_usd for r in rows), last
