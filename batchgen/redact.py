"""What a URL may show of itself: the one place every printed or written URL passes.

Two rules:

- A notification URL (``--notify-url``) is a secret as a whole: webhook services put
  their token in the path (Slack, Mattermost), in the query (``?token=``) or in the
  user info. It is only ever shown as ``scheme://host[:port]/…`` (``notify_url_shown``).
- Any other URL (the API base URL, image URLs of a manifest, output URLs of runs,
  URLs inside aiohttp's messages) keeps everything but its password:
  ``https://user:***@host/path`` (``mask_url``; a user name alone, often a token, is
  ``***@``). ``mask_urls_in`` does that for every URL inside a free text: an error
  message, a log line, a traceback.

``mask_urls_deep`` does it for every string of a JSON-like value (a job's input as
the plan, the report and the export show it; the database keeps what is sent).
``RedactingFormatter`` applies ``mask_urls_in`` (and hides Runbase keys) to every log
line, tracebacks included, so a message that quotes a URL cannot leak it through the
log either. The JSON writers (log file, summary, sidecars, notification body) go
through ``batchgen.files.sidecar.scrub``, which calls ``mask_urls_in`` too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

MASK = "***"

# scheme://userinfo@ : the user info is everything up to the last "@" before the host
# part ends (a "/", "?", "#", whitespace or a quote)
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s\"'<>@]*(?:@[^/?#\s\"'<>@]*)*)@"
)
REDACTED = "[redacted]"
# A Runbase key: "sk-" and a long token, not inside a longer word ("task-force").
KEY_LIKE = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}")


def _mask_userinfo(userinfo: str) -> str:
    user, sep, _password = userinfo.partition(":")
    return f"{user}:{MASK}" if sep else MASK


def mask_urls_in(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``."""
    if "@" not in text:
        return text
    return _USERINFO.sub(
        lambda m: f"{m.group('scheme')}{_mask_userinfo(m.group('userinfo'))}@", text
    )


def mask_urls_deep(value: Any) -> Any:
    """``value`` with ``mask_urls_in`` applied to every string in it (dicts and lists
    walked): a job's input as shown (plan, report, export), never as sent."""
    if isinstance(value, str):
        return mask_urls_in(value)
    if isinstance(value, Mapping):
        return {
            mask_urls_in(k) if isinstance(k, str) else k: mask_urls_deep(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_urls_deep(v) for v in value]
    return value


def mask_url(url: str) -> str:
    """One URL as it may be shown: ``https://user:***@host/path?query`` (see the module)."""
    masked = mask_urls_in(url)
    if masked != url or "@" not in url:
        return masked
    # no "scheme://": a bare "user:pass@host" (or something unparsable); hide what
    # stands before the last "@"
    head, _, tail = url.rpartition("@")
    return f"{_mask_userinfo(head)}@{tail}"


def notify_url_shown(url: str) -> str:
    """A notification URL as it may be shown: ``scheme://host[:port]/…``, nothing more."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "<the --notify-url value>"
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:  # not a number: not shown
        port = None
    if not parts.scheme.isprintable() or not host or not host.isprintable():
        return "<the --notify-url value>"
    if ":" in host:
        host = f"[{host}]"
    where = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{where}/…"


def redact_text(text: str) -> str:
    """Free text with URL passwords and Runbase keys hidden."""
    return KEY_LIKE.sub(REDACTED, mask_urls_in(text))


class RedactingFormatter(logging.Formatter):
    """A log formatter whose lines (message, traceback and all) pass ``redact_text``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


__all__ = [
    "KEY_LIKE",
    "MASK",
    "REDACTED",
    "RedactingFormatter",
    "mask_url",
    "mask_urls_deep",
    "mask_urls_in",
    "notify_url_shown",
    "redact_text",
]
