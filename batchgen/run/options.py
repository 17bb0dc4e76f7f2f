"""What a run can be told, and the checks made before anything is written or sent.

``RunOptions`` carries the command-line values; the checks refuse a missing key, a
bad API base URL or an output folder that cannot hold videos (exit 2) before a run
is paid for. ``command_line`` hands its settings to ``batchgen.settings``, which
merges them with the environment, the stored batch and the manifest.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from yarl import URL

from batchgen.engine.schedule import PollPolicy
from batchgen.errors import Problem, UsageError
from batchgen.observe.progress import ProgressMode
from batchgen.redact import mask_url
from batchgen.retry import RetryPolicy
from batchgen.settings import (
    DEFAULT_BASE_URL,
    CommandLine,
    InDoubtPolicy,
    LostPolicy,
    base_url_from,
)


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
    wait_lock_s: float = 0.0  # SQLite only: a PostgreSQL batch is shared, never waited for
    #: PostgreSQL: seconds a worker's claims last without its heartbeat (a third of it):
    #: how long a killed worker's jobs wait before another worker takes them over
    lease_s: float = 30.0
    log_file: Path | None = None
    summary_file: Path | None = None
    metrics_file: Path | None = None
    notify_url: str | None = None
    report_path: Path | None = None
    progress: ProgressMode = "off"
    handle_signals: bool = False
    download_concurrency: int = 4
    #: POSTs in flight at once, at most one per key (``EngineConfig.posts_in_flight``)
    posts_in_flight: int = 1
    timeout_s: float = 30.0
    #: the limiter's safety margin on the window (None: the limiter's default)
    limiter_margin_s: float | None = None
    #: where the key's shared rate-limit window lives (None: $BATCHGEN_STATE_DIR, else
    #: $XDG_STATE_HOME/batchgen, else ~/.local/state/batchgen)
    state_dir: Path | None = None
    #: ``--keys-file``: more API keys, one a line (``batchgen.run.keys``)
    keys_file: Path | None = None
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


def command_line(options: RunOptions) -> CommandLine:
    """The settings ``options`` gives (``batchgen.settings`` resolves the rest)."""
    return CommandLine(
        rate=options.rate,
        concurrency=options.concurrency,
        budget_usd=options.budget_usd,
        max_attempts=options.max_attempts,
        max_runtime_s=options.max_runtime_s,
        wait_lock_s=options.wait_lock_s,
        in_doubt=options.in_doubt,
        on_lost=options.on_lost,
        base_url=options.base_url,
    )


def check_api_key(key: str | None, where: str = "the key in $RUNBASE_API_KEY") -> str:
    """The key from $RUNBASE_API_KEY, refused (exit 2) unless it can go in a header as
    it is. The messages never quote the key, not even a part of it."""
    if not key:
        raise UsageError(
            "no API key: set RUNBASE_API_KEY in the environment (it is never read "
            "from the command line and never stored)"
        )
    problem = _key_problem(key, where)
    if problem is not None:
        raise UsageError([Problem(file="<environment>", message=problem[0], fix=problem[1])])
    if not key.startswith("sk-"):
        name = "RUNBASE_API_KEY" if where.endswith("$RUNBASE_API_KEY") else where
        raise UsageError(f"{name} does not look like a Runbase key (keys start with sk-)")
    return key


def _key_problem(key: str, where: str) -> tuple[str, str] | None:
    """(what is wrong, the fix) for a key no HTTP header can carry, or None."""
    stripped = key.rstrip("\r\n")
    if stripped != key and _key_problem(stripped, where) is None:
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
    url = base_url_from(options.base_url, os.environ)
    problem = _base_url_problem(url, allow_insecure=options.allow_insecure)
    if problem is None:
        return url
    where = "--base-url" if options.base_url else "$RUNBASE_BASE_URL"
    file = "<command line>" if options.base_url else "<environment>"
    message, fix = problem
    raise UsageError([Problem(file=file, message=f"{where} {mask_url(url)!r} {message}", fix=fix)])


def _base_url_problem(url: str, *, allow_insecure: bool) -> tuple[str, str] | None:
    """(what is wrong, the fix) for the first rule ``url`` breaks, in the order a user
    would fix them; None when it is a base URL we may send the key to."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number or out of range
    except ValueError:
        parts, port = None, None
    if url != url.rstrip("\r\n"):
        return (
            "ends with a line break or carriage return (a file with Windows line endings?)",
            "remove it (dos2unix FILE, or load the file with tr -d '\\r')",
        )
    if parts is not None and (parts.username is not None or parts.password is not None):
        return (
            "has credentials in it (user:password@)",
            "remove them: the API takes only the key from $RUNBASE_API_KEY",
        )
    if parts is None or not _is_base_url(url, parts.scheme, parts.hostname, port, parts):
        return (
            "is not an API base URL",
            f"give one like {DEFAULT_BASE_URL} (http or https, a host, no query)",
        )
    if parts.scheme == "http" and not allow_insecure and not is_loopback_host(parts.hostname or ""):
        return (
            "is plain http to a host that is not loopback: the API key would cross "
            "the network unencrypted",
            "use https, or add --allow-insecure if you really mean it",
        )
    return None


def _is_base_url(
    url: str, scheme: str, host: str | None, port: int | None, parts: SplitResult
) -> bool:
    """http(s), a host, no port 0, no query or fragment, printable, and taken by aiohttp."""
    return (
        scheme in ("http", "https")
        and bool(host)
        and port != 0
        and not parts.query
        and not parts.fragment
        and not any(c.isspace() or not c.isprintable() for c in url)
        and _aiohttp_takes(url)
    )


def _aiohttp_takes(url: str) -> bool:
    # yarl is aiohttp's URL type: what it refuses, we refuse first
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


__all__ = [
    "RunOptions",
    "check_api_key",
    "check_base_url",
    "check_out_dir",
    "command_line",
    "is_loopback_host",
]
