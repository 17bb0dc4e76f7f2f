"""What a run can be told, and the checks made before anything is written or sent.

``RunOptions`` carries the command-line values; the checks refuse a missing key, a
bad API base URL or an output folder that cannot hold videos (exit 2) before a run
is paid for. ``batch_settings`` reads the settings a batch was stored with, for the
values the command line did not give (``ratelimit.settings_rate`` reads its rate).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batchgen.amounts import MAX_BUDGET_USD, MAX_SECONDS, amount_problem
from batchgen.engine.schedule import PollPolicy
from batchgen.engine.state import InDoubtPolicy, LostPolicy
from batchgen.errors import Problem, UsageError
from batchgen.observe.progress import ProgressMode
from batchgen.redact import mask_url
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
    #: where the key's shared rate-limit window lives (None: $BATCHGEN_STATE_DIR, else
    #: $XDG_STATE_HOME/batchgen, else ~/.local/state/batchgen)
    state_dir: Path | None = None
    #: allow plain http to a host that is not loopback (the key then goes in clear)
    allow_insecure: bool = False
    poll_policy: PollPolicy | None = None
    #: also compare each succeeded job's files with their recorded sha256 (not only size)
    verify: bool = False
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
    """The key from $RUNBASE_API_KEY, refused (exit 2) unless it can go in a header as
    it is. The messages never quote the key, not even a part of it."""
    if not key:
        raise UsageError(
            "no API key: set RUNBASE_API_KEY in the environment (it is never read "
            "from the command line and never stored)"
        )
    problem = _key_problem(key)
    if problem is not None:
        raise UsageError([Problem(file="<environment>", message=problem[0], fix=problem[1])])
    if not key.startswith("sk-"):
        raise UsageError("RUNBASE_API_KEY does not look like a Runbase key (keys start with sk-)")
    return key


def _key_problem(key: str) -> tuple[str, str] | None:
    """(what is wrong, the fix) for a key no HTTP header can carry, or None."""
    where = "the key in $RUNBASE_API_KEY"
    stripped = key.rstrip("\r\n")
    if stripped != key and _key_problem(stripped) is None:
        if "\r" in key[len(stripped) :]:
            return (
                f"{where} ends with a carriage return (a key file with Windows line endings?)",
                "dos2unix FILE (or load it with tr -d '\\r'), then run again",
            )
        return (f"{where} ends with a line break", "remove the line break from the key")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return (
            f"{where} contains control characters (a line break, a tab or a carriage return)",
            "copy the key again from the Runbase dashboard; a key file may need dos2unix",
        )
    if any(c.isspace() for c in key):
        return (f"{where} contains spaces", "remove the spaces; a key is one word")
    if not key.isascii():
        return (
            f"{where} contains characters that are not ASCII (a typographic dash or quote?)",
            "copy the key again from the Runbase dashboard",
        )
    return None


def base_url_from(options: RunOptions) -> str:
    return options.base_url or os.environ.get("RUNBASE_BASE_URL") or DEFAULT_BASE_URL


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` (no DNS look-up: a name is never resolved)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(options: RunOptions) -> str:
    """The API base URL, refused up front (exit 2) unless it is http(s)://host[:port][/path]
    that aiohttp takes, with no credentials in it, and https unless the host is loopback
    or ``allow_insecure`` is set (the key would cross the network in clear)."""
    url = base_url_from(options)
    from_flag = bool(options.base_url)
    where = "--base-url" if from_flag else "$RUNBASE_BASE_URL"
    file = "<command line>" if from_flag else "<environment>"
    shown = mask_url(url)

    def refuse(message: str, fix: str) -> UsageError:
        return UsageError([Problem(file=file, message=f"{where} {shown!r} {message}", fix=fix)])

    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number or out of range
        host = parts.hostname
    except ValueError:
        parts, port, host = None, None, None
    if url != url.rstrip("\r\n"):
        raise refuse(
            "ends with a line break or carriage return (a file with Windows line endings?)",
            "remove it (dos2unix FILE, or load the file with tr -d '\\r')",
        )
    if parts is not None and (parts.username is not None or parts.password is not None):
        raise refuse(
            "has credentials in it (user:password@)",
            "remove them: the API takes only the key from $RUNBASE_API_KEY",
        )
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not host
        or port == 0
        or parts.query
        or parts.fragment
        or any(c.isspace() or not c.isprintable() for c in url)
        or not _aiohttp_takes(url)
    ):
        raise refuse(
            "is not an API base URL",
            f"give one like {DEFAULT_BASE_URL} (http or https, a host, no query)",
        )
    if parts.scheme == "http" and not is_loopback_host(host) and not options.allow_insecure:
        raise refuse(
            "is plain http to a host that is not loopback: the API key would cross "
            "the network unencrypted",
            "use https, or add --allow-insecure if you really mean it",
        )
    return url


def _aiohttp_takes(url: str) -> bool:
    from yarl import URL  # aiohttp's URL type: what it refuses, we refuse first

    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return False
    return parsed.is_absolute() and bool(parsed.host)


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
    "is_loopback_host",
]
