"""The trail an unattended run leaves: JSON-lines log, summary file, metrics, notification.

``build_observers`` turns the ``--log-file``, ``--summary-file``, ``--metrics-file``
and ``--notify-url`` options into observers (``batchgen.events.Observer``) that the
runner registers next to the progress display. Each one is fast, never raises into
the engine (a failure is logged on stderr and the run goes on), and never sees the
API key; as a last line of defence every string that looks like a Runbase key
(``sk-...``) is replaced by ``[redacted]`` before it is written or sent.

Bad options (a folder that cannot be created, a log that cannot be opened, a URL that
is not http(s)) are usage errors: exit 2 before anything is sent.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batchgen.clock import iso_utc
from batchgen.errors import Problem, UsageError
from batchgen.events import Observer, RequestEvent, RunSummary, TransitionEvent
from batchgen.files.sidecar import atomic_write_text, scrub
from batchgen.redact import notify_url_shown
from batchgen.textsafe import printable_json

log = logging.getLogger(__name__)


def build_observers(
    *,
    log_file: Path | None,
    summary_file: Path | None,
    metrics_file: Path | None,
    notify_url: str | None,
    problems: list[Problem] | None = None,
) -> list[Observer]:
    """The observers for the given options, files first and the notification last.

    The runner calls ``finished`` and then ``aclose`` on each in order, so the files
    are on disk before the (possibly slow) POST starts. A bad option raises
    ``UsageError``; with ``problems`` given, its problems are added there instead and
    the other observers are still built, so that a typo in ``--notify-url`` still
    leaves a summary and metrics saying exit 2 and why.
    """
    from batchgen.observe.metrics import MetricsFile
    from batchgen.observe.notify import Notifier

    observers: list[Observer] = []

    def add(make: Callable[[], Observer]) -> None:
        try:
            observers.append(make())
        except UsageError as exc:
            if problems is None:
                raise
            problems.extend(exc.problems)

    if log_file is not None:
        add(lambda: JsonLog(log_file))
    if summary_file is not None:
        add(lambda: SummaryFile(summary_file))
    if metrics_file is not None:
        add(lambda: MetricsFile(metrics_file))
    if notify_url is not None:
        add(lambda: Notifier(check_url(notify_url)))
    return observers


def check_url(url: str) -> str:
    """The notification URL, or exit 2. It is a secret as a whole (a webhook's token is
    in its path or query): the message shows only ``scheme://host/…``."""
    from yarl import URL  # aiohttp's URL type: what it would refuse, we refuse now

    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and parts.port != 0 and bool(URL(url).host)  # .port raises when not a number
    except (ValueError, TypeError):
        ok = False
    if not ok or any(c.isspace() or not c.isprintable() for c in url):
        raise UsageError(
            f"--notify-url {notify_url_shown(url)}: expected an http:// or https:// URL, "
            "e.g. https://hooks.example.com/batchgen"
        )
    return url


def prepare_folder(path: Path, option: str) -> Path:
    """Create ``path``'s folder now, so a typo fails before the run, not after it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create its folder ({exc.strerror})") from None
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name")
    return path


class JsonLog:
    """``--log-file``: one JSON object per line, per state change and per request.

    Appended with one ``write`` per line on an ``O_APPEND`` descriptor, so ``tail -f``
    sees whole lines as they happen and two processes appending to the same file
    (a run and a refused second start) never interleave inside a line.
    """

    def __init__(self, path: Path) -> None:
        self.path = prepare_folder(path, "--log-file")
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"--log-file {path}: cannot open it ({exc.strerror})") from None
        self.batch: str | None = None
        self._failed = False

    def transition(self, ev: TransitionEvent) -> None:
        self.batch = ev.batch
        self._write(
            {
                "ts": iso_utc(ev.at),
                "event": "transition",
                "batch": ev.batch,
                "job_key": ev.job_key,
                "job_idx": ev.job_idx,
                "from": ev.from_state,
                "to": ev.to_state,
                "run_id": ev.run_id,
                "detail": ev.detail,
            }
        )

    def request(self, ev: RequestEvent) -> None:
        self._write(
            {
                "ts": iso_utc(ev.at),
                "event": "request",
                "batch": self.batch,
                "method": ev.method,
                "route": ev.route,
                "status": ev.status,
                "code": ev.code,
                "elapsed_s": round(ev.elapsed_s, 4),
            }
        )

    def error(self, at: float, message: str, traceback: str) -> None:
        """The error that stopped the run, with its traceback (the terminal gets one line)."""
        record = {"ts": iso_utc(at), "event": "error", "batch": self.batch}
        self._write({**record, "error": message, "traceback": traceback})

    def finished(self, summary: RunSummary) -> None:
        record = {"ts": iso_utc(summary.finished_at), "event": "finished", **summary.to_json()}
        self._write(record)
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            return
        line = printable_json(json.dumps(scrub(record), ensure_ascii=False, separators=(",", ":")))
        line += "\n"
        try:
            os.write(self._fd, line.encode("utf-8"))
        except OSError as exc:
            if not self._failed:  # say it once; the run matters more than its log
                log.warning("--log-file %s: cannot write (%s); the run goes on", self.path, exc)
                self._failed = True


class SummaryFile:
    """``--summary-file``: the final ``RunSummary`` as JSON, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = prepare_folder(path, "--summary-file")

    def transition(self, ev: TransitionEvent) -> None:
        pass

    def request(self, ev: RequestEvent) -> None:
        pass

    def finished(self, summary: RunSummary) -> None:
        text = json.dumps(scrub(summary.to_json()), indent=2, sort_keys=True, ensure_ascii=False)
        try:
            atomic_write_text(self.path, text + "\n", shared=True)
        except OSError as exc:
            log.error("--summary-file %s: cannot write (%s)", self.path, exc)


__all__ = ["JsonLog", "SummaryFile", "build_observers", "check_url", "scrub"]
