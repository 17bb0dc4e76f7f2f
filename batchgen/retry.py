"""What to do after a failure: one pure decision, and the backoff it waits.

``decide(error, attempt, stage, policy)`` is the one place that says "retry after d
seconds", "fail the job", "stop submitting but keep polling", "stop the batch", "hold
the job in doubt", "submit it again as a new attempt" or "set this key aside". It is
modelled on procrastinate's ``RetryStrategy.get_retry_decision``: no I/O, no clock, no
state of its own; its inputs are the error's class flags (``batchgen.errors``), the
counters in ``Attempt`` and the user's choices in ``RetryPolicy``. The callers (submit,
poll, collect, download, notify) act on the answer; ``tests/unit/test_retry_decide.py``
lists every error the API documents and every transport failure, per stage.

The backoff is exponential with *full jitter* (AWS architecture blog, "Exponential
Backoff And Jitter"), as stamina does by default, so many jobs failing at once do not
come back at once. Tests use ``RetryPolicy.zero()`` or inject a seeded ``random.Random``.

The rules, by stage (n = the failures counted so far, this one included):

- any stage: 401 stops the batch (with a key pool: sets the key aside); a class flagged
  ``stops_submitting`` (402, 403, 429 USAGE_EXCEEDED) stops submitting, and a poll or a
  download that met it is tried again after the backoff, until n reaches
  ``max_attempts``: then the batch stops (a key that cannot read its runs never will).
- submit: a 400-class answer fails the job; a POST sent without an answer is in doubt
  (``--in-doubt``: resent with the same key after the backoff, or held; held too once
  n reaches ``max_attempts``); a connection refused before anything was sent costs the
  job nothing, and stops the batch (resumable) once ``max_attempts`` refusals in a row
  lasted ``unreachable_s``; a 5xx fails the job once n reaches ``max_attempts``; a 429
  storm the client gave up on costs no try.
- poll: a 404 is a lost run (``--on-lost``: submitted again as a new attempt while
  attempts are left, else the job fails); any other failure polls again after the
  backoff, for as long as it takes.
- download: a 404 on the run's refresh means the paid run is gone: the job fails; an
  expired file link is refreshed and tried at once (the job fails after
  ``max_attempts`` refreshes); a cut, a 5xx, wrong bytes, a disk error are tried again
  after the backoff until n reaches ``max_attempts``; a try that brought new bytes
  (``Attempt.progressed``) costs nothing.
- notify: a retryable answer (429, 5xx) or no answer is tried again after the backoff
  until n reaches ``max_attempts``; anything else gives up at once.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Literal

from batchgen.errors import (
    BatchgenError,
    InvalidRequest,
    RunbaseError,
    RunNotFound,
    TransportError,
)

InDoubtPolicy = Literal["resubmit", "hold"]
LostPolicy = Literal["fail", "resubmit"]


class Stage(enum.StrEnum):
    SUBMIT = "submit"  #: POST /runs
    POLL = "poll"  #: GET /runs/{id} while the run is under way
    DOWNLOAD = "download"  #: fetching the files, and the GET that refreshes their links
    NOTIFY = "notify"  #: the --notify-url POST


class Action(enum.StrEnum):
    RETRY = "retry"  #: try the same thing again after ``delay_s`` (a POST: the same key)
    REFRESH = "refresh"  #: fetch fresh file links (one GET of the run), then try at once
    RESUBMIT = "resubmit"  #: submit the job again as a new attempt: a new key, paid again
    HOLD = "hold"  #: leave the job in doubt for ``batchgen retry --in-doubt``
    FAIL_JOB = "fail_job"  #: this job (or notification) fails for good
    #: no new POST; polls and downloads go on (a poll or download that met it: again
    #: after ``delay_s``)
    STOP_SUBMITTING = "stop_submitting"
    STOP_BATCH = "stop_batch"  #: stop at once, resumable; nothing else will work
    SET_KEY_ASIDE = "set_key_aside"  #: this key is refused: go on with the others


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    #: seconds to wait before the next try (``RETRY``; ``STOP_SUBMITTING`` at poll/download)
    delay_s: float = 0.0
    #: the failure counts against the job's tries (its ``errors``)
    counted: bool = False
    #: a POST may have created (and charged) a run: record a possible charge
    maybe_charged: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """The counters ``decide`` needs; a caller fills those of its stage.

    ``failures``: failures counted before this one, for what is being tried: the job's
    ``errors`` (submit), the run's poll errors (poll), the job's download errors or,
    within one file, the tries and refreshes (download), the notification's tries.
    """

    failures: int = 0
    #: the job's paid attempts so far (a lost run is resubmitted while below the maximum)
    attempts: int = 0
    #: POSTs refused at connect in a row before this one, any job (submit)
    refused_in_a_row: int = 0
    #: seconds since the first of those refusals (submit)
    refused_for_s: float = 0.0
    #: this try brought bytes never had before: it costs no try (download)
    progressed: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    """The user's choices about failures, and the backoff between tries."""

    #: total tries of one job, the first one included
    max_attempts: int = 5
    base_s: float = 1.0
    cap_s: float = 60.0
    jitter: bool = True
    rng: random.Random | None = field(default=None, repr=False, compare=False)
    #: ``--in-doubt``: a POST sent without an answer is resent with the same key, or held
    in_doubt: InDoubtPolicy = "resubmit"
    #: ``--on-lost``: a run the API no longer knows (404) fails its job, or is resubmitted
    on_lost: LostPolicy = "fail"
    #: refused connections for at least this long (and max_attempts in a row): stop
    unreachable_s: float = 30.0
    #: several keys: a refused key (401) is set aside rather than stopping the batch
    key_pool: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError("base_s and cap_s must not be negative")

    @classmethod
    def zero(cls, max_attempts: int = 5) -> RetryPolicy:
        """No waiting at all: for tests."""
        return cls(max_attempts=max_attempts, base_s=0.0, cap_s=0.0, jitter=False)

    def ceiling(self, n: int) -> float:
        """The longest wait before retry number ``n`` (0 = the first retry)."""
        if n < 0:
            raise ValueError("n must not be negative")
        # 2**n overflows a float long before n is large; past 64 doublings the cap rules.
        if n >= 64:
            return self.cap_s
        return min(self.cap_s, self.base_s * 2.0**n)

    def delay(self, n: int) -> float:
        """Seconds to wait before retry number ``n``: uniform in [0, ceiling(n)] with jitter."""
        top = self.ceiling(n)
        if not self.jitter:
            return top
        rng = self.rng if self.rng is not None else random
        return rng.uniform(0.0, top)


