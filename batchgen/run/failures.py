"""Errors the runner did not expect: one line for the person, the traceback for the log.

An error batchgen does not know (a bug, a library refusing something) stops the run
with exit 70 (EX_SOFTWARE); a state database that cannot be written stops it with 75
(resumable) and one that cannot be used at all with 2. In every case the terminal gets
one line (the summary's reason); the traceback goes to the ``--log-file`` (an
``"event": "error"`` record) and, with ``-v``, to the terminal.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from batchgen.errors import ExitCode
from batchgen.events import Observer, RequestEvent, RunSummary, TransitionEvent
from batchgen.store.failures import state_failure

# the run's own logger: these lines belong to the run (and to -v) as before
log = logging.getLogger("batchgen.run.runner")


def one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line, control characters escaped, at most ``limit`` characters."""
    flat = " ".join(text.split())
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def unexpected(exc: BaseException, db_path: Path | None = None) -> tuple[ExitCode, str]:
    """The exit code and the one-line reason for an exception nothing handled."""
    # SQLite's or PostgreSQL's (the driver's inside SQLAlchemy's), the password masked
    failure = state_failure(exc, db_path)
    if failure is not None:
        return failure.exit_code, one_line(str(failure))
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ExitCode.SOFTWARE, one_line(
        f"internal error ({what}); stopped at once, every paid run is on record "
        "(details: --log-file or -v); `batchgen resume` continues once it is fixed"
    )


def record_traceback(observers: Sequence[Observer], exc: BaseException, at: float) -> None:
    """The traceback to ``-v`` and to every observer that keeps one (the --log-file)."""
    log.debug("the run stopped on this error", exc_info=exc)
    text = "".join(traceback.format_exception(exc))
    for obs in observers:
        error = getattr(obs, "error", None)
        if error is None:
            continue
        try:
            error(at, f"{type(exc).__name__}: {exc}", text)
        except Exception as inner:
            log.error("observer %r failed to record the error: %s", obs, one_line(str(inner)))


class Guarded:
    """An observer whose failure is reported to ``on_error`` instead of raising into the
    request or transition that called it (the run then stops: exit 70)."""

    def __init__(self, inner: Observer, on_error: Callable[[BaseException], None]) -> None:
        self.inner = inner
        self.on_error = on_error

    def transition(self, ev: TransitionEvent) -> None:
        try:
            self.inner.transition(ev)
        except Exception as exc:
            self.on_error(exc)

    def request(self, ev: RequestEvent) -> None:
        try:
            self.inner.request(ev)
        except Exception as exc:
            self.on_error(exc)

    def finished(self, summary: RunSummary) -> None:
        self.inner.finished(summary)


__all__ = ["Guarded", "one_line", "record_traceback", "unexpected"]
