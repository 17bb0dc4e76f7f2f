"""One request budget per API key, shared by every POST and GET.

Runbase allows 20 requests per 10 s per key, submissions and polls together. The
limiter guarantees that no window of ``window_s`` seconds ever holds more than
``max_requests`` of our requests, the very first window included, and hands the
free slots out by priority (lower number first): 0 overdue poll, 1 submission,
2 early poll.

Four layers decide when the next request may go:

1. A sliding-window log of send times: the hard bound. A request goes only if fewer
   than ``limit`` requests were sent in the last ``window_s + margin_s`` seconds. The
   margin absorbs network jitter between our send time and the server's receive
   time (two requests sent exactly ``window_s`` apart can arrive closer together).
2. A token bucket that paces requests evenly (``limit`` per window, bursts of at most
   ``burst``), so a free slot appears every ``window/limit`` seconds instead of all
   of them at once when the window rolls over. Urgent requests then never wait
   long behind a burst of early polls.
3. A 429 pauses everything for a window plus jitter (or Retry-After) and halves the
   limit; each clean window after the pause doubles it back (full rate within 3).
4. With ``shared``, a slot is also recorded in the key's window file, shared by this
   user's processes and restarts, on wall time (``now()``; ``shared_window``); with
   ``slots``, in PostgreSQL, shared by every host (``shared_key``: both may be on).

Why not ``aiolimiter.AsyncLimiter``: as (20, 10) its full bucket lets ~39 requests
through in the first 10 s; as (1, 0.5) it paces right but reads the event loop's clock
(not the injected ``batchgen.clock``), serves first-come first-served (no priorities)
and fixes its rate at construction (a 429 changes it). Layer 2 is that leaky bucket on
the injected clock; aiolimiter would decide none of layers 1, 3 and 4, so it is not a
dependency (tests/integration/test_client_sim.py keeps these numbers honest).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

from batchgen.clock import Clock, SystemClock
from batchgen.runbase.shared_key import SharedKey, SlotSource
from batchgen.runbase.shared_window import SharedWindow

#: what Runbase allows one key: 20 requests per 10 s, POST and GET together
DEFAULT_RATE: tuple[int, float] = (20, 10.0)

#: the REQUESTS/SECONDS notation of ``--rate`` and a manifest's ``limits.rate``
#: (``20/10s``, ``20/10``, ``2/1m``); also the manifest JSON Schema's pattern
RATE_PATTERN = r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(s|sec|seconds?|m|min)?\s*$"


def rate_from_text(text: str) -> tuple[int, float] | None:
    """``20/10s`` -> (20, 10.0), ``2/1m`` -> (2, 60.0); None when it is not a rate."""
    m = re.fullmatch(RATE_PATTERN, text)
    if not m or int(m.group(1)) < 1 or float(m.group(2)) <= 0:
        return None
    seconds = float(m.group(2)) * (60 if (m.group(3) or "s").startswith("m") else 1)
    return int(m.group(1)), seconds


def settings_rate(value: Any) -> tuple[int, float] | None:
    """A rate as a batch's settings store it (``[20, 10.0]``); None when absent."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), float(value[1])
    if isinstance(value, dict) and "requests" in value:
        return int(value["requests"]), float(value.get("seconds") or value.get("window_s") or 10)
    return None


#: below this many seconds, a wait is rounding noise: send now
_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """Counters for the progress display and the benchmark."""

    sent: int  # requests let through since the limiter was made
    penalties: int  # 429s reported through penalize()
    cuts: int  # multiplicative decreases (one per congestion event)
    waited: int  # acquisitions that had to wait at all
    wait_s: float  # total seconds spent waiting, summed over acquisitions
    limit: float  # current allowed requests per window (halved on 429, then doubled back)
    max_requests: int
    window_s: float
    in_window: int  # requests sent in the last window_s
    waiting: int  # acquisitions queued right now


class _Waiter:
    __slots__ = ("priority", "seq", "wake")

    def __init__(self, priority: int, seq: int) -> None:
        self.priority = priority
        self.seq = seq
        self.wake = asyncio.Event()

    def __lt__(self, other: _Waiter) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)


