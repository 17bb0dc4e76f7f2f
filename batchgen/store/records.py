"""The plain values the store and the engine exchange: job and batch records, the
changes a move may make, ledger entries, and the store's small answers.

Frozen dataclasses without a database type in sight, so that the engine, the
in-memory store and a later PostgreSQL store share them (``store.interface``).
``Totals`` and ``PossibleJob`` are the ledger's sums, defined with the stdlib-only
ledger reader (``store.ledger``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from batchgen.errors import CommandError, ExitCode
from batchgen.states import JobState

#: states whose jobs the engine holds in memory (``load_active`` returns them)
ACTIVE: tuple[JobState, ...] = (
    JobState.SUBMITTING,
    JobState.IN_DOUBT,
    JobState.RUNNING,
    JobState.DOWNLOADING,
)
#: ``error_code`` of a job whose paid run only lacked its download (``retry --failed``
#: fetches again instead of resubmitting)
DOWNLOAD_FAILED = "download_failed"
#: ``error_code`` of a job whose paid run is gone (404) before its files were home
OUTPUT_LOST = "output_lost"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A ledger row to write with a job's move (same atomic step)."""

    kind: str  # charge | refund | possible
    amount_micro_usd: int
    run_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as stored: everything the engine reads of it."""

    id: int
    batch_id: int
    #: stable content hash: model + canonical input + image bytes + variant
    key: str
    #: position in the deterministic expansion order
    idx: int
    variant: int
    #: the canonical API input (local images as references, not bytes)
    input: Mapping[str, Any]
    #: axis name -> value label (template variables included)
    axes: Mapping[str, Any]
    #: False once the manifest no longer lists this job
    listed: bool
    state: JobState
    run_id: str | None = None
    #: submissions made (a refunded failure starts a new attempt)
    attempts: int = 0
    #: transient errors (500, network) within the current attempt
    errors: int = 0
    idem_key: str | None = None
    #: wall-clock time before which a requeued job is not sent again
    next_attempt_at: float = 0.0
    last_error: str | None = None
    error_code: str | None = None
    estimate_micro_usd: int = 0
    #: what the POST answered (0 again after a refund); spend is the ledger's sum
    cost_micro_usd: int = 0
    submitted_at: float | None = None
    #: the API's createdAt / completedAt of the run (ISO text, as the API sent it)
    run_created_at: str | None = None
    run_completed_at: str | None = None
    finished_at: float | None = None
    #: the saved files, relative to the batch's output folder, and their sha256
    output_paths: tuple[str, ...] = ()
    checksums: tuple[str, ...] = ()
    #: a decoder check mismatch, shown not hidden
    media_note: str | None = None
    updated_at: float = 0.0
    #: the fingerprint of the key that created its run (``key_fingerprint``), set with
    #: the intent; the run is polled with that key only (runs are visible to their key)
    key_fingerprint: str | None = None


class JobChanges(TypedDict, total=False):
    """The fields a move may set along with the state (any subset)."""

    run_id: str | None
    attempts: int
    errors: int
    idem_key: str | None
    next_attempt_at: float
    last_error: str | None
    error_code: str | None
    estimate_micro_usd: int
    cost_micro_usd: int
    submitted_at: float | None
    run_created_at: str | None
    run_completed_at: str | None
    finished_at: float | None
    output_paths: tuple[str, ...]
    checksums: tuple[str, ...]
    media_note: str | None
    listed: bool
    key_fingerprint: str | None


#: the names a move accepts (checked at run time too: a typo is a bug, not a no-op)
CHANGEABLE: frozenset[str] = frozenset(JobChanges.__annotations__)


def check_changes(changes: Mapping[str, Any]) -> None:
    """``TypeError`` for a field a move may not set (a bug in the caller)."""
    unknown = sorted(set(changes) - CHANGEABLE)
    if unknown:
        raise TypeError(f"a move cannot set {', '.join(unknown)}")


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: int
    #: resolved name (date templates already applied)
    name: str
    model: str
    manifest_path: str
    manifest_sha256: str
    out_dir: str
    filename_template: str
    #: the effective limits: rate, concurrency, budget_usd, max_attempts, ...
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: the date the name and out_dir templates were evaluated with (ISO)
    run_date: str | None = None
    canceled: bool = False
    abandon: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class BatchFlags:
    """What ``batchgen cancel`` may set at any time."""

    canceled: bool
    abandon: bool


@dataclass(frozen=True, slots=True)
class Failure:
    key: str
    idx: int
    error: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class RunTimes:
    """A finished run of a model, for learning how long its runs take."""

    input: Mapping[str, Any]
    created_at: str
    completed_at: str


class BudgetReached(CommandError):
    """An intent refused by the store: with it the batch's spend could pass its budget
    (PostgreSQL checks it in the intent's transaction, for every worker at once). The
    engine takes it as its budget stop (exit 4). Here, not in ``store.pg``, so the
    engine can catch it without importing psycopg."""

    exit_code = ExitCode.BUDGET