def decide(error: BaseException, attempt: Attempt, stage: Stage, policy: RetryPolicy) -> Decision:
    """What to do after ``error`` met at ``stage`` (the rules: module docstring).

    ``OSError`` (a disk full, an image gone) is the one foreign error decided here; for
    any other that is not a ``BatchgenError``, ``ValueError`` is raised and the caller
    lets the error go on (an error batchgen does not know stops the run: exit 70)."""
    if stage is Stage.NOTIFY:
        return _notify(error, attempt, policy)
    if not isinstance(error, BatchgenError | OSError):
        raise ValueError(f"not a batchgen error: {type(error).__name__}") from error
    if isinstance(error, BatchgenError):
        if error.stops_batch:
            return Decision(Action.SET_KEY_ASIDE if policy.key_pool else Action.STOP_BATCH)
        if error.stops_submitting:
            # One answer everywhere: a refusal of the account stops new POSTs; paid runs
            # are still polled and fetched, their request again after the backoff.
            n = attempt.failures + 1
            if stage is not Stage.SUBMIT and n >= policy.max_attempts:
                # A refusal that lasts on GETs (ip_not_allowed) would poll until
                # --max-runtime: the key cannot read its paid runs, so the batch stops.
                return Decision(Action.STOP_BATCH, counted=True)
            delay = 0.0 if stage is Stage.SUBMIT else policy.delay(n - 1)
            return Decision(Action.STOP_SUBMITTING, delay, counted=stage is not Stage.SUBMIT)
    if stage is Stage.SUBMIT:
        return _submit(error, attempt, policy)
    if stage is Stage.POLL:
        return _poll(error, attempt, policy)
    return _download(error, attempt, policy)


