"""A loopback file server with exact, scriptable faults (`FileServer`, `Fault`), and a real MP4
maker.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
from dataclasses import dataclass, field

import av
from aiohttp import web


def make_mp4(
    width: int = 64, height: int = 36, *, fps: int = 4, seconds: float = 5.0, seed: int = 0
) -> bytes:
    """A real H.264 MP4 whose frames are noise (so it is tens of kB, worth cutting)."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(fps * seconds)):
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane in frame.planes:
                plane.update(rng.randbytes(plane.buffer_size))
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@dataclass
class Seen:
    path: str
    token: str
    headers: dict[str, str]
    status: int


@dataclass
class Fault:
    """What the server does to one file. Counters count down per request."""

    cuts: int = 0  # the next N full/range answers stop halfway through the body
    expired_tokens: set[str] = field(default_factory=set)  # 403 for these URL tokens
    gone_status: int = 403
    errors: int = 0  # the next N requests answer 500
    ignore_range: bool = False  # always 200 with the whole file
    extra_length: int = 0  # announce this many more bytes than sent, then close
    body_override: bytes | None = None  # serve these bytes instead (e.g. HTML)
    replace_after: int | None = None  # after N requests, the file changes (new ETag)
    replacement: bytes | None = None
    stalls: int = 0  # the next N answers send half the body, then go silent
    stall_s: float = 5.0


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, Fault] = {}
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def add(self, name: str, data: bytes, fault: Fault | None = None) -> None:
        self.files[name] = data
        self.faults[name] = fault or Fault()

    def url(self, name: str, token: str = "t1") -> str:
        return f"{self.base_url}/files/{name}?token={token}"

    def requests_for(self, name: str) -> list[Seen]:
        return [s for s in self.seen if s.path == name]

    async def __aenter__(self) -> FileServer:
        app = web.Application()
        app.router.add_get("/files/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        token = request.query.get("token", "")
        seen = Seen(name, token, dict(request.headers), 0)
        self.seen.append(seen)
        if name not in self.files:
            seen.status = 404
            return web.Response(status=404)
        fault = self.faults[name]
        n = len(self.requests_for(name))
        if fault.replace_after is not None and n > fault.replace_after and fault.replacement:
            self.files[name] = fault.replacement
        if token in fault.expired_tokens:
            seen.status = fault.gone_status
            return web.Response(status=fault.gone_status, text="expired")
        if fault.errors > 0:
            fault.errors -= 1
            seen.status = 500
            return web.Response(status=500, text="boom")
        data = fault.body_override if fault.body_override is not None else self.files[name]
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        start = 0
        rng = request.headers.get("Range")
        if rng and not fault.ignore_range:
            if_range = request.headers.get("If-Range")
            if if_range is None or if_range == etag:
                start = int(rng.removeprefix("bytes=").split("-")[0])
        if start >= len(data) and start:
            seen.status = 416
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        resp = web.StreamResponse(status=206 if start else 200)
        resp.headers["ETag"] = etag
        resp.headers["Content-Type"] = "video/mp4"
        resp.headers["Accept-Ranges"] = "bytes"
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        resp.content_length = len(body) + fault.extra_length
        seen.status = resp.status
        await resp.prepare(request)
        if fault.stalls > 0:
            fault.stalls -= 1
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(fault.stall_s)
            return resp
        if fault.cuts > 0 or fault.extra_length:
            if fault.cuts > 0:
                fault.cuts -= 1
                body = body[: len(body) // 2]
            await resp.write(body)
            # Let the client consume what was sent, as on a real link, before hanging up:
            # aiohttp drops bytes still buffered when the connection error is raised.
            await asyncio.sleep(0.02)
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp
