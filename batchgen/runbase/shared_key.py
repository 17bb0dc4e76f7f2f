"""The part of a key's request limit that is not this process's alone.

A ``RequestLimiter`` bounds what its own process sends. Two things beyond it may hold
the same key's requests:

- **the key's window file** (``shared_window``): every process of this user on this
  host, whatever database each uses, and restarts;
- **a slot source**: every process on every host that shares the run's PostgreSQL
  database (``batchgen.store.pg.slots.KeySlot``: a slot per request on the database's
  clock). The runner gives one to each key's limiter when the state is PostgreSQL.

``SharedKey.take`` asks them in that order of cost: the file's last look (no I/O: a
wait it already knows), then the slot source (one database round trip: where a
contended key is refused, so that a refusal writes nothing to the file), then the file
(a worker thread; ``shared_window``). A slot the source granted but the file then
refused is given back to the source: the request does not leave. Both stay on with
PostgreSQL: the file is what holds the key between this run and another batchgen of
this user on this host that does not use this database (a SQLite batch, another
PostgreSQL), and it carries the pause after a 429 to them.

**A slot must be used at once.** The source records a slot at the database's "now" and
counts it for a window plus its margin; a request sent much later could land beside a
window's worth of other hosts' requests. So a slot whose asking began more than half
the source's margin ago (the process was paused: a VM stall, ``SIGSTOP``; or the
database answered slowly) is given back and asked for again; it never goes out. The
other half of the margin is for the way to the API, and for the client's few steps
between this check and the socket write (a process stopped during those, well under a
millisecond of work, is not caught). A pause makes one
stale slot; a database that answers too late every time (farther than a quarter of a
second at the default margin) would make nothing but stale slots, a run that hangs:
after ten in a row the request fails with ``StateWriteError`` (75) saying so.

The source's errors are not caught here: the database unreachable raises
``StateWriteError`` (75) out of ``RequestLimiter.acquire``, and the request is not sent.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

from batchgen.clock import Clock
from batchgen.errors import StateWriteError
from batchgen.runbase.shared_window import SharedSlots, SharedWindow

__all__ = ["SharedKey", "SlotSource"]

log = logging.getLogger(__name__)

#: the wait after a slot given back for being stale: ask again at once
_AGAIN_S = 0.001

#: stale slots in a row that mean the database is too slow, not that we paused
_STALE_IN_A_ROW = 10


class SlotSource(Protocol):
    """One key's slots, shared beyond this host (``store.pg.slots.KeySlot``)."""

    #: seconds the source counts beyond the window for a slot's request to arrive
    margin_s: float

    async def take(self, slots: int) -> float:
        """0.0: a slot is recorded, send now (at most ``slots`` in the source's span);
        else the seconds to wait before asking again (nothing recorded)."""
        ...

    async def give_back(self) -> None:
        """The slot taken last is not used: forget it."""
        ...


class SharedKey:
    """A limiter's view of its key beyond its process: the window file and the slot
    source, either or both. One caller at a time (the limiter's queue head)."""

    def __init__(
        self, window_file: SharedWindow | None, source: SlotSource | None, clock: Clock
    ) -> None:
        self._file = None if window_file is None else SharedSlots(window_file, clock.now)
        self._source = source
        self._clock = clock
        self._refused_until = -math.inf  # monotonic: the source said "not before"
        self._stale = 0  # stale slots since the last one used

    async def take(self, slots: int, file_span: float, keep: int) -> float:
        """0.0 when a slot is recorded wherever the key is shared (send now), else the
        seconds to wait before asking again. ``slots`` per window, ``file_span``: the
        file's window (``keep``: its log's length)."""
        file, source = self._file, self._source
        if file is not None:
            hint = file.wait_hint(slots, file_span)
            if hint > 0.0:
                return hint
        asked = self._clock.monotonic()
        if source is not None:
            wait = await source.take(slots)
            if wait > 0.0:
                self._refused_until = self._clock.monotonic() + wait
                return wait
        if file is not None:
            wait = await file.take(slots, file_span, keep)
            if wait > 0.0:
                if source is not None:
                    await source.give_back()
                return wait
        if source is not None:
            took = self._clock.monotonic() - asked
            if took > source.margin_s / 2:
                await source.give_back()  # stale: see the module docstring
                self._stale_slot(took, source.margin_s / 2)
                return _AGAIN_S
            self._stale = 0
        return 0.0

    def _stale_slot(self, took: float, allowed: float) -> None:
        self._stale += 1
        if self._stale == 1:
            log.warning(
                "a request slot came %.3fs after asking (more than %.3fs: paused, or the "
                "state database slow): given back, asking again",
                took,
                allowed,
            )
        if self._stale >= _STALE_IN_A_ROW:
            raise StateWriteError(
                f"the state database granted {self._stale} request slots in a row too late "
                f"to use (the last {took:.3f}s after asking; a slot must be used within "
                f"{allowed:.3f}s): too slow or too far for the key's limit; stopped: once "
                "it answers promptly, `batchgen resume`"
            )

    def has_room(self, slots: int, file_span: float, reserve: int) -> bool:
        """Room for one more and ``reserve`` besides, as of the last looks."""
        if self._clock.monotonic() < self._refused_until:
            return False
        return self._file is None or self._file.has_room(slots, file_span, reserve)

    def pause(self, seconds: float) -> None:
        """A 429: this host's processes of the key pause ``seconds`` (the file)."""
        if self._file is not None:
            self._file.pause(seconds)
