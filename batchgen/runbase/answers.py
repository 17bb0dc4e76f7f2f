"""Runbase answers as data: a ``Run`` from a 2xx body, a typed error from anything else.

Pure functions, no I/O: ``batchgen.runbase.client`` sends, this module reads what came back.
The error table is the one in ``runbase-api.md``; unknown shapes (HTML from a proxy,
``{"detail": ...}``, an empty body) still become the right type by HTTP status.
"""

from __future__ import annotations

import email.utils
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchgen.errors import (
    AuthError,
    Forbidden,
    InvalidRequest,
    PaymentRequired,
    RateLimited,
    RunbaseError,
    RunNotFound,
    ServerError,
    UsageExceeded,
)

#: a Retry-After longer than this is treated as this (a garbage value must not freeze us)
MAX_RETRY_AFTER_S = 3600.0
_SNIPPET = 200
_HINT_KEYS = ("retryAfter", "retry_after", "retryAfterSeconds", "retry_after_s")
_HINT_MS_KEYS = ("retryAfterMs", "retry_after_ms")

# ---------------------------------------------------------------- the run


@dataclass(slots=True)
class Run:
    """One run as the API reports it. Costs in micro-USD (1 USD = 1,000,000)."""

    id: str
    model: str
    status: str  # pending | processing | succeeded | failed
    cost_micro_usd: int | None = None
    urls: list[str] = field(default_factory=list)
    created_at: str | None = None
    completed_at: str | None = None
    error: str | None = None
    error_code: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @classmethod
    def from_api(cls, data: Mapping[str, Any], *, model: str = "") -> Run:
        """Parse a run body; raises ValueError when it has no usable ``id``."""
        run_id = data.get("id")
        if not isinstance(run_id, str) or not run_id:
            raise ValueError("the answer has no run id")
        error, error_code = _parse_run_error(data.get("error"))
        return cls(
            id=run_id,
            model=_opt_str(data.get("model")) or model,
            status=_opt_str(data.get("status")) or "pending",
            cost_micro_usd=_parse_cost(data.get("costUsd")),
            urls=_parse_urls(data.get("output")),
            created_at=_opt_str(data.get("createdAt")),
            completed_at=_opt_str(data.get("completedAt")),
            error=error,
            error_code=error_code,
        )


def _opt_str(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return None


def _parse_cost(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number) if math.isfinite(number) else None


def _parse_urls(output: Any) -> list[str]:
    if isinstance(output, Mapping):
        urls = output.get("urls")
        if urls is None and isinstance(output.get("url"), str):
            urls = [output["url"]]
        output = urls
    if isinstance(output, str):
        return [output]
    if isinstance(output, list):
        return [u for u in output if isinstance(u, str) and u]
    return []


def _parse_run_error(value: Any) -> tuple[str | None, str | None]:
    if value is None or value == "":
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, Mapping):
        message = _opt_str(value.get("message"))
        code = _opt_str(value.get("code"))
        return message or code or "run failed", code
    return str(value), None


# ---------------------------------------------------------------- error answers


@dataclass(frozen=True, slots=True)
class _ErrorBody:
    message: str | None
    code: str | None
    retry_after: float | None


def _parse_error_body(body: bytes) -> _ErrorBody:
    """``{"error": {"message", "code"}}`` and the shapes other servers use instead."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text) if text.strip() else None
    except ValueError:
        data = None
    if not isinstance(data, Mapping):
        snippet = " ".join(text.split())[:_SNIPPET] or None
        return _ErrorBody(snippet, None, None)
    err = data.get("error")
    message: str | None
    code: str | None
    if isinstance(err, Mapping):
        message, code = _opt_str(err.get("message")), _opt_str(err.get("code"))
        hint = _body_hint(err)
        if hint is None:
            hint = _body_hint(data)
    else:
        message = _opt_str(err) or _opt_str(data.get("message")) or _opt_str(data.get("detail"))
        code = _opt_str(data.get("code"))
        hint = _body_hint(data)
    return _ErrorBody(message, code, hint)


def _body_hint(data: Mapping[str, Any]) -> float | None:
    for key in _HINT_KEYS:
        seconds = _seconds(data.get(key))
        if seconds is not None:
            return seconds
    for key in _HINT_MS_KEYS:
        ms = _seconds(data.get(key))
        if ms is not None:
            return ms / 1000.0
    return None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return min(number, MAX_RETRY_AFTER_S)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """A ``Retry-After`` header: delay-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if value is None or not value.strip():
        return None
    seconds = _seconds(value.strip())
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER_S)


def error_for(
    status: int,
    body: bytes,
    *,
    method: str,
    retry_after_header: str | None = None,
    now: float = 0.0,
    reason: str | None = None,
) -> RunbaseError:
    """The typed error for one non-2xx answer (see the table in runbase-api.md)."""
    parsed = _parse_error_body(body)
    message = parsed.message or reason or f"HTTP {status}"
    code = parsed.code
    if status == 401:
        return AuthError(message, code=code)
    if status == 402:
        return PaymentRequired(message, code=code)
    if status == 403:
        return Forbidden(message, code=code)
    if status == 404:
        if method == "GET":
            return RunNotFound(message, code=code or "run_not_found")
        # No run is involved in a POST: the endpoint itself is missing.
        return InvalidRequest(f"{message} (is the base URL right?)", code=code, status=404)
    if status == 429:
        if (code or "").upper() == "USAGE_EXCEEDED":
            return UsageExceeded(message, code=code)
        hint = parse_retry_after(retry_after_header, now=now)
        if hint is None:
            hint = parsed.retry_after
        return RateLimited(message, code=code or "RATE_LIMITED", retry_after=hint)
    # 408 request timeout and 409 (a request with the same idempotency key still in
    # progress) are worth retrying; they are not the request's fault.
    if status in (408, 409) or status >= 500 or status < 400:
        return ServerError(message, code=code, status=status)
    return InvalidRequest(message, code=code, status=status)
