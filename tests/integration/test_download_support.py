"""A loopback file server with exact, scriptable faults, and a real MP4 maker.

Used by the download tests; the few tests here check that the fixture itself behaves
(serves ranges, cuts when told), so a download test never passes by accident.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from batchgen.files import media
from tests.support.files import Fault, FileServer

# ---------------------------------------------------------------- the fixture's own tests


def test_make_mp4_is_a_real_video(tmp_path: Path, mp4_16x9: bytes) -> None:
    p = tmp_path / "a.mp4"
    p.write_bytes(mp4_16x9)
    info = media.probe(p)
    assert (info.width, info.height, info.codec) == (64, 36, "h264")
    assert info.frames == 20 and abs(info.duration_s - 5.0) < 0.3
    assert media.looks_like_mp4(mp4_16x9[:12]) and len(mp4_16x9) > 20_000


async def test_server_serves_ranges_and_cuts(server: FileServer, mp4_16x9: bytes) -> None:
    server.add("a.mp4", mp4_16x9, Fault(cuts=1))
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.get(server.url("a.mp4")) as r:
                await r.read()
        async with s.get(server.url("a.mp4"), headers={"Range": "bytes=100-"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 100-{len(mp4_16x9) - 1}/{len(mp4_16x9)}"
            assert await r.read() == mp4_16x9[100:]
