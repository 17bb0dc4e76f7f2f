"""When to poll a run: a schedule learned from the runs that already finished.

Every poll spends a request a submission could have used, so the engine polls a run
when it is probably done, not every two seconds. For each run class (model,
resolution, duration) we keep the true generation times the API reports
(``completedAt - createdAt``, not quantised by our polling) of the last few hundred
runs, and:

- schedule the first poll of a run at a high quantile (p85 by default) of those
  durations after its submission, so most runs need exactly one poll;
- when a poll finds the run still working, poll again after a quarter of the median
  (never sooner than ``min_interval_s``), but never before the p85 point;
- before anything was observed, use the model's typical generation time as the prior,
  and *probe*: the oldest running job of the class is polled at doubling ages
  (``min_interval_s``, 2x, 4x, ...) up to the prior. A probe costs a handful of
  requests once per class and process; without it a time-scaled simulator (runs of a
  tenth of a second) or a faster-than-typical provider would idle until the prior.
- when the request limiter has slack, the engine may poll earlier than scheduled
  (``early_ok``): not before the median of the class, and not more often than the gap.

Times here are plain floats on one monotonic clock; the engine owns the clock.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from batchgen.runbase.models import load_model

#: (model, resolution, duration): runs of one class take about as long as each other
RunClass = tuple[str, str, str]


def run_class(model: str, input: dict[str, Any]) -> RunClass:
    try:
        full = load_model(model).with_defaults(input)
    except KeyError:
        full = input
    return (model, str(full.get("resolution", "")), str(full.get("duration", "")))


def prior_seconds(cls: RunClass) -> float:
    """The model's typical generation time for the class, 60 s when unknown."""
    model, resolution, duration = cls
    try:
        return float(load_model(model).typical_s[resolution][duration])
    except KeyError:
        return 60.0


@dataclass(frozen=True)
class PollPolicy:
    #: first poll at this quantile of the observed durations
    quantile: float = 0.85
    #: later polls this share of the median apart
    backoff_share: float = 0.25
    #: never poll one run more often than this (seconds)
    min_interval_s: float = 1.0
    #: durations kept per class (the most recent ones)
    window: int = 200


class DurationModel:
    """Observed generation times per run class, and the poll schedule they imply."""

    def __init__(
        self,
        policy: PollPolicy | None = None,
        *,
        prior: Callable[[RunClass], float] = prior_seconds,
    ) -> None:
        self.policy = policy or PollPolicy()
        self._prior = prior
        self._recent: dict[RunClass, deque[float]] = {}
        self._sorted: dict[RunClass, list[float]] = {}
        self.observed = 0

    # ------------------------------------------------------------ learning

    def observe(self, cls: RunClass, seconds: float) -> None:
        recent = self._recent.setdefault(cls, deque(maxlen=self.policy.window))
        if len(recent) == recent.maxlen:
            old = recent[0]
            values = self._sorted[cls]
            del values[bisect.bisect_left(values, old)]
        recent.append(seconds)
        bisect.insort(self._sorted.setdefault(cls, []), seconds)
        self.observed += 1

    def seed(self, items: Iterable[tuple[RunClass, float]]) -> int:
        n = 0
        for cls, seconds in items:
            self.observe(cls, seconds)
            n += 1
        return n

    def known(self, cls: RunClass) -> bool:
        return bool(self._sorted.get(cls))

    def quantile(self, cls: RunClass, q: float) -> float:
        values = self._sorted.get(cls)
        if not values:
            return self._prior(cls)
        pos = q * (len(values) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(values) - 1)
        return values[lo] + (values[hi] - values[lo]) * (pos - lo)

    def first_poll_s(self, cls: RunClass) -> float:
        return self.quantile(cls, self.policy.quantile)

    def median_s(self, cls: RunClass) -> float:
        return self.quantile(cls, 0.5)

    def gap_s(self, cls: RunClass) -> float:
        return max(self.policy.min_interval_s, self.policy.backoff_share * self.median_s(cls))

    # ------------------------------------------------------------ schedule

    def next_poll(
        self,
        cls: RunClass,
        *,
        submitted: float,
        last_poll: float | None,
        polls: int,
        probe: bool = False,
    ) -> float:
        """When a run submitted at ``submitted`` should next be polled (same clock).

        ``polls``: polls of this run so far; ``probe``: this run is the class's probe.
        """
        first = self.first_poll_s(cls)
        if probe and not self.known(cls):
            at = submitted + min(first, self.policy.min_interval_s * 2.0**polls)
            return at if last_poll is None else max(at, last_poll + self.policy.min_interval_s)
        target = submitted + first
        if last_poll is None:
            return target
        return max(target, last_poll + self.gap_s(cls))

    def early_ok(
        self, cls: RunClass, *, now: float, submitted: float, last_poll: float | None
    ) -> bool:
        """May this run be polled now, ahead of schedule, with a spare request?"""
        age = now - submitted
        since = now - (submitted if last_poll is None else last_poll)
        if self.known(cls):
            return age >= self.median_s(cls) and since >= self.gap_s(cls)
        # Unknown class: doubling ages, so a fast provider is found in a few requests.
        return age >= self.policy.min_interval_s and since >= max(
            self.policy.min_interval_s, age / 2
        )
