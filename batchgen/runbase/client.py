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

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from batchgen.clock import Clock, SystemClock
from batchgen.errors import RateLimited, TransportError
from batchgen.events import Observer, RequestEvent
from batchgen.redact import mask_urls_in
from batchgen.runbase.answers import (
    MAX_RETRY_AFTER_S,
    Run,
    error_for,
    parse_retry_after,
)
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.runbase.transport import map_aiohttp_errors, transport_error

log = logging.getLogger(__name__)

ROUTE_CREATE = "POST /api/v1/runs"
ROUTE_GET = "GET /api/v1/runs/{id}"
USER_AGENT = "batchgen/0.1 (+aiohttp)"

_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


__all__ = [
    "MAX_RETRY_AFTER_S",
    "ROUTE_CREATE",
    "ROUTE_GET",
    "Run",
    "RunbaseClient",
    "error_for",
    "parse_retry_after",
    "transport_error",
]


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

    async def get_run(
        self, run_id: str, *, priority: int = 0, on_sent: Callable[[bool], None] | None = None
    ) -> Run:
        """GET /api/v1/runs/{id}: the run now (status; urls when succeeded).

        ``on_sent(True)`` is called when the request leaves the limiter (the key spends
        it), ``on_sent(False)`` when a 429 sends it back to wait there.
        """
        if not run_id:
            raise ValueError("run_id is empty")
        data = await self._call(
            "GET",
            f"/api/v1/runs/{quote(run_id, safe='')}",
            ROUTE_GET,
            priority=priority,
            on_sent=on_sent,
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
        # aiohttp's messages may quote the URL (InvalidURL): no password shown
        return mask_urls_in(text.replace(key, "***") if key in text else text)

    async def _call(
        self,
        method: str,
        path: str,
        route: str,
        *,
        priority: int,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        on_sent: Callable[[bool], None] | None = None,
    ) -> Any:
        url = self.base_url + path
        extra = headers or {}
        rate_limited = 0
        while True:
            sent_at = await self.limiter.acquire(priority)
            if on_sent is not None:
                on_sent(True)
            started = self._clock.monotonic()
            try:
                with map_aiohttp_errors(route, scrub=self._scrub):
                    status, reason, retry_after, raw = await self._send(method, url, body, extra)
            except asyncio.CancelledError:
                # it left (the limiter counted it): the key spent it, whatever the answer
                self._emit(method, route, None, "canceled", started)
                raise
            except TransportError:
                self._emit(method, route, None, "network", started)
                raise
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
            if on_sent is not None:
                on_sent(False)  # back to waiting in the limiter

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
