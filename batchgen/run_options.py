"""What a run can be told, and the checks made before anything is written or sent.

``RunOptions`` carries the command-line values; the checks refuse a missing key, a
bad API base URL or an output folder that cannot hold videos (exit 2) before a run
is paid for. ``batch_settings`` reads the settings a batch was stored with, for the
values the command line did not give (``ratelimit.settings_rate`` reads its rate).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batchgen.amounts import MAX_BUDGET_USD, MAX_SECONDS, amount_problem
from batchgen.engine_base import InDoubtPolicy, LostPolicy
from batchgen.errors import Problem, UsageError
from batchgen.polling import PollPolicy
from batchgen.progress import ProgressMode
from batchgen.retry import RetryPolicy
from batchgen.store.schema import Batch

DEFAULT_BASE_URL = "https://runbase.net"


@dataclass
class RunOptions:
    """Everything ``batchgen run`` can be told. ``None`` = from the manifest / batch."""

    base_url: str | None = None  # None: $RUNBASE_BASE_URL, else https://runbase.net
    out_dir: Path | None = None
    rate: tuple[int, float] | None = None
    concurrency: int | None = None
    budget_usd: float | None = None
    max_attempts: int | None = None
    max_runtime_s: float | None = None
    in_doubt: InDoubtPolicy = "resubmit"
    on_lost: LostPolicy = "fail"
    date: dt.date | None = None
    max_jobs: int | None = None  # None: the manifest loader's default (100,000)
    wait_lock_s: float = 0.0
    log_file: Path | None = None
    summary_file: Path | None = None
    metrics_file: Path | None = None
    notify_url: str | None = None
    report_path: Path | None = None
    progress: ProgressMode = "off"
    handle_signals: bool = False
    download_concurrency: int = 4
    timeout_s: float = 30.0
    #: the limiter's safety margin on the window (None: the limiter's default)
    limiter_margin_s: float | None = None
    poll_policy: PollPolicy | None = None
    retry_policy: RetryPolicy | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: bad command-line values found by the CLI: the run ends with exit 2, and the
    #: summary, metrics and notification (if their own options are fine) say why
    problems: list[Problem] = field(default_factory=list)


def number_problems(options: RunOptions) -> list[Problem]:
    """Every amount and count of ``options`` finite and in range (a library caller's
    ``budget_usd=float("inf")`` too): exit 2 before anything is stored."""
    found = [
        amount_problem("--budget-usd", options.budget_usd, maximum=MAX_BUDGET_USD, example="25"),
        amount_problem("--max-runtime", options.max_runtime_s, maximum=MAX_SECONDS, example="3600"),
        amount_problem("--wait-lock", options.wait_lock_s, maximum=MAX_SECONDS, example="900"),
    ]
    for name, count in (
        ("--concurrency", options.concurrency),
        ("--max-attempts", options.max_attempts),
    ):
        if count is not None and count < 1:
            found.append(f"{name} {count}: expected a whole number of at least 1")
    if options.rate is not None:
        requests, seconds = options.rate
        if requests < 1 or not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
            found.append(f"--rate {requests}/{seconds}: expected REQUESTS/SECONDS, e.g. 20/10s")
    return [Problem(file="<command line>", message=m) for m in found if m]


def check_api_key(key: str | None) -> str:
    if not key:
        raise UsageError(
            "no API key: set RUNBASE_API_KEY in the environment (it is never read "
            "from the command line and never stored)"
        )
    if not key.startswith("sk-"):
        raise UsageError("RUNBASE_API_KEY does not look like a Runbase key (keys start with sk-)")
    return key


def base_url_from(options: RunOptions) -> str:
    return options.base_url or os.environ.get("RUNBASE_BASE_URL") or DEFAULT_BASE_URL


def check_base_url(options: RunOptions) -> str:
    """The API base URL, refused up front (exit 2) unless it is http(s)://host[:port][/path]."""
    url = base_url_from(options)
    where = "--base-url" if options.base_url else "$RUNBASE_BASE_URL"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or any(c.isspace() for c in url)
    ):
        raise UsageError(
            [
                Problem(
                    file="<command line>" if options.base_url else "<environment>",
                    message=f"{where} {url!r} is not an API base URL",
                    fix=f"give one like {DEFAULT_BASE_URL} (http or https, a host, no query)",
                )
            ]
        )
    return url


def check_out_dir(path: Path) -> None:
    """Create the output folder and prove a file can be written in it: exit 2 otherwise,
    before a run is paid for whose video could not be saved."""
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(0, "it is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".batchgen-probe-"):
            pass
    except OSError as exc:
        raise UsageError(
            [
                Problem(
                    file=str(path),
                    message=f"cannot save videos here: {exc.strerror or exc}",
                    fix="choose another output folder (--out, or out_dir in the manifest)",
                )
            ]
        ) from None


def batch_settings(batch: Batch) -> dict[str, Any]:
    try:
        value = json.loads(batch.settings_json or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


__all__ = [
    "DEFAULT_BASE_URL",
    "RunOptions",
    "base_url_from",
    "batch_settings",
    "check_api_key",
    "check_base_url",
    "check_out_dir",
]
