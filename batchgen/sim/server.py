"""The HTTP face of the simulator: aiohttp routes and the ``Simulator`` context manager.

Every API request goes through the same gate, in this order: authentication (401),
the key's sliding rate window (429; a refused request does not count), then the
injected faults (500 before anything happens, a dropped connection before or
after the run is created). See docs/sim.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from batchgen.sim import files
from batchgen.sim.config import SimConfig
from batchgen.sim.runs import SimRun
from batchgen.sim.state import ROUTE_CREATE, ROUTE_FILES, ROUTE_GET, Refusal, SimState
from batchgen.sim.video import ClipCache

_MAX_BODY = 8 * 1024 * 1024  # image_urls may carry data: URIs
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path, wrong method, body too large) in the
    API's error shape, like every other error the simulator sends."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        answer = files.error_json(exc.status, code, exc.reason)
        if "Allow" in exc.headers:
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer


class Simulator:
    """A local Runbase server. ``async with Simulator(SimConfig(...)) as sim: sim.base_url``.

    ``slow_answers``: POSTs that created (and charged) a run and whose answer is
    still being held back by the slow-answer fault.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.state = SimState(self.config)
        self.clips = ClipCache()
        self.slow_answers = 0
        self.base_url = ""
        self._signer = files.UrlSigner(os.urandom(32))
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------ public

    def stats(self) -> dict[str, Any]:
        """Counters for tests and benchmarks (no API key in it). See docs/sim.md."""
        out = self.state.stats()
        out["clips_encoded"] = self.clips.encoded
        out["slow_answers_in_progress"] = self.slow_answers
        return out

    def reset(self) -> None:
        """Forget every run, balance, window and counter; the RNGs start again."""
        self.state.reset()

    async def start(self) -> str:
        app = web.Application(client_max_size=_MAX_BODY, middlewares=[_json_errors])
        app.router.add_post("/api/v1/runs", self._create)
        app.router.add_get("/api/v1/runs/{run_id}", self._get)
        app.router.add_get("/files/{run_id}/{name}", self._file)
        app.router.add_get("/_sim/stats", self._stats)
        app.router.add_post("/_sim/reset", self._reset)
        app.router.add_post("/_sim/keys/{n}/{action}", self._key_admin)
        # no access log: the request line is harmless, but nothing here logs by habit
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        host, port = self.config.host, self.config.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            await self._runner.cleanup()
            raise
        site = web.SockSite(self._runner, sock)
        await site.start()
        bound = sock.getsockname()[1]
        url_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        if ":" in url_host:
            url_host = f"[{url_host}]"
        self.base_url = f"http://{url_host}:{bound}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ plumbing

    def _answer(self, route: str, status: int, body: dict[str, Any]) -> web.Response:
        self.state.count(route, status)
        return web.json_response(body, status=status)

    def _refuse(self, route: str, refusal: Refusal) -> web.Response:
        return self._answer(route, refusal.status, refusal.body())

    def _drop(self, request: web.Request, route: str, counter: str) -> web.Response:
        self.state.count(route, "dropped")
        self.state.counters[counter] += 1
        if request.transport is not None:
            request.transport.abort()
        return web.Response()

    def _urls_for(self, request: web.Request) -> Callable[[SimRun], list[str]]:
        base = f"{request.scheme}://{request.host}"

        def urls(run: SimRun) -> list[str]:
            now = time.time()
            run.url_views += 1
            expires = now + self.config.url_ttl_s
            if self.config.stale_first_url and run.url_views == 1:
                expires = now - 1.0
            return [self._signer.url(base, f"/files/{run.id}/0.mp4", expires)]

        return urls

    def _gate(self, request: web.Request) -> tuple[int, bool, bool]:
        """Auth and rate window (raises Refusal), then this request's fault draws:
        500 (raised), and (account, drop the connection, drop only after the work)."""
        self.state.settle()
        account = self.state.authenticate(request.headers.get("Authorization"))
        self.state.admit(account)
        rng, c = self.state.faults_rng, self.config
        error = rng.random() < c.error_rate
        drop = rng.random() < c.drop_rate
        after = rng.random() < 0.5
        if error:
            self.state.counters["errors_injected"] += 1
            raise Refusal(500, "internal_error", "Internal server error (simulated)")
        return account, drop, after

    # ------------------------------------------------------------ routes

    async def _create(self, request: web.Request) -> web.StreamResponse:
        route = ROUTE_CREATE
        try:
            account, drop, after = self._gate(request)
            raw = await request.read()
            if drop and not after:  # the request arrived; nothing was done
                return self._drop(request, route, "dropped_before_create")
            try:
                body = json.loads(raw)
            except ValueError:
                raise Refusal(400, "invalid_json", "The body is not valid JSON") from None
            idem = request.headers.get("Idempotency-Key")
            run, replayed = self.state.create(account, body, idem)
        except Refusal as refusal:
            return self._refuse(route, refusal)
        if not replayed and self.state.faults_rng.random() < self.config.slow_rate:
            # created and charged; the answer takes its time (a kill now is the worst case)
            self.slow_answers += 1
            self.state.counters["slow_answers_sent"] += 1
            try:
                await asyncio.sleep(self.config.slow_s)
            finally:
                self.slow_answers -= 1
        if drop:
            return self._drop(request, route, "dropped_after_create")
        view = self.state.view(run, self._urls_for(request), created=not replayed)
        return self._answer(route, 200, view)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        route = ROUTE_GET
        while self.config.hold_polls:  # held before the gate: no window, no fault draw
            await asyncio.sleep(0.01)
        try:
            account, drop, _after = self._gate(request)
            if drop:
                return self._drop(request, route, "dropped_gets")
            run = self.state.find(account, request.match_info["run_id"])
        except Refusal as refusal:
            return self._refuse(route, refusal)
        view = self.state.view(run, self._urls_for(request))
        slow = self.config.slow_poll_rate  # drawn only when on: other draws stay as they were
        if slow > 0 and self.state.faults_rng.random() < slow:
            self.state.counters["slow_polls_sent"] += 1
            await asyncio.sleep(self.config.slow_s)  # the answer as it was, late
        return self._answer(route, 200, view)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        route = ROUTE_FILES
        path = request.path
        why = self._signer.check(
            path, request.query.get("exp", ""), request.query.get("sig", ""), time.time()
        )
        if why is not None:
            self.state.counters["expired_url_hits"] += why == "URL expired"
            return self._refuse(route, Refusal(403, "forbidden", f"Forbidden: {why}"))
        self.state.settle()
        run = self.state.book.runs.get(request.match_info["run_id"])
        if run is None or request.match_info["name"] != "0.mp4" or not run.settled or run.fails:
            return self._refuse(route, Refusal(404, "not_found", "No such file"))
        inp = run.input
        clip = await self.clips.get(
            inp["prompt"],
            inp["aspect_ratio"],
            inp["resolution"],
            float(inp["duration"]),
            tiny=self.config.tiny_videos,
        )
        status, headers, body = files.plan_answer(request, clip.data, clip.etag)
        cut = (
            request.method == "GET"
            and status in (200, 206)
            and self.state.faults_rng.random() < self.config.cut_rate
        )
        self.state.count(route, status)
        if cut:
            self.state.counters["downloads_cut"] += 1
        return await files.send(request, status, headers, body, cut=cut)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    async def _key_admin(self, request: web.Request) -> web.Response:
        """``POST /_sim/keys/{n}/revoke`` (401 from then on) or ``.../empty`` (balance 0:
        402 on its next POST); ``n`` as in ``key#n`` of the stats."""
        action = request.match_info["action"]
        try:
            n = int(request.match_info["n"])
            {"revoke": self.state.take_key_away, "empty": self.state.empty_balance}[action](n)
        except (ValueError, KeyError):
            return files.error_json(404, "not_found", "POST /_sim/keys/{n}/revoke or /empty")
        except Refusal as refusal:
            return web.json_response(refusal.body(), status=refusal.status)
        return web.json_response({"key": f"key#{n}", action: True})