class RequestLimiter:
    """The shared budget of one API key. Make one per key and share it.

    ``acquire(priority)`` waits for a slot and returns the (monotonic) time it was
    granted; send the request right after. Report the answer with ``on_success()``
    or ``penalize(retry_after, sent_at=...)`` for a 429 RATE_LIMITED.
    """

    def __init__(
        self,
        max_requests: int = 20,
        window_s: float = 10.0,
        *,
        clock: Clock | None = None,
        margin_s: float | None = None,
        burst: int | None = None,
        min_requests: int = 1,
        decrease: float = 0.5,
        pause_jitter_s: float | None = None,
        rng: random.Random | None = None,
        history: int = 100_000,
        shared: SharedWindow | None = None,
        slots: SlotSource | None = None,
    ) -> None:
        """
        margin_s: extra seconds added to the window in the hard bound; default 0.15 s,
            at most 5% of the window (compressed time: tiny windows, next to no jitter).
        burst: how many requests may go back to back after a quiet spell; default a
            quarter of max_requests.
        decrease: factor applied to the limit on a 429; each clean window after
            the pause divides the limit by it again (0.5: halve, then double back).
        pause_jitter_s: a 429 without Retry-After pauses window_s plus up to this much
            (default 10% of the window), so several clients of one key spread out.
        history: send times kept for ``utilisation()``.
        shared: the key's window file (None: this process only).
        slots: the key's slots in the run's PostgreSQL (None: not shared beyond the host).
        """
        if max_requests < 1 or window_s <= 0:
            raise ValueError("max_requests must be >= 1 and window_s > 0")
        if not 0 < decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        self.max_requests = max_requests
        self.window_s = float(window_s)
        self.margin_s = min(0.15, 0.05 * window_s) if margin_s is None else float(margin_s)
        self.burst = max(1, max_requests // 4) if burst is None else max(1, burst)
        self.min_requests = max(1, min(min_requests, max_requests))
        self.decrease = decrease
        self.pause_jitter_s = 0.1 * window_s if pause_jitter_s is None else pause_jitter_s
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rng = rng if rng is not None else random.Random()

        self._limit = float(max_requests)
        self._log: deque[float] = deque()  # send times within the last window + margin
        self._history: deque[float] = deque(maxlen=history)
        now = self._clock.monotonic()
        self._tokens = float(self._capacity())
        self._tokens_at = now
        self._pause_until = -math.inf
        self._last_cut_at = -math.inf
        self._recover_at = math.inf  # when the limit is next divided by ``decrease``
        beyond = shared is not None or slots is not None  # this process
        self._shared = SharedKey(shared, slots, self._clock) if beyond else None
        self._asking = False  # the head is out at the file or the database
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

        self._sent = 0
        self._penalties = 0
        self._cuts = 0
        self._waited = 0
        self._wait_s = 0.0

    def __repr__(self) -> str:
        return (
            f"RequestLimiter({self.max_requests}/{self.window_s:g}s, limit={self._limit:.2f}, "
            f"in_window={self.sent_in_window()}, waiting={len(self._waiters)})"
        )

    # ------------------------------------------------------------ the budget

    @property
    def limit(self) -> float:
        """Requests per window currently allowed (halved on 429, doubled per clean window)."""
        self._recover(self._clock.monotonic())
        return self._limit

    @property
    def _span(self) -> float:
        return self.window_s + self.margin_s

    @property
    def _shared_span(self) -> float:  # two margins: processes stall apart (shared_window)
        return self.window_s + 2 * self.margin_s

    def _slots(self) -> int:
        return max(1, int(self._limit))

    def _capacity(self) -> int:
        return max(1, min(self.burst, self._slots()))

    def _rate(self) -> float:
        return self._limit / self._span

    def _refill(self, now: float) -> None:
        if now > self._tokens_at:
            gained = (now - self._tokens_at) * self._rate()
            self._tokens = min(float(self._capacity()), self._tokens + gained)
        self._tokens_at = max(self._tokens_at, now)

    def _prune(self, now: float) -> None:
        horizon = now - self._span
        log = self._log
        while log and log[0] <= horizon:
            log.popleft()

    def _delay(self, now: float) -> float:
        """Seconds until a request may go (0: right now), as far as this process knows."""
        self._recover(now)
        wait = self._pause_until - now
        self._prune(now)
        slots = self._slots()
        if len(self._log) >= slots:
            # the slots-th most recent send must leave the window first
            wait = max(wait, self._log[-slots] + self._span - now)
        self._refill(now)
        if self._tokens < 1.0:
            wait = max(wait, (1.0 - self._tokens) / self._rate())
        return max(0.0, wait)

    # ------------------------------------------------------------ acquiring

    async def acquire(self, priority: int = 1) -> float:
        """Wait for a slot; lower ``priority`` goes first (FIFO within a priority).

        Returns the monotonic time the slot was granted (pass it to ``penalize``).
        """
        me = _Waiter(priority, next(self._seq))
        heapq.heappush(self._waiters, me)
        started = self._clock.monotonic()
        try:
            now = await self._turn(me)
        except BaseException:
            self._leave(me)
            raise
        self._leave(me)  # wakes the next head, which runs once we have granted
        self._grant(now)
        if now - started > _EPS:
            self._waited += 1
            self._wait_s += now - started
        return now

    async def _turn(self, me: _Waiter) -> float:
        """Wait until ``me`` may send; the monotonic time it may."""
        shared = self._shared
        while True:
            if self._waiters[0] is not me or self._asking:
                # Only the head of the queue watches the clock; the others sleep
                # until whoever is ahead leaves (sent or cancelled) and wakes them.
                me.wake.clear()
                await me.wake.wait()
                continue
            now = self._clock.monotonic()
            delay = self._delay(now)
            if delay <= _EPS and shared is not None:
                # an early poll (2) leaves a burst free for other processes (shared_window)
                slots = self._slots() - (self.burst if me.priority >= 2 else 0)
                self._asking = True
                try:
                    delay = await shared.take(max(1, slots), self._shared_span, self.max_requests)
                finally:
                    self._asking = False
                    self._waiters[0].wake.set()  # a head that came meanwhile waits for us
                if delay <= _EPS:
                    return self._clock.monotonic()
            if delay <= _EPS:
                return now
            await self._clock.sleep(delay)

    def _grant(self, now: float) -> None:
        self._log.append(now)
        self._history.append(now)
        self._tokens -= 1.0
        self._sent += 1

    def _leave(self, me: _Waiter) -> None:
        if me in self._waiters:  # not always the head: cancelled, or overtaken at the file
            self._waiters.remove(me)
            heapq.heapify(self._waiters)
        if self._waiters:
            self._waiters[0].wake.set()

    # ------------------------------------------------------------ feedback

    def penalize(self, retry_after: float | None = None, *, sent_at: float | None = None) -> float:
        """A 429 RATE_LIMITED came back: pause, and cut the rate once per congestion event.

        ``retry_after`` (seconds, from the header or the error body) replaces the
        default pause of a window plus jitter. ``sent_at`` is what ``acquire`` returned
        for the rejected request: answers to requests sent before the last cut are
        the same congestion event and do not cut again. Returns the pause in seconds.
        """
        now = self._clock.monotonic()
        self._penalties += 1
        if retry_after is not None and retry_after >= 0:
            pause = retry_after + self.margin_s
        else:
            pause = self.window_s + self._rng.uniform(0.0, self.pause_jitter_s)
        self._pause_until = max(self._pause_until, now + pause)
        same_event = (
            sent_at <= self._last_cut_at
            if sent_at is not None
            else now < self._last_cut_at + self.window_s
        )
        if not same_event:
            self._refill(now)
            self._limit = max(float(self.min_requests), self._limit * self.decrease)
            self._tokens = min(self._tokens, float(self._capacity()))
            self._last_cut_at = now
            self._cuts += 1
        # the first clean window starts when the pause ends
        self._recover_at = self._pause_until + self._span
        if self._shared is not None:
            self._shared.pause(pause)
        return pause

    def _recover(self, now: float) -> None:
        """Undo one cut per clean window (a full window without a 429) since the pause."""
        if now < self._recover_at:
            return
        self._refill(now)
        while self._limit < self.max_requests and now >= self._recover_at:
            self._limit = min(float(self.max_requests), self._limit / self.decrease)
            self._recover_at += self._span
        self._recover_at = math.inf if self._limit >= self.max_requests else self._recover_at

    def on_success(self) -> None:
        """An answer that was not a 429 (the rate itself recovers with clean windows)."""
        self._recover(self._clock.monotonic())

    # ------------------------------------------------------------ looking at it

    def sent_in_window(self) -> int:
        """Requests sent in the last ``window_s`` seconds."""
        horizon = self._clock.monotonic() - self.window_s
        return sum(1 for t in self._log if t > horizon)

    def has_slack(self, reserve: int = 0) -> bool:
        """True when a request could go right now with nobody waiting for a slot.

        The engine spends slack on early polls. ``reserve`` keeps that many slots of
        the window free for what may come next (submissions, overdue polls).
        """
        if self._waiters:
            return False
        now = self._clock.monotonic()
        if self._delay(now) > _EPS:
            return False
        if self._shared is not None and not self._shared.has_room(
            max(1, self._slots() - self.burst), self._shared_span, reserve
        ):
            return False  # others' sends as last seen; an early poll leaves a burst
        return len(self._log) + reserve < self._slots()

    def waiting(self) -> int:
        return len(self._waiters)

    def stats(self) -> LimiterStats:
        self._recover(self._clock.monotonic())
        return LimiterStats(
            sent=self._sent,
            penalties=self._penalties,
            cuts=self._cuts,
            waited=self._waited,
            wait_s=self._wait_s,
            limit=self._limit,
            max_requests=self.max_requests,
            window_s=self.window_s,
            in_window=self.sent_in_window(),
            waiting=len(self._waiters),
        )

    def utilisation(self, start: float, end: float | None = None) -> float:
        """Share of the allowed rate (max_requests per window_s) used in [start, end).

        Times are the limiter clock's ``monotonic()``. Only the last ``history``
        send times are kept.
        """
        end = self._clock.monotonic() if end is None else end
        span = end - start
        if span <= 0:
            return 0.0
        sent = sum(1 for t in self._history if start <= t < end)
        return sent / (self.max_requests * span / self.window_s)
