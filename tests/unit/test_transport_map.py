"""``map_aiohttp_errors``: an aiohttp failure becomes a ``TransportError``, ``sent`` right.

The exceptions are built directly, as aiohttp raises them; ``sent`` False means the
request surely never left (a lost POST then cannot have charged a run).
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from batchgen.errors import TransferCut, TransportError
from batchgen.runbase.transport import map_aiohttp_errors, transport_error

KEY = ConnectionKey("runbase.invalid", 443, True, True, None, None, None)
DNS = OSError(-2, "Name or service not known")

NOT_SENT: list[BaseException] = [
    aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "Connection refused")),
    aiohttp.ClientConnectorDNSError(KEY, DNS),
    aiohttp.ClientConnectorSSLError(KEY, ssl.SSLError(1, "handshake failure")),
    aiohttp.ClientConnectorCertificateError(KEY, ssl.SSLCertVerificationError(1, "bad cert")),
    aiohttp.ConnectionTimeoutError("connect"),
]
SENT: list[BaseException] = [
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientPayloadError("cut"),
    aiohttp.SocketTimeoutError("read"),
    aiohttp.ServerTimeoutError("read"),
    aiohttp.ClientOSError(104, "Connection reset by peer"),
    aiohttp.ClientConnectionResetError("reset"),
    aiohttp.ServerFingerprintMismatch(b"a", b"b", "runbase.invalid", 443),
    TimeoutError(),
    ConnectionResetError(),
    OSError(32, "Broken pipe"),
]


def _mapped(exc: BaseException) -> TransportError:
    with pytest.raises(TransportError) as info, map_aiohttp_errors("POST /api/v1/runs"):
        raise exc
    return info.value


@pytest.mark.parametrize(
    ("exc", "sent"),
    [pytest.param(e, False, id=type(e).__name__) for e in NOT_SENT]
    + [pytest.param(e, True, id=type(e).__name__) for e in SENT],
)
def test_each_failure_says_whether_the_request_may_have_arrived(
    exc: BaseException, sent: bool
) -> None:
    err = _mapped(exc)
    assert err.sent is sent
    assert err.code == "network" and err.status is None and err.retryable
    assert err.kind == type(exc).__name__
    how = "could not connect" if not sent else "no answer"
    assert str(err).startswith(f"network POST /api/v1/runs: {how}: {type(exc).__name__}")
    # never chained: the original text may hold what was scrubbed
    assert err.__cause__ is None and err.__suppress_context__


def test_the_text_is_scrubbed_of_urls_and_what_the_caller_names() -> None:
    exc = aiohttp.ClientOSError(104, "reset by https://user:pw@cdn.invalid/x sk-secret")
    with (
        pytest.raises(TransportError) as info,
        map_aiohttp_errors("GET", scrub=lambda t: t.replace("sk-secret", "***")),
    ):
        raise exc
    assert "sk-secret" not in str(info.value) and "***" in info.value.detail
    default = transport_error(exc, what="GET")
    assert "user:***@cdn" in str(default) and "pw@" not in str(default)


def test_what_is_not_a_network_failure_passes_unchanged() -> None:
    ours = TransferCut("HTTP 503", status=503)
    for exc in (ValueError("bad json"), ours, KeyError("k")):
        with pytest.raises(type(exc)) as info, map_aiohttp_errors("GET"):
            raise exc
        assert info.value is exc


def test_a_cancellation_is_never_mapped() -> None:
    with pytest.raises(asyncio.CancelledError), map_aiohttp_errors("GET"):
        raise asyncio.CancelledError


def test_nothing_raised_nothing_mapped() -> None:
    with map_aiohttp_errors("GET"):
        value = 1
    assert value == 1
