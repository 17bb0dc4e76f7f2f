"""Speaks the Runbase runs API and nothing else.

Two calls: ``create_run`` (POST /api/v1/runs) and ``get_run`` (GET /api/v1/runs/{id}).
Every request first takes a slot from the key's shared ``RequestLimiter``; every
answer (or its absence) becomes a typed ``batchgen.errors.RunbaseError`` so the engine
decides from the type. The one thing the client handles itself is 429 RATE_LIMITED:
it tells the limiter (pause, slow down) and sends the same request again, because a
429 is never the job's fault. Everything else is raised, once.

The API key lives in a private ``_Secret`` and is only put into headers at request
time: it is not in ``repr(client)``, in any error message, log line or event.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from batchgen.clock import Clock, SystemClock
from batchgen.errors import (
    AuthError,
    Forbidden,
    InvalidRequest,
    PaymentRequired,
    RateLimited,
    RunbaseError,
    RunNotFound,
    ServerError,
    TransportError,
    UsageExceeded,
)
from batchgen.events import Observer, RequestEvent
from batchgen.ratelimit import RequestLimiter

log = logging.getLogger(__name__)

ROUTE_CREATE = "POST /api/v1/runs"
ROUTE_GET = "GET /api/v1/runs/{id}"
USER_AGENT = "batchgen/0.1 (+aiohttp)"

#: a Retry-After longer than this is treated as this (a garbage value must not freeze us)
MAX_RETRY_AFTER_S = 3600.0
_SNIPPET = 200
_HINT_KEYS = ("retryAfter", "retry_after", "retryAfterSeconds", "retry_after_s")
_HINT_MS_KEYS = ("retryAfterMs", "retry_after_ms")
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


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


def transport_error(exc: BaseException, *, what: str) -> TransportError:
    """No HTTP answer. ``sent`` is False only when the request surely never left."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        # refused, DNS, TLS handshake, connect timeout (or pool wait): nothing was sent
        return TransportError(f"{what}: could not connect: {_describe(exc)}", sent=False)
    return TransportError(f"{what}: no answer: {_describe(exc)}", sent=True)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


# ---------------------------------------------------------------- the client


