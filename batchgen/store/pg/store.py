"""``PostgresStore``: the ``JobStore`` contract on PostgreSQL, for many workers at once.

A job lives for minutes, longer than any row lock may be held, so a claim is data in
the job's row: ``owner`` (this worker's id), ``lease_until`` (on the database's clock,
``now()``, the one clock every host shares) and ``epoch`` (how many times the job was
claimed). Claims are taken with ``FOR UPDATE SKIP LOCKED``: two workers paging the same
batch never wait for each other and never get the same job. Every later write of a job
is conditioned on owner and epoch (``move_job`` in ``queries.sql``): once another worker
has taken the job over, the old claim's writes match no row and change nothing (the
move returns None, as for any lost check-and-set). A job that no live worker holds
(never claimed, released, or its lease expired) is claimed by the move that changes it.

Liveness: each worker has a row in ``worker``; its heartbeat pushes on its own lease and
those of all its jobs in one transaction, every third of the lease. A worker that stops
(``kill -9``, a host gone, a pause longer than the lease) leaves its jobs to the others
once the lease has run out: ``load_active`` takes them over (epoch + 1) and
``recover_submitting`` puts those it left ``submitting`` in doubt with a possible charge,
exactly as after a crash on SQLite. A worker leaving cleanly (``aclose``) hands its jobs
back at once; the row of one that did not is removed by the first worker to start an
hour after its lease ran out.

Every statement is bounded (``timeout_s``, ``STORE_TIMEOUT_S``; ``db.bounded``): a
database that stops answering without closing the connection, or a write stuck behind
a lock, stops the run resumably (``StateWriteError``, 75) instead of hanging it; a
heartbeat that times out is logged and tried again at the next beat.

The rest of the contract is SQLite's (writes: ``writer.SerialWriter``); the intent is
committed before ``record_intent`` returns; with a budget, the intent's transaction
locks the batch row, sums the ledger and the jobs being submitted, and refuses the
intent (``BudgetReached``) rather than pass it: workers on many hosts share one budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, Unpack

from batchgen.states import TERMINAL, JobState, check_transition
from batchgen.store.interface import JobStore
from batchgen.store.pg import db
from batchgen.store.pg.queries import changes_clause, query
from batchgen.store.pg.reads import StoreReads
from batchgen.store.pg.rows import BudgetReached, batch_record, change_params, job_record
from batchgen.store.pg.writer import SerialWriter
from batchgen.store.records import (
    ACTIVE,
    BatchFlags,
    BatchRecord,
    JobChanges,
    JobRecord,
    LedgerEntry,
    check_changes,
)

__all__ = ["LEASE_SECONDS", "STORE_TIMEOUT_S", "PostgresStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: seconds a claim lasts without a heartbeat (the heartbeat comes every third of it)
LEASE_SECONDS = 30.0

#: seconds a read, a write or a heartbeat may wait for the server (module docstring):
#: far above any commit, and above an intent waiting for the budget's batch row lock
STORE_TIMEOUT_S = 30.0


class PostgresStore(StoreReads, JobStore):
    """One worker's view of a PostgreSQL state database (module docstring: the rules)."""

    def __init__(
        self,
        url: str,
        conns: tuple[db.Conn, db.Conn, db.Conn],
        *,
        lease_seconds: float = LEASE_SECONDS,
        heartbeat_every: float | None = None,
        key_fingerprint: str | None = None,
        budget_micro_usd: int | None = None,
        timeout_s: float = STORE_TIMEOUT_S,
    ) -> None:
        self._url = url
        self.timeout_s = timeout_s
        self._wconn, self._rconn, self._hconn = conns
        self.lease_seconds = lease_seconds
        #: this worker's id: unique per process, readable in the worker table
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._key_fingerprint = key_fingerprint
        self._budget = budget_micro_usd
        #: job id -> epoch of this worker's claims (its writes' condition); writer only
        self._claims: dict[int, int] = {}
        self._writer = SerialWriter(self._wconn, self._ours)
        self._rlock = asyncio.Lock()
        self._closed = False
        every = lease_seconds / 3 if heartbeat_every is None else heartbeat_every
        self._heart: asyncio.Task[None] | None = None
        if every > 0:
            self._heart = asyncio.create_task(self._beat(every), name="batchgen-pg-heartbeat")

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        lease_seconds: float = LEASE_SECONDS,
        heartbeat_every: float | None = None,
        key_fingerprint: str | None = None,
        budget_micro_usd: int | None = None,
        timeout_s: float = STORE_TIMEOUT_S,
    ) -> PostgresStore:
        """Connect (writes, reads, heartbeat), create the schema if there is none,
        register this worker. ``heartbeat_every``: a third of the lease by default, 0 for
        none (the caller calls ``heartbeat``); ``key_fingerprint``: on every ledger row."""
        conns = (await db.connect(url), await db.connect(url), await db.connect(url))
        try:
            await db.ensure_schema(url)
            store = cls(
                url, conns, lease_seconds=lease_seconds, heartbeat_every=heartbeat_every,
                key_fingerprint=key_fingerprint, budget_micro_usd=budget_micro_usd,
                timeout_s=timeout_s,
            )  # fmt: skip
            await conns[2].execute(query("prune_workers"))
            await conns[2].execute(
                query("register_worker"),
                {"owner": store.owner, "host": socket.gethostname(), "pid": os.getpid(),
                 "lease": store.lease_seconds},
            )  # fmt: skip
        except BaseException:
            for conn in conns:
                await conn.close()
            raise
        return store

    # ------------------------------------------------------------ writer, reader, heart

    def _ours(self, exc: BaseException) -> BaseException:
        return db.pg_failure(exc, self._url) or exc

    async def _write(self, fn: Callable[[db.Conn], Awaitable[T]]) -> T:
        async def bounded(conn: db.Conn) -> T:
            async with db.bounded(self._url, self.timeout_s, "a write"):
                return await fn(conn)

        return await self._writer.write(bounded)

    async def _read(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self._closed:
            raise RuntimeError("the store is closed")
        try:
            async with self._rlock, db.bounded(self._url, self.timeout_s, "a read"):
                cur = await self._rconn.execute(query(name), params)
                return await cur.fetchall()
        except Exception as exc:
            raise self._ours(exc) from exc

    async def heartbeat(self) -> None:
        """Push on this worker's lease and the leases of every job it holds."""
        params = {"owner": self.owner, "lease": self.lease_seconds}
        async with db.bounded(self._url, self.timeout_s, "a heartbeat"), self._hconn.transaction():
            await self._hconn.execute(query("heartbeat_worker"), params)
            await self._hconn.execute(query("heartbeat_jobs"), params)

    async def _beat(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.heartbeat()
            except Exception as exc:  # the database away: the writes will say so
                log.warning("heartbeat failed: %s", self._ours(exc))

    async def aclose(self) -> None:
        """Drain the writes already asked for, hand this worker's jobs back, close."""
        if self._closed:
            return
        self._closed = True
        await self._writer.aclose()
        if self._heart is not None:
            self._heart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heart
        with contextlib.suppress(Exception):  # a worker that cannot say goodbye expires
            async with db.bounded(self._url, self.timeout_s, "goodbye"), self._hconn.transaction():
                await self._hconn.execute(query("release_jobs"), {"owner": self.owner})
                await self._hconn.execute(query("remove_worker"), {"owner": self.owner})
        for conn in (self._wconn, self._rconn, self._hconn):
            await conn.close()

    # ------------------------------------------------------------ batches

    async def batch(self, batch_id: int) -> BatchRecord:
        rows = await self._read("get_batch", {"batch_id": batch_id})
        if not rows:
            raise LookupError(f"no batch with id {batch_id}")
        return batch_record(rows[0])

    async def batch_flags(self, batch_id: int) -> BatchFlags:
        rows = await self._read("batch_flags", {"batch_id": batch_id})
        if not rows:
            raise LookupError(f"no batch with id {batch_id}")
        return BatchFlags(bool(rows[0]["canceled"]), bool(rows[0]["abandon"]))

    async def touch_batch(self, batch_id: int, now: float) -> None:
        async def write(conn: db.Conn) -> None:
            await conn.execute(query("touch_batch"), {"batch_id": batch_id, "now": now})

        await self._write(write)

    # ------------------------------------------------------------ claiming work

    async def _claim(self, name: str, params: dict[str, Any]) -> list[JobRecord]:
        params.update(owner=self.owner, lease=self.lease_seconds)

        async def write(conn: db.Conn) -> list[JobRecord]:
            cur = await conn.execute(query(name), params)
            rows = await cur.fetchall()
            for row in rows:
                self._claims[row["id"]] = row["epoch"]
            return sorted((job_record(r) for r in rows), key=lambda j: (j.idx, j.id))

        return await self._write(write)

    async def page_queued(
        self, batch_id: int, *, after: tuple[int, int] = (-1, -1), limit: int
    ) -> list[JobRecord]:
        """The next listed queued jobs after the cursor that no live worker holds,
        claimed for this worker (``FOR UPDATE SKIP LOCKED``)."""
        return await self._claim(
            "claim_queued",
            {"batch_id": batch_id, "after_idx": after[0], "after_id": after[1], "limit": limit},
        )

    async def load_active(self, batch_id: int) -> list[JobRecord]:
        """Jobs being worked that this worker holds or that no live worker holds
        (their worker's lease ran out: taken over, epoch + 1)."""
        states = [s.value for s in ACTIVE]
        return await self._claim("claim_active", {"batch_id": batch_id, "states": states})

    async def recover_submitting(self, batch_id: int, *, now: float) -> list[JobRecord]:
        async def write(conn: db.Conn) -> list[JobRecord]:
            out = []
            async with conn.transaction():
                cur = await conn.execute(query("submitting_to_recover"), {"batch_id": batch_id})
                for row in await cur.fetchall():
                    self._claims.pop(row["id"], None)
                    job = job_record(row)
                    why = "found submitting at startup: the POST may have charged a run"
                    ledger = [LedgerEntry("possible", job.estimate_micro_usd, None, why)]
                    detail = {"why": "found submitting at startup", "idem_key": job.idem_key}
                    moved = await self._move(
                        conn, job, JobState.IN_DOUBT, now, json.dumps(detail), ledger, {}
                    )
                    assert moved is not None  # locked above, in this transaction
                    out.append(moved)
            return out

        return await self._write(write)

    # ------------------------------------------------------------ moving jobs

    async def _move(
        self,
        conn: db.Conn,
        job: JobRecord,
        new: JobState,
        at: float,
        detail: str | None,
        ledger: Sequence[LedgerEntry],
        changes: Mapping[str, Any],
    ) -> JobRecord | None:
        """The move inside the caller's transaction (``move_job``, its event, its ledger)."""
        epoch = self._claims.get(job.id)
        values = {
            **change_params(changes),
            "id": job.id, "old": job.state.value, "new": new.value, "at": at,
            "owner": self.owner, "epoch": epoch, "lease": self.lease_seconds,
            "release": new in TERMINAL or new is JobState.QUEUED,
        }  # fmt: skip
        statement = query("move_job").format(changes=changes_clause(changes))
        cur = await conn.execute(statement, values)
        row = await cur.fetchone()
        if row is None:  # changed by another process, or taken over by another worker
            self._claims.pop(job.id, None)
            return None
        if values["release"]:
            self._claims.pop(job.id, None)
        else:
            self._claims[job.id] = row["epoch"]
        await conn.execute(
            query("insert_event"),
            {"batch_id": job.batch_id, "job_id": job.id, "at": at,
             "from_state": job.state.value, "to_state": new.value, "detail": detail},
        )  # fmt: skip
        await self._add_ledger(conn, job, ledger, at, row["old_attempts"], row["old_idem_key"])
        return job_record(row)

    async def _add_ledger(
        self,
        conn: db.Conn,
        job: JobRecord,
        entries: Sequence[LedgerEntry],
        at: float,
        attempt: int,
        idem_key: str | None,
    ) -> None:
        for e in entries:
            await conn.execute(
                query("insert_charge"),
                {"batch_id": job.batch_id, "job_id": job.id, "run_id": e.run_id,
                 "attempt": attempt, "idem_key": idem_key, "kind": e.kind,
                 "amount": e.amount_micro_usd, "at": at, "detail": e.detail,
                 "key_fingerprint": job.key_fingerprint or self._key_fingerprint},
            )  # fmt: skip

    async def _check_budget(self, conn: db.Conn, job: JobRecord, estimate: int) -> None:
        """Refuse an intent that could pass the budget (batch row locked: one at a time)."""
        await conn.execute(query("lock_batch"), {"batch_id": job.batch_id})
        cur = await conn.execute(query("budgeted"), {"batch_id": job.batch_id})
        row = await cur.fetchone()
        budgeted = int(next(iter(row.values())) or 0) if row else 0
        # a job in doubt has its possible charge counted already
        needed = estimate if job.state is JobState.QUEUED else 0
        assert self._budget is not None
        if budgeted + needed > self._budget:
            left = max(0, self._budget - budgeted) / 1e6
            raise BudgetReached(f"budget: next job needs ${estimate / 1e6:.3f}, ${left:.3f} left")

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
        check_transition(job.state, new)
        text = detail if detail is None or isinstance(detail, str) else json.dumps(dict(detail))
        rows = tuple(ledger)
        budget = self._budget is not None and new is JobState.SUBMITTING
        estimate = int(changes.get("estimate_micro_usd", job.estimate_micro_usd))

        async def write(conn: db.Conn) -> JobRecord | None:
            async with conn.transaction():
                if budget:
                    await self._check_budget(conn, job, estimate)
                return await self._move(conn, job, new, at, text, rows, changes)

        return await self._write(write)

    async def record_ledger(
        self, job: JobRecord, entries: Sequence[LedgerEntry], *, at: float
    ) -> None:
        rows = tuple(entries)

        async def write(conn: db.Conn) -> None:
            async with conn.transaction():
                await self._add_ledger(conn, job, rows, at, job.attempts, job.idem_key)

        await self._write(write)
