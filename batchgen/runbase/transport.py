"""Aiohttp's exceptions as ours: the one place that knows them.

Every caller of aiohttp (the API client, the downloads, the notification) runs its
network calls inside ``map_aiohttp_errors()``, in the manner of httpx's
``map_httpcore_exceptions``: what leaves is a ``batchgen.errors.TransportError``, never
an aiohttp class, and ``decide()`` reads it like any other error.

``TransportError.sent`` decides whether a lost POST may have charged a run, so it is
False only when the request surely never left: the connection itself failed (refused,
DNS, TLS handshake, a connect timeout or a wait for a pooled connection). A reset, a
read timeout, a cut body or anything else may have come after the server had it.

Only network calls go inside: an ``OSError`` of our own disk (a full one) is not a
network failure and must not be mapped as one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import aiohttp

from batchgen.errors import TransportError
from batchgen.redact import mask_urls_in

#: what a network call may raise instead of answering
NETWORK_ERRORS = (TimeoutError, aiohttp.ClientError, OSError)


def transport_error(
    exc: BaseException, *, what: str, scrub: Callable[[str], str] = mask_urls_in
) -> TransportError:
    """No HTTP answer. ``sent`` is False only when the request surely never left.

    ``scrub`` cleans aiohttp's text (it may quote a URL with its password, a token)."""
    kind = type(exc).__name__
    detail = scrub(str(exc).strip())
    described = f"{kind}: {detail}" if detail else kind
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        # refused, DNS, TLS handshake, connect timeout (or pool wait): nothing was sent
        err = TransportError(f"{what}: could not connect: {described}", sent=False)
    else:
        err = TransportError(f"{what}: no answer: {described}", sent=True)
    err.kind, err.detail = kind, detail
    return err


@contextmanager
def map_aiohttp_errors(what: str, *, scrub: Callable[[str], str] = mask_urls_in) -> Iterator[None]:
    """Run network calls; a failure among ``NETWORK_ERRORS`` leaves as ``TransportError``.

    The original is not chained (``from None``): its text may hold what ``scrub``
    removed, and a traceback in a log file must not bring it back."""
    try:
        yield
    except NETWORK_ERRORS as exc:
        raise transport_error(exc, what=what, scrub=scrub) from None
