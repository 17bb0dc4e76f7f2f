"""Every error batchgen raises, and the exit code each one maps to.

Two families:
- ``BatchgenError``: something the user must fix or know (bad manifest, lock held,
  budget reached). Each carries the process exit code.
- ``RunbaseError``: one answer of the Runbase API (or the lack of one). Each subclass
  says whether it is retryable and what it does to the batch, so the engine decides
  from the type, never from string matching.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from batchgen.textsafe import printable


class ExitCode(enum.IntEnum):
    OK = 0
    JOBS_FAILED = 1
    USAGE = 2
    ACCOUNT = 3
    BUDGET = 4
    SOFTWARE = 70  # EX_SOFTWARE: an error batchgen does not know; every paid run is on record
    INTERRUPTED = 75  # EX_TEMPFAIL: resumable (signal, --max-runtime, lock held, state write)


# ---------------------------------------------------------------- user-facing


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input file, with where it is and how to fix it."""

    file: str
    message: str
    line: int | None = None
    column: int | None = None
    fix: str | None = None

    def __str__(self) -> str:
        # Names and values quoted in a problem come from files: no control character
        # of theirs reaches a terminal or a log line (batchgen.textsafe).
        where = printable(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: {printable(self.message)}"
        if self.fix:
            text += f"\n  fix: {printable(self.fix)}"
        return text


class BatchgenError(Exception):
    exit_code: ExitCode = ExitCode.USAGE


class UsageError(BatchgenError):
    """Bad command line, manifest, prompts file or image. Exit 2, nothing written or sent."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(file="<command line>", message=problems)]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class LockHeldError(BatchgenError):
    exit_code = ExitCode.INTERRUPTED


class StateError(BatchgenError):
    """The state database is unusable (newer schema, corrupt, unknown batch)."""

    exit_code = ExitCode.USAGE


class StateWriteError(BatchgenError):
    """A write to the state database failed (disk full, I/O error): stop at once,
    resumable once the cause is fixed. ``run_id``: a paid run the write was recording."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class IllegalTransition(Exception):
    """A job state change not in the transition table: a bug, never user input."""


# ---------------------------------------------------------------- API answers


class RunbaseError(Exception):
    status: int | None = None
    #: worth trying the same request again later
    retryable: bool = False
    #: nothing else will work: stop the whole batch at once
    stops_batch: bool = False
    #: stop submitting new runs, keep polling and downloading the paid ones
    stops_submitting: bool = False

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        head = [str(self.status), self.code or ""] if self.status else [self.code or "network"]
        return " ".join(p for p in [*head, self.message] if p)


class InvalidRequest(RunbaseError):
    """400: the request is wrong. Fail the job for good."""

    status = 400


class AuthError(RunbaseError):
    """401: missing, bad, disabled or expired key."""

    status = 401
    stops_batch = True


class PaymentRequired(RunbaseError):
    """402 insufficient_balance."""

    status = 402
    stops_submitting = True


class Forbidden(RunbaseError):
    """403: spend cap reached or IP not allowed."""

    status = 403
    stops_submitting = True


class RunNotFound(RunbaseError):
    """404 run_not_found: the run is lost to this key."""

    status = 404


class RateLimited(RunbaseError):
    """429 RATE_LIMITED: not the job's fault; wait and retry."""

    status = 429
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        code: str | None = "RATE_LIMITED",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class UsageExceeded(RunbaseError):
    """429 USAGE_EXCEEDED: the key's quota is used up; like 402."""

    status = 429
    stops_submitting = True


class ServerError(RunbaseError):
    """5xx: retry with backoff and jitter."""

    status = 500
    retryable = True


class TransportError(RunbaseError):
    """No HTTP answer: refused, reset, timed out.

    ``sent`` is False when the request surely never reached the server (connection
    refused): a POST can then simply be retried. When True, a POST may or may not
    have created (and charged) a run: the ambiguous case.
    """

    status = None
    retryable = True

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message, code="network")
        self.sent = sent
