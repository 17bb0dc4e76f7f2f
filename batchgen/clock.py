"""Injected time: the engine never calls time.time() or asyncio.sleep() directly."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Protocol


def iso_utc(t: float) -> str:
    """A wall-clock time as ISO 8601 in UTC with milliseconds (logs, exports, the API)."""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def api_duration(created_at: str | None, completed_at: str | None) -> float | None:
    """Seconds between the API's ``createdAt`` and ``completedAt`` (ISO 8601), if both parse."""
    if not created_at or not completed_at:
        return None
    try:
        start = dt.datetime.fromisoformat(created_at)
        end = dt.datetime.fromisoformat(completed_at)
    except ValueError:
        return None
    if (start.tzinfo is None) != (end.tzinfo is None):
        return None
    seconds = (end - start).total_seconds()
    return seconds if seconds >= 0 else None


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (recorded in the database)."""

    def monotonic(self) -> float:
        """Seconds for measuring intervals."""

    async def sleep(self, seconds: float) -> None: ...

    def today(self) -> dt.date: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def today(self) -> dt.date:
        return dt.date.today()


class FakeClock:
    """A clock that only moves when told to (or when slept on). For tests."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def monotonic(self) -> float:
        return self._t

    async def sleep(self, seconds: float) -> None:
        self._t += max(0.0, seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self._t += seconds

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self._t).date()
