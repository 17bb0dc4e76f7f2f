"""The trail an unattended run leaves: JSON-lines log, summary file, metrics, notification.

``build_observers`` turns the ``--log-file``, ``--summary-file``, ``--metrics-file``
and ``--notify-url`` options into observers (``batchgen.events.Observer``) that the
runner registers next to the progress display. Each one is fast, never raises into
the engine (a failure is logged on stderr and the run goes on), and never sees the
API key; as a last line of defence every string that looks like a Runbase key
(``sk-...``) is replaced by ``[redacted]`` before it is written or sent.

The writers live beside it: ``observe.files`` (log, summary), ``observe.metrics`` and
``observe.notify``; this module only chooses and builds them.

Bad options (a folder that cannot be created, a log that cannot be opened, a URL that
is not http(s)) are usage errors: exit 2 before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from yarl import URL  # aiohttp's URL type: what it would refuse, we refuse now

from batchgen.errors import Problem, UsageError
from batchgen.events import Observer
from batchgen.observe.files import JsonLog, SummaryFile
from batchgen.observe.metrics import MetricsFile
from batchgen.observe.notify import Notifier
from batchgen.redact import notify_url_shown


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


__all__ = ["build_observers", "check_url"]
