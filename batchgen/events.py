"""What a run tells the people and machines watching it.

The engine calls every registered ``Observer``; the progress display, the JSON-lines
log, the metrics file, the live report and the notifier are observers. An observer
must be fast and must never raise into the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class TransitionEvent:
    at: float
    batch: str
    job_key: str
    job_idx: int
    from_state: str
    to_state: str
    run_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class RequestEvent:
    at: float
    method: str  # POST / GET
    route: str  # "POST /api/v1/runs", "GET /api/v1/runs/{id}", "GET /files"
    status: int | None  # None: no HTTP answer (network error)
    code: str | None = None  # API error code when there was one
    elapsed_s: float = 0.0


@dataclass(slots=True)
class RunSummary:
    batch: str
    exit_code: int
    reason: str  # "done", "jobs failed", "account: 402 insufficient_balance", ...
    counts: dict[str, int]  # state -> jobs
    in_doubt: int  # jobs that were in doubt at any point of this run
    requests: dict[str, dict[str, int]]  # route -> status -> count
    spend_micro_usd: int
    wall_s: float
    out_dir: str
    started_at: float
    finished_at: float
    failures: list[dict[str, Any]] = field(default_factory=list)  # key, idx, error
    #: succeeded jobs whose files were missing or damaged on disk, fetched again
    repaired: int = 0
    #: POSTs whose answer was lost and not shown to be replays: they may have charged
    #: a run (counted against the budget, not in ``spend_micro_usd``)
    possible_micro_usd: int = 0
    #: the jobs behind ``possible_micro_usd``: key, idx, possible_usd, paid_runs
    maybe_paid_twice: list[dict[str, Any]] = field(default_factory=list)
    #: several keys: per key fingerprint, its requests, runs, spend, whether it was
    #: refused, and its paid runs left unfollowed (empty with one key: as before)
    keys: list[dict[str, Any]] = field(default_factory=list)
    #: on a PostgreSQL batch several workers share: this process (id, host, pid) and
    #: what it did itself (requests, spend); the counts above are the whole batch's
    worker: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "counts": self.counts,
            "jobs": sum(self.counts.values()),
            "in_doubt": self.in_doubt,
            "requests": self.requests,
            "requests_total": sum(sum(v.values()) for v in self.requests.values()),
            "spend_usd": self.spend_micro_usd / 1_000_000,
            "spend_micro_usd": self.spend_micro_usd,
            "wall_s": round(self.wall_s, 3),
            "out_dir": self.out_dir,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "failures": self.failures,
            "repaired": self.repaired,
            "possible_usd": self.possible_micro_usd / 1_000_000,
            "possible_micro_usd": self.possible_micro_usd,
            "maybe_paid_twice": self.maybe_paid_twice,
            **({"keys": self.keys} if self.keys else {}),
            **({"worker": self.worker} if self.worker else {}),
        }


class Observer(Protocol):
    def transition(self, ev: TransitionEvent) -> None: ...

    def request(self, ev: RequestEvent) -> None: ...

    def finished(self, summary: RunSummary) -> None: ...
