"""Output URLs that expire, and serving a file the way a CDN does (ETag, Range).

A URL carries its expiry (``exp``, Unix milliseconds) and a signature over path
and expiry, so it cannot be extended by editing it. Past its expiry it answers
403, like a signed CDN link; a fresh GET of the run hands out fresh URLs.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from aiohttp import web

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class UrlSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sig(self, path: str, exp_ms: int) -> str:
        msg = f"{path}\n{exp_ms}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def url(self, base_url: str, path: str, expires_at: float) -> str:
        exp_ms = int(expires_at * 1000)
        return f"{base_url}{path}?exp={exp_ms}&sig={self._sig(path, exp_ms)}"

    def check(self, path: str, exp: str, sig: str, now: float) -> str | None:
        """None when the URL is valid now, else why not."""
        if not exp.isdigit() or not hmac.compare_digest(self._sig(path, int(exp)), sig):
            return "bad signature"
        if now * 1000 >= int(exp):
            return "URL expired"
        return None


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b``, ``bytes=a-``, ``bytes=-n`` -> inclusive (start, end).

    Raises ValueError when the range cannot be satisfied (416). A header that is
    not a single byte range is ignored (None: the whole file), as RFC 9110 allows.
    """
    m = _RANGE.fullmatch(header.strip())
    if not m or not (m.group(1) or m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise ValueError("empty suffix range")
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise ValueError("range starts past the end")
    return start, end


def error_json(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": code}}, status=status)


def plan_answer(request: web.Request, data: bytes, etag: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body for a GET of ``data`` honouring Range and If-Range."""
    size = len(data)
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Type": "video/mp4",
        "Cache-Control": "private, max-age=86400",
    }
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if range_header is None or (if_range is not None and if_range != etag):
        return 200, headers, data
    try:
        span = parse_range(range_header, size)
    except ValueError:
        return 416, {**headers, "Content-Range": f"bytes */{size}"}, b""
    if span is None:
        return 200, headers, data
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return 206, headers, data[start : end + 1]


async def send(
    request: web.Request, status: int, headers: dict[str, str], body: bytes, *, cut: bool
) -> web.StreamResponse:
    """Send the answer; with ``cut``, announce the full length and stop halfway."""
    if not cut or len(body) < 2:
        return web.Response(status=status, body=body, headers=headers)
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.abort()
    return resp
