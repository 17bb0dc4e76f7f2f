"""The store the engine talks to: ``JobStore``, and the plain records it takes and returns.

The engine never sees a database row, a session or a SQL type: it reads frozen
``JobRecord`` / ``BatchRecord`` values (``store.records``) and asks the store to move
a job from one state to another. Two implementations keep the same contract
(``tests/integration/test_store_contract.py`` runs against both): ``SqliteStore``
(``store/sqlite_store.py``, today's schema and guarantees) and ``InMemoryStore``
(``store/memory.py``, for unit tests). A PostgreSQL store is the next one, so nothing
here assumes SQLite: ids are opaque integers given by the store, order is ``(idx, id)``
and never insertion order, and every time is passed in by the caller (the engine's
injected clock).

The contract every implementation keeps:

- **Check-and-set.** ``move(job, new, ...)`` changes the stored job only if it is still
  in ``job.state``; otherwise (``batchgen cancel`` or ``retry`` changed it from another
  process) it changes nothing, writes no event and no ledger row, and returns None:
  the caller forgets its stale copy. The check and the write are one atomic step
  across processes.
- **Legal moves only.** A move not in ``batchgen.states.TRANSITIONS`` raises
  ``IllegalTransition`` (a bug, never user input) and changes nothing.
- **One event per move**, in the same atomic step as the job's change, and the ledger
  rows passed with a move land in that step too, written with the job's attempt and
  idempotency key as they were *before* the move. Money learnt by a move that lost its
  race is written on its own with ``record_ledger``.
- **Durable before it returns.** An awaited write is committed (SQLite: WAL with
  ``synchronous=FULL``): the intent's commit is awaited before its POST is sent.
- **First in, first out.** Writes are applied in the order they were called.
- **A started write finishes.** Cancelling the task that awaits a write does not undo
  or interrupt it: it lands, and the caller's ``CancelledError`` comes after.
- **Failures as ours.** A write that cannot be made raises ``StateWriteError``
  (resumable, exit 75) or ``StateError`` (exit 2), never the driver's error.
- ``aclose()`` waits for every write already called, then releases the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Unpack

from batchgen.states import JobState
from batchgen.store.ledger import PossibleJob, Totals
from batchgen.store.records import (
    BatchFlags,
    BatchRecord,
    Failure,
    JobChanges,
    JobRecord,
    LedgerEntry,
    RunTimes,
)


class JobStore(Protocol):
    """Where jobs, their events and the spend ledger live (contract: module docstring).

    The primitive is ``move``; ``record_intent`` and the other named moves below are
    the engine's usual moves spelled out, and an implementation that subclasses this
    protocol inherits them.
    """

    # ------------------------------------------------------------ batches

    async def batch(self, batch_id: int) -> BatchRecord:
        """The batch; ``LookupError`` when there is none with that id."""
        ...

    async def batch_flags(self, batch_id: int) -> BatchFlags:
        """(canceled, abandon) as stored now: read again, never cached."""
        ...

    async def touch_batch(self, batch_id: int, now: float) -> None:
        """Set the batch's ``updated_at`` (a write: FIFO with the moves)."""
        ...

    # ------------------------------------------------------------ loading work

    async def recover_submitting(self, batch_id: int, *, now: float) -> list[JobRecord]:
        """Jobs left ``submitting`` by a process that died become ``in_doubt``, each with
        a ``possible`` ledger row of its estimate (its POST may have charged a run).
        Returns them as they are now (in doubt), in ``(idx, id)`` order."""
        ...

    async def load_active(self, batch_id: int) -> list[JobRecord]:
        """Jobs submitting, in doubt, running or downloading (``ACTIVE``), by ``idx``."""
        ...

    async def page_queued(
        self, batch_id: int, *, after: tuple[int, int] = (-1, -1), limit: int
    ) -> list[JobRecord]:
        """The next ``limit`` listed queued jobs after the cursor ``(idx, id)``, in
        ``(idx, id)`` order: the jobs to submit. The claim that counts is
        ``record_intent``'s check-and-set; a store shared by several workers
        (``PostgresStore``) also leases the page to this one, so that the others skip it."""
        ...

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
        """Move ``job`` to ``new`` if it is still stored in ``job.state``, set
        ``changes``, write one event (``detail``) and the ``ledger`` rows, all at once.

        Returns the job as stored after the move, or None (nothing written) when it is
        no longer in ``job.state`` (or no longer stored). ``IllegalTransition`` for a
        move the table forbids, ``TypeError`` for a field not in ``JobChanges``.
        """
        ...

    async def record_ledger(
        self, job: JobRecord, entries: Sequence[LedgerEntry], *, at: float
    ) -> None:
        """Write ``entries`` on their own (with ``job``'s attempt and key): money learnt
        when the job's move could not be made is still money spent."""
        ...

    # ------------------------------------------------------------ reading

    async def counts(self, batch_id: int) -> dict[str, int]:
        """Jobs by state, every ``JobState`` a key (unlisted queued jobs not counted)."""
        ...

    async def in_doubt_since(self, batch_id: int, since: float) -> int:
        """Distinct jobs in doubt at some moment since ``since`` (entered, left, held)."""
        ...

    async def failures(self, batch_id: int, *, limit: int = 100) -> list[Failure]:
        """Failed jobs, by ``idx``."""
        ...

    async def recent_durations(self, model: str, *, limit: int = 500) -> list[RunTimes]:
        """The latest finished runs of ``model`` (any batch), latest finished first."""
        ...

    async def totals(self, batch_id: int) -> Totals:
        """Charges, refunds and possible charges of the batch (jobs found submitting
        count their estimate as possible)."""
        ...

    async def possible_jobs(self, batch_id: int, *, limit: int = 100) -> list[PossibleJob]:
        """Jobs whose possible charges are not settled, by ``idx``."""
        ...

    async def run_net(self, job_id: int, run_id: str) -> int:
        """What the run was charged, minus what was refunded of it."""
        ...

    async def run_paid(self, job_id: int, run_id: str) -> bool:
        """Whether the run was charged and not refunded (never to be paid again)."""
        ...

    async def possible_for_key(self, job_id: int, idem_key: str) -> tuple[int, float]:
        """(net possible amount, time of the last positive possible row) of one key."""
        ...

    async def aclose(self) -> None:
        """Wait for every write already called, then release the store."""
        ...

    # ------------------------------------------------------------ the usual moves

    async def record_intent(
        self, job: JobRecord, *, at: float, attempt: int, idem_key: str, estimate_micro_usd: int
    ) -> JobRecord | None:
        """queued / in doubt -> ``submitting``: the intent, committed before its POST."""
        return await self.move(
            job,
            JobState.SUBMITTING,
            at=at,
            detail={"attempt": attempt, "idem_key": idem_key},
            attempts=attempt,
            idem_key=idem_key,
            estimate_micro_usd=estimate_micro_usd,
        )

    async def record_run_id(
        self,
        job: JobRecord,
        *,
        at: float,
        run_id: str,
        cost_micro_usd: int,
        ledger: Sequence[LedgerEntry] = (),
    ) -> JobRecord | None:
        """``submitting`` -> ``running``: the POST answered with a run (and its charge)."""
        return await self.move(
            job,
            JobState.RUNNING,
            at=at,
            detail={"run_id": run_id, "cost_micro_usd": cost_micro_usd},
            ledger=ledger,
            run_id=run_id,
            cost_micro_usd=cost_micro_usd,
            submitted_at=at,
            errors=0,
            last_error=None,
            error_code=None,
        )

    async def record_poll(
        self, job: JobRecord, *, at: float, created_at: str | None, completed_at: str | None
    ) -> JobRecord | None:
        """``running`` -> ``downloading``: the poll found the run succeeded."""
        return await self.move(
            job,
            JobState.DOWNLOADING,
            at=at,
            run_created_at=created_at,
            run_completed_at=completed_at,
        )

    async def record_download(
        self,
        job: JobRecord,
        *,
        at: float,
        output_paths: Sequence[str],
        checksums: Sequence[str],
        media_note: str | None = None,
    ) -> JobRecord | None:
        """``downloading`` -> ``succeeded``: the files are home, checked and recorded."""
        return await self.move(
            job,
            JobState.SUCCEEDED,
            at=at,
            finished_at=at,
            output_paths=tuple(output_paths),
            checksums=tuple(checksums),
            media_note=media_note,
        )

    async def mark_failed(
        self,
        job: JobRecord,
        *,
        at: float,
        error: str | None,
        code: str | None,
        ledger: Sequence[LedgerEntry] = (),
        **changes: Unpack[JobChanges],
    ) -> JobRecord | None:
        """-> ``failed`` with its error, finished now."""
        merged: JobChanges = {"finished_at": at, "last_error": error, "error_code": code}
        merged.update(changes)
        return await self.move(job, JobState.FAILED, at=at, ledger=ledger, **merged)

    async def requeue(
        self,
        job: JobRecord,
        *,
        at: float,
        detail: Mapping[str, Any] | str | None = None,
        ledger: Sequence[LedgerEntry] = (),
        **changes: Unpack[JobChanges],
    ) -> JobRecord | None:
        """-> ``queued`` again (a retry later, a refunded run, a refusal)."""
        return await self.move(job, JobState.QUEUED, at=at, detail=detail, ledger=ledger, **changes)
