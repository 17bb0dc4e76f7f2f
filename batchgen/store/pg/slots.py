"""One key's request limit across processes and hosts: a sliding-window log in
PostgreSQL, on the database's clock.

Runbase allows a key 20 requests per 10 s. Workers on several hosts sharing a key
share that limit through ``key_slot``: before each request a worker *takes a slot*
under the key's advisory lock: it counts the key's requests in the last
``window_s + margin_s`` seconds of the database's clock (``clock_timestamp()``) and
records its own only if fewer than ``limit`` were sent. The margin (5 % of the window
by default: 0.5 s of 10 s) covers the delay between taking the slot and the request's
arrival at the API (the answer's way back from the database, then the send): two
requests whose slots are a full window apart can arrive a little closer together.
Hosts' own clocks never enter: a host whose clock is off, or that paused, still counts
on the database's.

One round trip per slot, and the lock never waits for us: the lock and the count go
to the server as one query message (a client-side bound cursor), which PostgreSQL runs
as one implicit transaction, so the lock is held only while the server runs those
two statements, never while it waits for the client. (Two statements, not one:
READ COMMITTED reads what the lock's previous holder committed only in a statement
that starts after the lock is taken.)

A refused slot comes back as the seconds until the oldest request in the span leaves
it: the caller waits that long (on its own clock: a wait only delays) and asks again.
A slot taken but not used (the caller's request never left) is given back. The
database unreachable raises ``StateWriteError`` (75, resumable), as a state write
does: a request never goes without its slot. So does a database that does not answer
within ``timeout_s`` (``SLOT_TIMEOUT_S``: it stopped answering without closing the
connection, or the key's lock is stuck): the statement is cancelled (``db.bounded``)
and the request not sent. A slot is stale long before that (a slot must be used
within half the margin: ``runbase.shared_key``), so the bound only ends a hang.

This is layer 1 of ``batchgen.runbase.ratelimit`` (the hard bound) moved to the shared
database; ``KeySlot`` is one key's side of it, the limiter's slot source
(``batchgen.runbase.shared_key``). The pacing and the backoff after a 429 stay in each
process.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from batchgen.store.pg import db
from batchgen.store.pg.queries import query

__all__ = ["DEFAULT_MARGIN_SHARE", "SLOT_TIMEOUT_S", "KeySlot", "KeySlots", "RoundTrips"]

#: the margin as a share of the window, when none is given (0.5 s of a 10 s window)
DEFAULT_MARGIN_SHARE = 0.05

#: seconds a slot statement may take before the request fails, unsent (module docstring)
SLOT_TIMEOUT_S = 5.0

#: the key's requests older than two spans are deleted every this many slots asked
_PRUNE_EVERY = 100


@dataclass
class RoundTrips:
    """How long the database took to answer a slot request (the benchmark reads it)."""

    count: int = 0
    total_s: float = 0.0
    max_s: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)

    @property
    def mean_s(self) -> float:
        return self.total_s / self.count if self.count else 0.0


class KeySlots:
    """Take request slots for keys, on a connection of its own (a request's slot never
    waits behind the store's writes). Several keys may share it: one query at a time."""

    def __init__(
        self,
        conn: db.Conn,
        *,
        url: str = "",
        limit: int = 20,
        window_s: float = 10.0,
        margin_s: float | None = None,
        timeout_s: float = SLOT_TIMEOUT_S,
    ) -> None:
        self._conn = conn
        self._url = url  # for error messages only (masked there)
        #: seconds a slot statement may take (then ``StateWriteError``, the request unsent)
        self.timeout_s = timeout_s
        self.limit = limit
        self.window_s = window_s
        #: seconds a slot's request may take to arrive after the slot was recorded
        self.margin_s = DEFAULT_MARGIN_SHARE * window_s if margin_s is None else margin_s
        #: the span counted: the window plus the margin for the send-to-arrival delay
        self.span_s = window_s + self.margin_s
        self.round_trips = RoundTrips()
        self.given_back = 0  # slots taken and then not used
        self._asked = 0
        self._lock = asyncio.Lock()
        newline = sql.SQL("\n")
        self._take = newline.join([query("lock_key"), query("take_slot")])
        self._take_and_prune = newline.join(
            [query("lock_key"), query("take_slot"), query("prune_slots")]
        )

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        limit: int = 20,
        window_s: float = 10.0,
        margin_s: float | None = None,
        timeout_s: float = SLOT_TIMEOUT_S,
    ) -> KeySlots:
        """Connect; the schema must exist (``PostgresStore.open`` makes it)."""
        conn = await db.connect(url)
        return cls(
            conn, url=url, limit=limit, window_s=window_s, margin_s=margin_s, timeout_s=timeout_s
        )

    def for_key(self, fingerprint: str) -> KeySlot:
        """The slot source of one key (give it to that key's limiter)."""
        return KeySlot(self, fingerprint)

    async def take(self, key_fingerprint: str, *, limit: int | None = None) -> float:
        """0.0: a slot is taken, send now. Otherwise the seconds to wait before asking
        again (nothing taken). ``limit``: fewer than the key's (an early poll leaves
        room for others' submissions)."""
        wait, _ = await self.take_at(key_fingerprint, limit=limit)
        return wait

    async def take_at(
        self, key_fingerprint: str, *, limit: int | None = None
    ) -> tuple[float, datetime | None]:
        """``take``, and the slot's time on the database's clock (None: refused)."""
        allowed = self.limit if limit is None else max(1, min(limit, self.limit))
        params = {"key": key_fingerprint, "span": self.span_s, "limit": allowed}
        async with self._lock:
            self._asked += 1
            text = self._take_and_prune if self._asked % _PRUNE_EVERY == 0 else self._take
            started = time.perf_counter()
            try:
                async with db.bounded(self._url, self.timeout_s, "a request slot"):
                    cur = psycopg.AsyncClientCursor(self._conn)
                    await cur.execute(text, params)
                    cur.nextset()  # past the lock's row: the verdict
                    row = await cur.fetchone()
            except psycopg.Error as exc:
                raise self._failure(exc) from None
            self.round_trips.add(time.perf_counter() - started)
        assert row is not None
        if row["taken"]:
            return 0.0, row["at"]
        return max(0.001, float(row["wait"] or 0.0)), None

    async def give_back(self, key_fingerprint: str, at: datetime) -> None:
        """Forget the slot taken at ``at``: its request was never sent."""
        async with self._lock:
            try:
                params = {"key": key_fingerprint, "at": at}
                async with db.bounded(self._url, self.timeout_s, "a request slot given back"):
                    await self._conn.execute(query("give_back_slot"), params)
            except psycopg.Error as exc:
                raise self._failure(exc) from None
            self.given_back += 1

    def _failure(self, exc: psycopg.Error) -> Exception:
        failure = db.pg_failure(exc, self._url)
        assert failure is not None
        return failure

    async def aclose(self) -> None:
        await self._conn.close()


class KeySlot:
    """One key's slots in ``KeySlots``: the slot source of that key's limiter."""

    def __init__(self, slots: KeySlots, fingerprint: str) -> None:
        self._slots = slots
        self.fingerprint = fingerprint
        self.margin_s = slots.margin_s
        self._last: datetime | None = None  # the slot taken last, until it is used

    async def take(self, slots: int) -> float:
        """0.0: a slot is recorded for a request sent now (at most ``slots`` in the
        span); else the seconds to wait before asking again."""
        wait, self._last = await self._slots.take_at(self.fingerprint, limit=slots)
        return wait

    async def give_back(self) -> None:
        """The slot taken last was not used (its request did not leave)."""
        at, self._last = self._last, None
        if at is not None:
            await self._slots.give_back(self.fingerprint, at)
