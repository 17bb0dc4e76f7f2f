"""Bring a run's videos home: resumable, verified, atomic.

For each output URL ``i`` the file ``{stem}.mp4`` (``{stem}-{i+1}.mp4`` when the run
has several) is built like this:

1. Bytes stream into ``.{name}.part`` in the target folder, hashed (sha256) on the way.
   The response's validators (ETag, Last-Modified) and total size go to
   ``.{name}.part.meta`` so a later call, even in another process, can resume.
2. After a cut the download resumes with ``Range: bytes=N-`` and ``If-Range``; a 206
   must carry a matching ``Content-Range`` (same start, same total, same ETag),
   otherwise the partial file is dropped and the download starts over; a 200 answer
   to a range request means the server sent the whole file again.
3. A complete file must have the announced length, start with an MP4 ``ftyp`` box and
   decode to the last frame (``batchgen.files.media.probe``). Its aspect ratio, frame size
   and duration are compared with what was asked (``media.Expectation``); a mismatch
   is recorded in ``SavedFile.note``.
4. fsync, ``os.replace`` onto the final name, fsync of the folder. The final name
   never holds a partial or unverified file.

403/404/410 mean an expired link: ``refresh_urls()`` (one GET of the run, done by the
engine) gives fresh URLs and the same index is tried again. Cuts, timeouts and 5xx
retry with backoff; an attempt that brought new bytes does not use up a try. When the
tries are spent: ``DownloadError``. What each failure means is ``batchgen.retry.decide``'s
call (stage download); aiohttp's errors reach it mapped by ``batchgen.runbase.transport``,
around the network calls only (a full disk is no network failure). Errors raised by
``refresh_urls`` (run lost, key refused) pass through unchanged. Downloads never touch
the API rate limiter. The partial file's bookkeeping is ``batchgen.files.partial``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from batchgen.errors import (
    BatchgenError,
    LinkExpired,
    TransferCorrupt,
    TransferCut,
    TransferError,
    TransportError,
)
from batchgen.files import media
from batchgen.files.media import Expectation, MediaError, MediaInfo
from batchgen.files.partial import CHUNK, Partial, content_range, hash_prefix
from batchgen.files.sidecar import fsync_dir
from batchgen.redact import mask_urls_in
from batchgen.retry import Action, Attempt, RetryPolicy, Stage, decide
from batchgen.runbase.transport import map_aiohttp_errors

EXTENSION = ".mp4"
#: an attempt that makes progress is free, but not endlessly so
_HARD_CAP_FACTOR = 20
_EXPIRED = (403, 404, 410)


class DownloadError(BatchgenError):
    """A file could not be brought home after every allowed try (the engine may try
    the job's download again later)."""

    retryable = True

    def __init__(self, message: str, *, index: int, status: int | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.status = status


@dataclass(frozen=True, slots=True)
class SavedFile:
    path: Path
    sha256: str
    size: int
    media: MediaInfo
    note: str | None = None
    #: the file was already in place with the recorded checksum; nothing was fetched
    reused: bool = False
    #: HTTP GETs this file took (0 when reused)
    requests: int = 0


def file_names(stem: str, count: int) -> list[str]:
    """The final file names of a run with ``count`` outputs."""
    if count == 1:
        return [stem + EXTENSION]
    return [f"{stem}-{i + 1}{EXTENSION}" for i in range(count)]


def discard_partials(dest_dir: Path, stem: str) -> int:
    """Delete the leftover ``.part`` files of ``stem`` (a job that will not be retried)."""
    n = 0
    for p in Path(dest_dir).glob(f".{glob_escape(stem)}*{EXTENSION}.part*"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


async def fetch_outputs(
    session: aiohttp.ClientSession,
    urls: list[str],
    dest_dir: Path,
    stem: str,
    *,
    refresh_urls: Callable[[], Awaitable[list[str]]],
    expect: Expectation,
    max_tries: int = 5,
    known_sha256: Sequence[str | None] | None = None,
    retry: RetryPolicy | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    timeout_s: float = 60.0,
) -> list[SavedFile]:
    """Download every URL of one run into ``dest_dir``; see the module doc.

    ``known_sha256[i]``: the checksum recorded for output ``i`` by an earlier run; when
    the final file is there with that checksum it is kept and not fetched again.
    ``retry`` sets the backoff between tries (default: 0.5 s doubling, capped at 10 s).
    """
    if not urls:
        raise DownloadError("the run lists no output URL", index=0)
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    fetcher = _Fetcher(
        session,
        list(urls),
        Path(dest_dir),
        refresh_urls=refresh_urls,
        expect=expect,
        max_tries=max(1, max_tries),
        retry=retry or RetryPolicy(max_attempts=max_tries, base_s=0.5, cap_s=10.0),
        sleep=sleep,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s),
    )
    saved = []
    for i, name in enumerate(file_names(stem, len(urls))):
        known = known_sha256[i] if known_sha256 and i < len(known_sha256) else None
        saved.append(await fetcher.fetch(i, name, known))
    return saved


# ---------------------------------------------------------------- internals

_WHAT = "GET output file"


class _Fetcher:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: list[str],
        dest_dir: Path,
        *,
        refresh_urls: Callable[[], Awaitable[list[str]]],
        expect: Expectation,
        max_tries: int,
        retry: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]],
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self.session = session
        self.urls = urls
        self.dest = dest_dir
        self.refresh_urls = refresh_urls
        self.expect = expect
        self.max_tries = max_tries
        # the tries of one file are ``max_tries``, whatever the policy says of a job's
        self.retry = dataclasses.replace(retry, max_attempts=max_tries)
        self.sleep = sleep
        self.timeout = timeout

    async def fetch(self, i: int, name: str, known: str | None) -> SavedFile:
        final = self.dest / name
        if known and final.is_file():
            reused = await asyncio.to_thread(self._reuse, final, known)
            if reused is not None:
                return reused
        st = self._load_partial(name)
        fails = refreshes = requests = 0
        # Progress means more bytes on disk than ever before for this file: a try that
        # only re-fetches what a discarded partial held is a failure like any other.
        best = st.size()
        while True:
            requests += 1
            try:
                await self._attempt(st, self.urls[i])
                return await self._finish(st, final, requests)
            except (TransferError, TransportError) as exc:
                error = exc
            if isinstance(error, TransferCorrupt):
                st.discard()
            progressed = st.size() > best
            if progressed:
                best, fails = st.size(), 0
            tries = refreshes if error.link_expired else fails
            decision = decide(
                error, Attempt(tries, progressed=progressed), Stage.DOWNLOAD, self.retry
            )
            if decision.action is Action.REFRESH:
                refreshes += 1
                await self._refresh(i)
                continue
            status = getattr(error, "status", None)
            if error.link_expired:  # refreshed max_tries times, expired again
                raise DownloadError(
                    f"{name}: {error} after {refreshes} refreshes", index=i, status=status
                ) from error
            fails += 1 if decision.counted else 0
            if decision.action is not Action.RETRY or requests >= self.max_tries * _HARD_CAP_FACTOR:
                raise DownloadError(
                    f"{name}: gave up after {requests} requests: {_describe(error)}",
                    index=i,
                    status=status,
                ) from error
            await self.sleep(decision.delay_s)

    async def _refresh(self, i: int) -> None:
        fresh = list(await self.refresh_urls())
        if len(fresh) != len(self.urls):
            raise DownloadError(
                f"the run now lists {len(fresh)} output URLs instead of {len(self.urls)}", index=i
            )
        self.urls[:] = fresh

    def _load_partial(self, name: str) -> Partial:
        st = Partial(part=self.dest / f".{name}.part", meta=self.dest / f".{name}.part.meta")
        for temp in (st.part, st.meta):  # our temp names: a link there is never written through
            if temp.is_symlink():
                temp.unlink()
        if not st.part.exists():
            st.meta.unlink(missing_ok=True)
            return st
        try:
            meta = json.loads(st.meta.read_text(encoding="utf-8"))
            st.etag, st.last_modified, st.total = meta["etag"], meta["last_modified"], meta["total"]
        except (OSError, ValueError, KeyError, TypeError):
            meta = None
        # Without a validator a leftover cannot be proven to belong to the same file.
        if meta is None or st.if_range() is None or (st.total is not None and st.size() > st.total):
            st.discard()
        return st

    async def _attempt(self, st: Partial, url: str) -> None:
        offset = st.size()
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            validator = st.if_range()
            if validator:
                headers["If-Range"] = validator
        with map_aiohttp_errors(_WHAT):
            resp = await self.session.get(url, headers=headers, timeout=self.timeout)
        async with resp:
            if resp.status in _EXPIRED:
                raise LinkExpired(resp.status)
            if resp.status == 416 and offset:
                total = content_range(resp.headers.get("Content-Range"))[2]
                if total == offset and st.total in (None, offset):
                    return  # we already had every byte; a crash came before the rename
                st.discard()
                raise TransferCut("range not satisfiable; starting over", status=416)
            if resp.status == 206:
                start, _end, total = content_range(resp.headers.get("Content-Range"))
                etag = resp.headers.get("ETag")
                if (
                    start != offset
                    or total is None
                    or (st.total is not None and total != st.total)
                    or (st.etag is not None and etag is not None and etag != st.etag)
                ):
                    st.discard()
                    raise TransferCut("the server's range answer does not continue our file")
                st.total = total
                st.etag = st.etag or etag
            elif resp.status == 200:
                # A full answer: the server ignored the range or the file changed (If-Range).
                if offset:
                    st.discard()
                    offset = 0
                st.total = resp.content_length
                st.etag = resp.headers.get("ETag")
                st.last_modified = resp.headers.get("Last-Modified")
            else:
                raise TransferCut(f"HTTP {resp.status}", status=resp.status)
            if offset == 0:
                st.save_meta()
            await self._stream(st, resp, offset)

    async def _stream(self, st: Partial, resp: aiohttp.ClientResponse, offset: int) -> None:
        if offset == 0:
            st.hasher, st.hashed = hashlib.sha256(), 0
        elif st.hasher is None or st.hashed != offset:
            st.hasher, st.hashed = await asyncio.to_thread(hash_prefix, st.part, offset)
        head = b""
        with open(st.part, "ab" if offset else "wb") as fh:
            chunks = resp.content.iter_chunked(CHUNK)
            while True:
                with map_aiohttp_errors(_WHAT):
                    chunk = await anext(chunks, b"")
                if not chunk:
                    break
                if offset + len(head) < 8:
                    head += chunk
                    if offset == 0 and len(head) >= 8 and not media.looks_like_mp4(head):
                        raise TransferCorrupt("the server sent something that is not an MP4 file")
                fh.write(chunk)
                st.hasher.update(chunk)
                st.hashed += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        size = st.size()
        if st.total is not None and size < st.total:
            raise TransferCut(f"cut short at {size} of {st.total} bytes")
        if st.total is not None and size > st.total:
            raise TransferCorrupt(f"got {size} bytes, {st.total} were announced")

    async def _finish(self, st: Partial, final: Path, requests: int) -> SavedFile:
        if st.hasher is None or st.hashed != st.size():
            st.hasher, st.hashed = await asyncio.to_thread(hash_prefix, st.part, st.size())
        with open(st.part, "rb") as fh:
            if not media.looks_like_mp4(fh.read(12)):
                raise TransferCorrupt("the file is not an MP4 (no ftyp box)")
        try:
            info = await asyncio.to_thread(media.probe, st.part)
        except MediaError as exc:
            raise TransferCorrupt(f"the file does not decode: {exc}") from exc
        if info.frames == 0:
            raise TransferCorrupt("the file holds no decodable frame")
        digest, size = st.hasher.hexdigest(), st.size()
        os.replace(st.part, final)
        fsync_dir(final.parent)
        st.meta.unlink(missing_ok=True)
        return SavedFile(final, digest, size, info, self.expect.mismatch(info), False, requests)

    def _reuse(self, final: Path, known: str) -> SavedFile | None:
        hasher, size = hash_prefix(final, None)
        if hasher.hexdigest() != known:
            return None
        try:
            info = media.probe(final, decode=False)
        except MediaError:
            return None
        return SavedFile(final, known, size, info, self.expect.mismatch(info), True, 0)


def _describe(exc: TransferError | TransportError) -> str:
    if isinstance(exc, TransportError):  # as the network library named it
        return f"{exc.kind}: {exc.detail or exc.kind}"
    return mask_urls_in(str(exc)) or type(exc).__name__