class _Secret:
    """Holds the key; prints as asterisks however it is printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


class RunbaseClient:
    """Async client of the Runbase runs API. Use as ``async with RunbaseClient(...)``.

    ``session``: an aiohttp session to share (it is not closed here); by default the
    client makes and closes its own. ``max_rate_limited``: how many 429 RATE_LIMITED
    answers in a row one call absorbs before raising ``RateLimited`` (a permanent
    storm must end somewhere; the engine must not count it against the job).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        limiter: RequestLimiter,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
        observers: Sequence[Observer] = (),
        clock: Clock | None = None,
        connect_timeout_s: float = 10.0,
        max_rate_limited: int = 20,
    ) -> None:
        if not api_key:
            raise ValueError("no API key given")
        self.base_url = base_url.rstrip("/")
        self._key = _Secret(api_key)
        self.limiter = limiter
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=min(connect_timeout_s, timeout_s)
        )
        self._observers = list(observers)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.max_rate_limited = max(1, max_rate_limited)
        if session is not None:
            _no_silent_resend(session)

    def __repr__(self) -> str:
        return f"RunbaseClient(base_url={self.base_url!r}, api_key='***')"

    async def __aenter__(self) -> RunbaseClient:
        self._get_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    # ------------------------------------------------------------ the two calls

    async def create_run(
        self, model: str, input: Mapping[str, Any], *, idempotency_key: str, priority: int = 1
    ) -> Run:
        """POST /api/v1/runs. Spends money: the answer's ``cost_micro_usd`` is the truth."""
        if not idempotency_key or _HEADER_UNSAFE.search(idempotency_key):
            raise ValueError("idempotency_key must be a non-empty header-safe string")
        body = json.dumps({"model": model, "input": dict(input)}).encode()
        data = await self._call(
            "POST",
            "/api/v1/runs",
            ROUTE_CREATE,
            priority=priority,
            body=body,
            headers={"Idempotency-Key": idempotency_key},
        )
        return self._run(data, model=model, route=ROUTE_CREATE)

    async def get_run(self, run_id: str, *, priority: int = 0) -> Run:
        """GET /api/v1/runs/{id}: the run now (status; urls when succeeded)."""
        if not run_id:
            raise ValueError("run_id is empty")
        data = await self._call(
            "GET", f"/api/v1/runs/{quote(run_id, safe='')}", ROUTE_GET, priority=priority
        )
        return self._run(data, model="", route=ROUTE_GET)

    # ------------------------------------------------------------ plumbing

    def _run(self, data: Any, *, model: str, route: str) -> Run:
        try:
            if not isinstance(data, Mapping):
                raise ValueError("the answer is not a JSON object")
            return Run.from_api(data, model=model)
        except ValueError as exc:
            # A 2xx we cannot read: for a POST the run may well exist (and be paid).
            raise TransportError(f"{route}: unreadable answer: {exc}", sent=True) from None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No connection cap: the limiter already bounds how many requests start,
            # and a request waiting for a pooled connection would reach the server
            # later than the limiter recorded.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                headers={"User-Agent": USER_AGENT},
            )
            self._owns_session = True
            _no_silent_resend(self._session)
        return self._session

    def _headers(self, extra: Mapping[str, str], has_body: bool) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._key.reveal()}", "Accept": "application/json"}
        if has_body:
            headers["Content-Type"] = "application/json"
        headers.update(extra)
        return headers

    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "***") if key in text else text

    async def _call(
        self,
        method: str,
        path: str,
        route: str,
        *,
        priority: int,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        url = self.base_url + path
        extra = headers or {}
        rate_limited = 0
        while True:
            sent_at = await self.limiter.acquire(priority)
            started = self._clock.monotonic()
            try:
                status, reason, retry_after, raw = await self._send(method, url, body, extra)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                err = transport_error(exc, what=route)
                err.message = self._scrub(err.message)
                err.args = (err.message,)
                self._emit(method, route, None, "network", started)
                raise err from None
            if 200 <= status < 300:
                self.limiter.on_success()
                self._emit(method, route, status, None, started)
                try:
                    return json.loads(raw.decode("utf-8", errors="replace"))
                except ValueError:
                    return None  # _run turns it into TransportError(sent=True)
            error = error_for(
                status,
                raw,
                method=method,
                retry_after_header=retry_after,
                now=self._clock.now(),
                reason=reason,
            )
            error.message = self._scrub(error.message)
            error.args = (error.message,)
            self._emit(method, route, status, error.code, started)
            if not isinstance(error, RateLimited):
                self.limiter.on_success()  # an answer that is not a 429: the rate is fine
                raise error
            rate_limited += 1
            pause = self.limiter.penalize(error.retry_after, sent_at=sent_at)
            log.info(
                "%s: 429 %s, pausing %.2fs (limit now %.1f/window)",
                route,
                error.code,
                pause,
                self.limiter.limit,
            )
            if rate_limited >= self.max_rate_limited:
                error.message = f"{error.message} ({rate_limited} times in a row; giving up)"
                error.args = (error.message,)
                raise error

    async def _send(
        self, method: str, url: str, body: bytes | None, extra: Mapping[str, str]
    ) -> tuple[int, str | None, str | None, bytes]:
        session = self._get_session()
        async with session.request(
            method,
            url,
            data=body,
            headers=self._headers(extra, body is not None),
            timeout=self._timeout,
            allow_redirects=False,
        ) as resp:
            raw = await resp.read()
            return resp.status, resp.reason, resp.headers.get("Retry-After"), raw

    def _emit(
        self, method: str, route: str, status: int | None, code: str | None, started: float
    ) -> None:
        event = RequestEvent(
            at=self._clock.now(),
            method=method,
            route=route,
            status=status,
            code=code,
            elapsed_s=max(0.0, self._clock.monotonic() - started),
        )
        log.debug("%s -> %s %s (%.3fs)", route, status, code or "", event.elapsed_s)
        for observer in self._observers:
            try:
                observer.request(event)
            except Exception:  # an observer must never break a request
                log.exception("observer %r failed on a request event", observer)


def _no_silent_resend(session: aiohttp.ClientSession) -> None:
    # aiohttp quietly sends an idempotent request (our GET) a second time when a
    # reused keep-alive connection drops. That second request never went through
    # the limiter and could break the window bound; we surface the drop instead
    # (TransportError(sent=True)) and let the caller decide.
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
