"""Runs: when each one leaves the queue and finishes, and what it looks like then.

A run's whole future is drawn when it is created (seeded): a queue wait, a
generation time centred on the model's typical time for that resolution and
duration, and whether it fails. Its status is then read off the clock on every
GET, so nothing ticks in the background. ``RunBook.settle`` books what finished
(success counted, failure refunded exactly once) in the order runs end.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchgen.clock import iso_utc
from batchgen.runbase.models import ModelSpec
from batchgen.sim.config import SimConfig

#: spread of the generation time around the typical one (log-normal sigma)
GEN_SIGMA = 0.12
#: mean queue wait as a fraction of the typical generation time
QUEUE_FRACTION = 0.1
FAILED_MESSAGE = "generation failed"


@dataclass
class SimRun:
    id: str
    model: str
    account: int  # index of the key that created it
    input: dict[str, Any]  # with the model's defaults filled in
    cost: int  # micro-USD
    created: float  # wall clock (time.time())
    started: float  # leaves the queue: pending -> processing
    ends: float  # succeeded or failed
    fails: bool
    settled: bool = False
    url_views: int = 0  # how many answers carried URLs (for stale_first_url)

    def status(self, now: float) -> str:
        if now < self.started:
            return "pending"
        if now < self.ends:
            return "processing"
        return "failed" if self.fails else "succeeded"


@dataclass
class Timing:
    """Draws queue wait and generation time for new runs (reads the config live)."""

    rng: random.Random
    config: SimConfig

    def draw(self, spec: ModelSpec, input: dict[str, Any]) -> tuple[float, float, bool]:
        typical = spec.typical_seconds(input)
        gen = typical * min(max(self.rng.lognormvariate(0.0, GEN_SIGMA), 0.6), 1.6)
        queue = min(self.rng.expovariate(1.0 / (QUEUE_FRACTION * typical)), typical)
        fails = self.rng.random() < self.config.fail_rate
        if fails:  # failures show part-way through generation
            gen *= self.rng.uniform(0.5, 1.0)
        scale = self.config.time_scale
        return queue * scale, gen * scale, fails


@dataclass
class RunBook:
    """Every run, and the order in which unsettled ones end."""

    runs: dict[str, SimRun] = field(default_factory=dict)
    _ending: list[tuple[float, str]] = field(default_factory=list)

    def add(self, run: SimRun) -> None:
        self.runs[run.id] = run
        heapq.heappush(self._ending, (run.ends, run.id))

    def settle(self, now: float, book: Callable[[SimRun], None]) -> None:
        """Call ``book`` once for every run that has ended by ``now``, in end order."""
        while self._ending and self._ending[0][0] <= now:
            _, run_id = heapq.heappop(self._ending)
            run = self.runs[run_id]
            if not run.settled:
                run.settled = True
                book(run)

    def in_flight(self, now: float) -> dict[str, int]:
        counts = {"pending": 0, "processing": 0}
        for run in self.runs.values():
            status = run.status(now)
            if status in counts:
                counts[status] += 1
        return counts


def view(
    run: SimRun, now: float, urls: Callable[[SimRun], list[str]], *, created: bool = False
) -> dict[str, Any]:
    """The run as the API shows it at ``now``; ``created``: the answer to the POST that
    created it, always ``pending`` like the real service's (even at time scale 0)."""
    status = "pending" if created else run.status(now)
    out: dict[str, Any] = {
        "id": run.id,
        "model": run.model,
        "status": status,
        "costUsd": run.cost,
        "createdAt": iso_utc(run.created),
    }
    if status == "succeeded":
        out["output"] = {"urls": urls(run)}
        out["completedAt"] = iso_utc(run.ends)
    elif status == "failed":
        out["completedAt"] = iso_utc(run.ends)
        out["error"] = {"message": FAILED_MESSAGE, "code": "generation_failed"}
    return out
