"""One connection's writes, one at a time, first in first out, never taken back.

A write is queued the moment it is called and awaited through ``asyncio.shield``: a
cancelled caller (Ctrl-C, a hard stop) never cancels a write it asked for, and the
writer task finishes it anyway. ``aclose`` queues a sentinel behind every write already
asked for and waits for it: the queue is drained before the summary is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from batchgen.store.pg.db import Conn

__all__ = ["SerialWriter"]

log = logging.getLogger(__name__)
T = TypeVar("T")

Work = Callable[[Conn], Awaitable[Any]]


class SerialWriter:
    """Runs ``fn(conn)`` for each write in call order, on one connection."""

    def __init__(self, conn: Conn, ours: Callable[[BaseException], BaseException]) -> None:
        self._conn = conn
        #: turns a driver's error into ours (``StateWriteError``, ``StateError``)
        self._ours = ours
        self._queue: asyncio.Queue[tuple[Work, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="batchgen-pg-writer")
        self.closed = False

    async def _loop(self) -> None:
        while (item := await self._queue.get()) is not None:
            fn, fut = item
            try:
                result = await fn(self._conn)
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(self._ours(exc))
            else:
                if not fut.done():
                    fut.set_result(result)

    async def write(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        if self.closed:
            raise RuntimeError("the store is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._queue.put_nowait((fn, fut))  # queued now, in call order
        return await asyncio.shield(fut)

    async def aclose(self) -> None:
        """Wait for every write already asked for; refuse any later one."""
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        await self._task


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Read the outcome of a write whose caller was cancelled, so that its error is
    logged here rather than as "exception was never retrieved"."""
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("a store write failed after its caller left", exc_info=fut.exception())