def _submit(error: BatchgenError | OSError, attempt: Attempt, policy: RetryPolicy) -> Decision:
    if isinstance(error, InvalidRequest) or not isinstance(error, RunbaseError):
        # the request is wrong, or its input (an image) changed or vanished on disk
        return Decision(Action.FAIL_JOB, counted=True)
    if isinstance(error, TransportError) and not error.sent:
        # Nothing left: not this job's fault. Refusals in a row (any job) that last
        # mean the service or our network is down: stop rather than fail every job.
        streak = attempt.refused_in_a_row + 1
        if streak >= policy.max_attempts and attempt.refused_for_s >= policy.unreachable_s:
            return Decision(Action.STOP_BATCH)
        return Decision(Action.RETRY, policy.delay(streak - 1))
    n = attempt.failures + (1 if error.costs_a_try else 0)
    if isinstance(error, TransportError):  # sent, no answer: it may have charged a run
        if policy.in_doubt == "hold" or n >= policy.max_attempts:
            return Decision(Action.HOLD, counted=True, maybe_charged=True)
        return Decision(Action.RETRY, policy.delay(n - 1), counted=True, maybe_charged=True)
    if n >= policy.max_attempts or not error.retryable:
        return Decision(Action.FAIL_JOB, counted=error.costs_a_try)
    # a 429 storm is not the job's fault: it waits the first step again
    delay = policy.delay(n - 1 if error.costs_a_try else 0)
    return Decision(Action.RETRY, delay, counted=error.costs_a_try)


def _poll(error: BatchgenError | OSError, attempt: Attempt, policy: RetryPolicy) -> Decision:
    if isinstance(error, RunNotFound):
        if policy.on_lost == "resubmit" and attempt.attempts < policy.max_attempts:
            return Decision(Action.RESUBMIT)
        return Decision(Action.FAIL_JOB)
    # The run is paid for: its poll never gives up, it only waits longer.
    n = attempt.failures + 1
    return Decision(Action.RETRY, policy.delay(n - 1), counted=True)


def _download(error: BatchgenError | OSError, attempt: Attempt, policy: RetryPolicy) -> Decision:
    if isinstance(error, RunNotFound):
        return Decision(Action.FAIL_JOB)  # the paid run is gone: its files with it
    if isinstance(error, BatchgenError) and error.link_expired:
        # Refreshes have their own count; ``max_attempts`` of them are allowed.
        if attempt.failures + 1 > policy.max_attempts:
            return Decision(Action.FAIL_JOB, counted=True)
        return Decision(Action.REFRESH, counted=True)
    if attempt.progressed:
        return Decision(Action.RETRY, policy.delay(0))
    n = attempt.failures + 1
    if n >= policy.max_attempts:
        return Decision(Action.FAIL_JOB, counted=True)
    return Decision(Action.RETRY, policy.delay(n - 1), counted=True)


def _notify(error: BaseException, attempt: Attempt, policy: RetryPolicy) -> Decision:
    # The receiver is not Runbase: only "worth another try" matters, not the account.
    n = attempt.failures + 1
    if not isinstance(error, BatchgenError) or not error.retryable or n >= policy.max_attempts:
        return Decision(Action.FAIL_JOB, counted=True)
    return Decision(Action.RETRY, policy.delay(n - 1), counted=True)
