"""Job states and the only transitions allowed between them."""

from __future__ import annotations

import enum

from batchgen.errors import IllegalTransition


class JobState(enum.StrEnum):
    QUEUED = "queued"  # waiting to be submitted (again)
    SUBMITTING = "submitting"  # intent committed, POST may be in flight
    IN_DOUBT = "in_doubt"  # a POST whose outcome is unknown, held for a decision
    RUNNING = "running"  # run id recorded; polled until it ends
    DOWNLOADING = "downloading"  # run succeeded; outputs being brought home
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


Q, S, D, R, DL, OK, F, C = (
    JobState.QUEUED,
    JobState.SUBMITTING,
    JobState.IN_DOUBT,
    JobState.RUNNING,
    JobState.DOWNLOADING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELED,
)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # queued -> failed: local checks fail (image changed on disk, budget can never fit)
    # queued -> running: a queued job found holding a paid run is polled, never resent
    Q: frozenset({S, C, F, R}),
    # submitting -> queued: definitely not sent / retry later; -> in_doubt: answer lost
    S: frozenset({R, Q, D, F, C}),
    # in_doubt -> submitting: resubmit with the same idempotency key
    D: frozenset({S, Q, F, C}),
    # running -> queued: the run failed (refunded) or was lost (404) and policy resubmits
    R: frozenset({R, DL, Q, F, C}),
    # downloading -> running: URLs expired and the run must be fetched again
    DL: frozenset({DL, R, OK, F}),
    # succeeded -> downloading: its files were deleted or damaged since; the run is paid
    OK: frozenset({DL}),
    # batchgen retry --failed; -> downloading: the run is paid, only its files are missing
    F: frozenset({Q, DL}),
    # a later run of the manifest re-enables canceled jobs: one holding a paid run is
    # polled again (-> running), one canceled in doubt is in doubt again
    C: frozenset({Q, R, D}),
}

TERMINAL: frozenset[JobState] = frozenset({OK, F, C})
#: states in which a paid run may exist that we must still poll or download
PAID: frozenset[JobState] = frozenset({R, DL})


def check_transition(old: JobState, new: JobState) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"job state {old.value} -> {new.value} is not allowed")
