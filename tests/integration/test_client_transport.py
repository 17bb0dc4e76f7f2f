"""No HTTP answer: which failures surely sent nothing, and which may have created a run."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batchgen.errors import TransportError
from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.observe.progress import RequestTally
from batchgen.runbase.client import RunbaseClient, transport_error
from batchgen.runbase.ratelimit import RequestLimiter

MODEL = "bytedance/seedance-1-pro"


def limiter() -> RequestLimiter:
    return RequestLimiter(1000, 1.0, margin_s=0.0, burst=1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[TestServer] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


async def post(url: str, api_key: str, **kw: object) -> None:
    async with RunbaseClient(url, api_key, limiter=limiter(), **kw) as client:  # type: ignore[arg-type]
        await client.create_run(MODEL, {"prompt": "x"}, idempotency_key="k")


async def test_connection_refused_sent_nothing(api_key):
    with pytest.raises(TransportError) as info:
        await post(f"http://127.0.0.1:{free_port()}", api_key)
    assert info.value.sent is False
    assert info.value.retryable
    assert str(info.value).startswith("network POST /api/v1/runs: could not connect: ")


async def test_connect_timeout_sent_nothing(api_key):
    # A listening socket whose accept queue is full drops new SYNs: connect hangs.
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        port = lsock.getsockname()[1]
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        try:
            with pytest.raises(TransportError) as info:
                await post(
                    f"http://127.0.0.1:{port}", api_key, connect_timeout_s=0.3, timeout_s=5.0
                )
        finally:
            for s in fillers:
                s.close()
    assert info.value.sent is False


async def test_server_dropping_the_connection_may_have_created_the_run(serve, api_key):
    seen = 0

    async def drop(request: web.Request) -> web.StreamResponse:
        nonlocal seen
        seen += 1
        await request.read()
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1)
        return web.Response()

    url = await serve(drop)
    with pytest.raises(TransportError) as info:
        await post(url, api_key)
    assert info.value.sent is True
    assert seen == 1


async def test_read_timeout_may_have_created_the_run(serve, api_key):
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.json_response({"id": "run_late"})

    url = await serve(slow)
    with pytest.raises(TransportError) as info:
        await post(url, api_key, timeout_s=0.2)
    assert info.value.sent is True


async def test_answer_cut_short_may_have_created_the_run(api_key):
    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\n\r\n{"id": "run_'
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TransportError) as info:
            await post(f"http://127.0.0.1:{port}", api_key)
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.sent is True


async def test_get_on_a_dropped_keepalive_connection_is_not_silently_resent(serve, api_key):
    """aiohttp would resend the GET by itself, past the limiter; we do not let it."""
    seen = 0

    async def second_drops(request: web.Request) -> web.StreamResponse:
        nonlocal seen
        seen += 1
        if seen >= 2:
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(1)
        return web.json_response({"id": "run_a", "status": "processing"})

    url = await serve(second_drops)
    lim = limiter()
    async with RunbaseClient(url, api_key, limiter=lim) as client:
        await client.get_run("run_a")
        with pytest.raises(TransportError) as info:
            await client.get_run("run_a")
    assert info.value.sent is True
    assert seen == 2
    assert lim.stats().sent == 2


@pytest.mark.parametrize(
    ("exc", "sent"),
    [
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientPayloadError("cut"), True),
        (aiohttp.SocketTimeoutError("read"), True),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (aiohttp.ConnectionTimeoutError("connect"), False),
    ],
)
def test_which_failures_count_as_sent(exc, sent):
    err = transport_error(exc, what="POST /api/v1/runs")
    assert err.sent is sent
    assert err.code == "network" and err.status is None
    assert type(exc).__name__ in str(err)


def test_connector_errors_such_as_dns_sent_nothing():
    key = aiohttp.client_reqrep.ConnectionKey("runbase.invalid", 443, True, True, None, None, None)
    for cls in (aiohttp.ClientConnectorError, aiohttp.ClientConnectorDNSError):
        exc = cls(key, OSError(-2, "Name or service not known"))
        assert transport_error(exc, what="GET").sent is False


async def test_a_request_cancelled_on_the_wire_is_still_counted(serve, api_key):
    # An early poll is cancelled when its run becomes due: if its GET already left, the
    # key spent it, and the tally (and --json's requests_total) must say so.
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(5)
        return web.json_response({"id": "run_a", "status": "pending"})

    url = await serve(slow)
    seen: list[tuple[str, int | None, str | None]] = []

    class Tally:
        def request(self, ev: RequestEvent) -> None:
            seen.append((ev.route, ev.status, ev.code))

        def transition(self, ev: TransitionEvent) -> None:
            pass

        def finished(self, summary: RunSummary) -> None:
            pass

    async with RunbaseClient(url, api_key, limiter=limiter(), observers=[Tally()]) as client:
        task = asyncio.create_task(client.get_run("run_a"))
        await asyncio.wait_for(arrived.wait(), 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert seen == [("GET /api/v1/runs/{id}", None, "canceled")]
    tally = RequestTally()
    tally.request(RequestEvent(at=0, method="GET", route="r", status=None, code="canceled"))
    assert tally.by_route == {"r": {"canceled": 1}}
