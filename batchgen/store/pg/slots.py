"""One key's request limit across processes and hosts: a sliding-window log in
PostgreSQL, on the database's clock.

Runbase allows a key 20 requests per 10 s. Workers on several hosts sharing a key
share that limit through ``key_slot``: before each request a worker *takes a slot* in
one transaction that holds the key's advisory lock, counts the key's requests in the
last ``window_s + margin_s`` seconds of the database's clock (``clock_timestamp()``)
and records its own only if fewer than ``limit`` were sent. The margin covers the
delay between taking the slot and the request's arrival at the API (a round trip to
the database, then the send): two requests whose slots are a full window apart can
arrive a little closer together. Hosts' own clocks never enter: a host whose clock is
off, or that paused, still counts on the database's.

A refused slot comes back as the seconds until the oldest request in the span leaves
it: the caller waits that long (on its own clock: a wait only delays) and asks again.
This is layer 1 of ``batchgen.runbase.ratelimit`` (the hard bound) moved to the shared
database; the pacing and the backoff after a 429 stay in each process. Not wired into
the engine yet.
"""

from __future__ import annotations

import asyncio

from batchgen.store.pg import db
from batchgen.store.pg.queries import query

__all__ = ["KeySlots"]


class KeySlots:
    """Take request slots for keys, on a connection of its own (a request's slot never
    waits behind the store's writes)."""

    def __init__(
        self, conn: db.Conn, *, limit: int = 20, window_s: float = 10.0, margin_s: float = 0.5
    ) -> None:
        self._conn = conn
        self.limit = limit
        #: the span counted: the window plus the margin for the send-to-arrival delay
        self.span_s = window_s + margin_s
        self._taken = 0
        #: one transaction at a time on the connection (several keys may share it)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, url: str, *, limit: int = 20, window_s: float = 10.0, margin_s: float = 0.5
    ) -> KeySlots:
        """Connect; the schema must exist (``PostgresStore.open`` makes it)."""
        conn = await db.connect(url)
        return cls(conn, limit=limit, window_s=window_s, margin_s=margin_s)

    async def take(self, key_fingerprint: str) -> float:
        """0.0: a slot is taken, send now. Otherwise the seconds to wait before asking
        again (nothing taken)."""
        params = {"key": key_fingerprint, "span": self.span_s, "limit": self.limit}
        async with self._lock, self._conn.transaction():
            await self._conn.execute(query("lock_key"), params)
            cur = await self._conn.execute(query("take_slot"), params)
            row = await cur.fetchone()
            assert row is not None
            if row["taken"]:
                self._taken += 1
                if self._taken % 100 == 0:  # now and then, not on every request
                    await self._conn.execute(query("prune_slots"), params)
                return 0.0
        return max(0.001, float(row["wait"] or 0.0))

    async def aclose(self) -> None:
        await self._conn.close()
