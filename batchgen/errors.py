"""Every error batchgen raises on purpose, what each means to a retry, and its exit code.

One root, ``BatchgenError``; ``except BatchgenError`` catches everything below. The
classes marked ``(module)`` live in that module, next to the code that raises them::

    BatchgenError                    root; an unhandled one is a bug: exit 70
    ├── CommandError                 ends the command: its message on stderr, its exit_code
    │   ├── UsageError               bad command line, manifest, prompts file, image: 2
    │   ├── StateError               the state database is unusable: 2
    │   ├── LockHeldError            another batchgen holds the batch: 75
    │   ├── StateWriteError          a state write failed (disk full): 75, resumable
    │   └── BudgetReached            an intent over the budget: 4 (batchgen.store.records)
    ├── InputError (ValueError)      one input the user named cannot be used; the
    │   │                            manifest checks turn it into a UsageError problem
    │   ├── FileProblem              a values or rows file        (batchgen.manifest.files)
    │   ├── ImageError               a local image                (batchgen.manifest.images)
    │   ├── TemplateError            a file-name template         (batchgen.manifest.naming)
    │   └── FileRefused              a named file (link, device)  (batchgen.manifest.safefile)
    ├── RunbaseError                 one answer of the Runbase API, or the lack of one
    │   ├── InvalidRequest           400 (413, a POST's 404, other 4xx): fail the job
    │   ├── AuthError                401: stop the batch
    │   ├── PaymentRequired          402: stop submitting
    │   ├── Forbidden                403 (spend cap, IP not allowed): stop submitting
    │   ├── RunNotFound              404 on a GET: the run is lost (--on-lost)
    │   ├── RateLimited              429 RATE_LIMITED: wait, costs the job no try
    │   ├── UsageExceeded            429 USAGE_EXCEEDED: stop submitting
    │   ├── ServerError              5xx, 408, 409: retry with backoff
    │   └── TransportError           no answer; ``sent`` says whether it may have arrived
    ├── TransferError                one try at fetching an output file failed
    │   ├── LinkExpired              403/404/410 from the file host: refresh the URLs
    │   ├── TransferCut              cut short, 5xx, a range answer that does not fit
    │   └── TransferCorrupt          bytes that are not the video: start over from zero
    ├── DownloadError                a file not brought home at all (batchgen.files.download)
    ├── MediaError                   a video that does not decode     (batchgen.files.media)
    └── IllegalTransition            a job state change not in the table: a bug

The flags on the root (``retryable``, ``stops_batch``, ``stops_submitting``,
``costs_a_try``, ``link_expired``) are what ``batchgen.retry.decide`` reads: a class
says what it does to a job and to the batch, so nothing decides from a message.
Aiohttp's own exceptions never travel: ``batchgen.runbase.transport`` maps them to
``TransportError`` where they happen.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from batchgen.textsafe import printable, reveal


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
        # of theirs reaches a terminal or a log line, and where the exact text matters
        # no invisible one hides in it either (batchgen.textsafe).
        where = reveal(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: {reveal(self.message)}"
        if self.fix:
            text += f"\n  fix: {printable(self.fix)}"
        return text


class BatchgenError(Exception):
    """The root of every error batchgen raises on purpose (the tree: module docstring)."""

    #: the exit code when nothing handles it: an error that travels that far is a bug
    exit_code: ExitCode = ExitCode.SOFTWARE
    #: worth trying the same thing again later
    retryable: bool = False
    #: nothing else will work: stop the whole batch at once
    stops_batch: bool = False
    #: stop submitting new runs, keep polling and downloading the paid ones
    stops_submitting: bool = False
    #: counts against the job's tries (False: not the job's fault, e.g. 429 RATE_LIMITED)
    costs_a_try: bool = True
    #: a file's link expired: fresh URLs (one GET of the run) may fetch it
    link_expired: bool = False


class CommandError(BatchgenError):
    """Ends the command: its message on stderr (no traceback), its ``exit_code``."""

    exit_code = ExitCode.USAGE


class InputError(BatchgenError, ValueError):
    """One input the user named (a file, an image, a template) cannot be used.

    A ``ValueError`` too, as these were before there was one root."""


class UsageError(CommandError):
    """Bad command line, manifest, prompts file or image. Exit 2, nothing written or sent."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(file="<command line>", message=problems)]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class LockHeldError(CommandError):
    exit_code = ExitCode.INTERRUPTED


class StateError(CommandError):
    """The state database is unusable (newer schema, corrupt, unknown batch)."""

    exit_code = ExitCode.USAGE


class StateWriteError(CommandError):
    """A write to the state database failed (disk full, I/O error): stop at once,
    resumable once the cause is fixed. ``run_id``: the run of the job being written;
    ``unrecorded``: that run was just created (and paid) and its id is not on record."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(
        self, message: str, *, run_id: str | None = None, unrecorded: bool = False
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.unrecorded = unrecorded


class IllegalTransition(BatchgenError):
    """A job state change not in the transition table: a bug, never user input."""


# ---------------------------------------------------------------- API answers


class RunbaseError(BatchgenError):
    """One answer of the Runbase API (or the lack of one); the subclass says what it means."""

    status: int | None = None

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
    costs_a_try = False

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
        #: the name of the network library's exception, and its (scrubbed) text
        self.kind = ""
        self.detail = ""


# ---------------------------------------------------------------- output files


class TransferError(BatchgenError):
    """One try at fetching an output file from the file host failed; try again."""

    retryable = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LinkExpired(TransferError):
    """403/404/410 from the file host: the link expired; fresh URLs may fetch it."""

    link_expired = True

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}: link expired or gone", status=status)


class TransferCut(TransferError):
    """A cut, a timeout, a 5xx: try again (resuming when the partial file is sound)."""


class TransferCorrupt(TransferError):
    """The bytes are wrong (not MP4, do not decode, too long): start over from zero."""
