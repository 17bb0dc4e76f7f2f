"""fetch_outputs against a loopback server whose faults are scripted exactly."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import aiohttp
import pytest

from batchgen.files.download import DownloadError, fetch_outputs, file_names
from batchgen.files.media import Expectation
from batchgen.retry import RetryPolicy
from tests.support.files import Fault, FileServer, make_mp4

EXPECT = Expectation(aspect_ratio="16:9", duration_s=5.0)
NO_WAIT = RetryPolicy.zero()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


async def no_refresh() -> list[str]:
    raise AssertionError("refresh_urls must not be called")


async def test_plain_download(server: FileServer, mp4_16x9: bytes, tmp_path: Path) -> None:
    server.add("a.mp4", mp4_16x9)
    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s, [server.url("a.mp4")], tmp_path, "clip", refresh_urls=no_refresh, expect=EXPECT
        )
    assert f.path == tmp_path / "clip.mp4"
    assert f.path.read_bytes() == mp4_16x9
    assert f.sha256 == sha(mp4_16x9) and f.size == len(mp4_16x9)
    assert (f.media.width, f.media.height, f.media.frames) == (64, 36, 20)
    assert f.note is None and f.requests == 1
    assert listing(tmp_path) == ["clip.mp4"]
    assert server.seen[0].headers.get("Accept-Encoding") == "identity"
    assert "Authorization" not in server.seen[0].headers


async def test_cut_mid_file_resumes_with_range(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    server.add("a.mp4", mp4_16x9, Fault(cuts=1))
    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s,
            [server.url("a.mp4")],
            tmp_path,
            "clip",
            refresh_urls=no_refresh,
            expect=EXPECT,
            retry=NO_WAIT,
        )
    first, second = server.requests_for("a.mp4")
    assert "Range" not in first.headers
    half = len(mp4_16x9) // 2
    assert second.headers["Range"] == f"bytes={half}-"
    assert second.headers["If-Range"].startswith('"')
    assert second.status == 206
    assert f.sha256 == sha(mp4_16x9) and f.path.read_bytes() == mp4_16x9
    assert listing(tmp_path) == ["clip.mp4"]


async def test_many_cuts_still_finish_because_progress_is_free(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    # Each answer stops halfway: 8 cuts in a row, more than max_tries, still converge.
    server.add("a.mp4", mp4_16x9, Fault(cuts=8))
    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s,
            [server.url("a.mp4")],
            tmp_path,
            "clip",
            refresh_urls=no_refresh,
            expect=EXPECT,
            retry=NO_WAIT,
            max_tries=3,
        )
    assert f.sha256 == sha(mp4_16x9) and f.requests == 9


async def test_stalled_transfer_times_out_and_resumes(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    server.add("a.mp4", mp4_16x9, Fault(stalls=1, stall_s=0.5))
    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s,
            [server.url("a.mp4")],
            tmp_path,
            "clip",
            refresh_urls=no_refresh,
            expect=EXPECT,
            retry=NO_WAIT,
            timeout_s=0.2,
        )
    second = server.requests_for("a.mp4")[1]
    assert second.headers["Range"] == f"bytes={len(mp4_16x9) // 2}-"
    assert f.sha256 == sha(mp4_16x9)


async def test_missing_folder_is_created(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    server.add("a.mp4", mp4_16x9)
    dest = tmp_path / "2026-01-01" / "out"
    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s, [server.url("a.mp4")], dest, "clip", refresh_urls=no_refresh, expect=EXPECT
        )
    assert f.path == dest / "clip.mp4"


async def test_expired_url_refreshed_once_then_same_index(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    other = make_mp4(64, 36, seed=1)
    server.add("a.mp4", mp4_16x9, Fault(expired_tokens={"old"}))
    server.add("b.mp4", other, Fault(expired_tokens={"old"}))
    calls = 0

    async def refresh() -> list[str]:
        nonlocal calls
        calls += 1
        return [server.url("a.mp4", "new"), server.url("b.mp4", "new")]

    old = [server.url("a.mp4", "old"), server.url("b.mp4", "old")]
    async with aiohttp.ClientSession() as s:
        saved = await fetch_outputs(s, old, tmp_path, "clip", refresh_urls=refresh, expect=EXPECT)
    assert calls == 1  # one GET of the run refreshed both links
    assert [f.path.name for f in saved] == ["clip-1.mp4", "clip-2.mp4"]
    assert [f.sha256 for f in saved] == [sha(mp4_16x9), sha(other)]
    assert [s.token for s in server.requests_for("a.mp4")] == ["old", "new"]
    assert [s.token for s in server.requests_for("b.mp4")] == ["new"]


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_expiry_during_resume_keeps_the_partial(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path, status: int
) -> None:
    fault = Fault(cuts=1, gone_status=status)
    server.add("a.mp4", mp4_16x9, fault)
    calls = 0

    async def refresh() -> list[str]:
        nonlocal calls
        calls += 1
        return [server.url("a.mp4", "fresh")]

    async def expire_then_sleep(_: float) -> None:
        fault.expired_tokens.add("t1")  # the link dies while we back off

    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s,
            [server.url("a.mp4")],
            tmp_path,
            "clip",
            refresh_urls=refresh,
            expect=EXPECT,
            retry=NO_WAIT,
            sleep=expire_then_sleep,
        )
    seen = server.requests_for("a.mp4")
    assert [x.status for x in seen] == [200, status, 206]
    assert seen[2].token == "fresh" and seen[2].headers["Range"].startswith("bytes=")
    assert calls == 1 and f.sha256 == sha(mp4_16x9)


async def test_refresh_that_never_helps_gives_up(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    server.add("a.mp4", mp4_16x9, Fault(expired_tokens={"t1"}))
    calls = 0

    async def refresh() -> list[str]:
        nonlocal calls
        calls += 1
        return [server.url("a.mp4", "t1")]

    async with aiohttp.ClientSession() as s:
        with pytest.raises(DownloadError) as info:
            await fetch_outputs(
                s,
                [server.url("a.mp4")],
                tmp_path,
                "clip",
                refresh_urls=refresh,
                expect=EXPECT,
                max_tries=3,
            )
    assert info.value.status == 403 and calls == 3
    assert listing(tmp_path) == []


async def test_refresh_errors_pass_through(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    from batchgen.errors import RunNotFound

    server.add("a.mp4", mp4_16x9, Fault(expired_tokens={"t1"}))

    async def refresh() -> list[str]:
        raise RunNotFound("no such run", code="run_not_found")

    async with aiohttp.ClientSession() as s:
        with pytest.raises(RunNotFound):
            await fetch_outputs(
                s, [server.url("a.mp4")], tmp_path, "clip", refresh_urls=refresh, expect=EXPECT
            )


async def test_server_errors_retry_with_backoff(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    server.add("a.mp4", mp4_16x9, Fault(errors=2))
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    policy = RetryPolicy(base_s=1.0, cap_s=60.0, jitter=False)
    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s,
            [server.url("a.mp4")],
            tmp_path,
            "clip",
            refresh_urls=no_refresh,
            expect=EXPECT,
            retry=policy,
            sleep=sleep,
        )
    assert waits == [1.0, 2.0] and f.requests == 3


async def test_persistent_errors_raise_download_error(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    server.add("a.mp4", mp4_16x9, Fault(errors=100))
    async with aiohttp.ClientSession() as s:
        with pytest.raises(DownloadError, match="HTTP 500") as info:
            await fetch_outputs(
                s,
                [server.url("a.mp4")],
                tmp_path,
                "clip",
                refresh_urls=no_refresh,
                expect=EXPECT,
                retry=NO_WAIT,
                max_tries=4,
            )
    assert info.value.status == 500 and len(server.requests_for("a.mp4")) == 4
    assert listing(tmp_path) == []


async def test_not_an_mp4_fails_and_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    html = b"<html><body>" + b"x" * 50_000 + b"</body></html>"
    server.add("a.mp4", html)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(DownloadError, match="not an MP4"):
            await fetch_outputs(
                s,
                [server.url("a.mp4")],
                tmp_path,
                "clip",
                refresh_urls=no_refresh,
                expect=EXPECT,
                retry=NO_WAIT,
                max_tries=2,
            )
    assert listing(tmp_path) == []


async def test_mp4_head_but_garbage_body_does_not_decode(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    bad = mp4_16x9[:64] + bytes(len(mp4_16x9) - 64)
    server.add("a.mp4", bad)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(DownloadError, match="does not decode"):
            await fetch_outputs(
                s,
                [server.url("a.mp4")],
                tmp_path,
                "clip",
                refresh_urls=no_refresh,
                expect=EXPECT,
                retry=NO_WAIT,
                max_tries=2,
            )
    assert listing(tmp_path) == []


async def test_wrong_content_length_never_reaches_the_final_name(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    # The server announces 1000 bytes more than it has, then hangs up, every time.
    server.add("a.mp4", mp4_16x9, Fault(extra_length=1000))
    async with aiohttp.ClientSession() as s:
        with pytest.raises(DownloadError):
            await fetch_outputs(
                s,
                [server.url("a.mp4")],
                tmp_path,
                "clip",
                refresh_urls=no_refresh,
                expect=EXPECT,
                retry=NO_WAIT,
                max_tries=3,
            )
    # full body (progress), 416 "you have it all" but totals disagree (dropped), again...
    assert [x.status for x in server.requests_for("a.mp4")] == [200, 416, 200, 416]
    assert listing(tmp_path) == []


async def test_partial_kept_after_giving_up_is_resumed_by_the_next_call(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    fault = Fault(cuts=1, errors=0)
    server.add("a.mp4", mp4_16x9, fault)

    async def then_fail(_: float) -> None:
        fault.errors = 100

    async with aiohttp.ClientSession() as s:
        with pytest.raises(DownloadError):
            await fetch_outputs(
                s,
                [server.url("a.mp4")],
                tmp_path,
                "clip",
                refresh_urls=no_refresh,
                expect=EXPECT,
                retry=NO_WAIT,
                sleep=then_fail,
                max_tries=2,
            )
        assert listing(tmp_path) == [".clip.mp4.part", ".clip.mp4.part.meta"]
        fault.errors = 0
        server.seen.clear()
        [f] = await fetch_outputs(
            s, [server.url("a.mp4")], tmp_path, "clip", refresh_urls=no_refresh, expect=EXPECT
        )
    [req] = server.seen
    assert req.headers["Range"] == f"bytes={len(mp4_16x9) // 2}-" and req.status == 206
    assert f.sha256 == sha(mp4_16x9)
    assert listing(tmp_path) == ["clip.mp4"]


async def test_leftover_without_validator_is_discarded(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    (tmp_path / ".clip.mp4.part").write_bytes(b"\x00" * 5000)  # no .meta beside it
    server.add("a.mp4", mp4_16x9)
    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s, [server.url("a.mp4")], tmp_path, "clip", refresh_urls=no_refresh, expect=EXPECT
        )
    assert "Range" not in server.seen[0].headers
    assert f.sha256 == sha(mp4_16x9) and listing(tmp_path) == ["clip.mp4"]


async def test_file_changed_on_server_between_cut_and_resume_starts_over(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    newer = make_mp4(64, 36, seed=7)
    server.add("a.mp4", mp4_16x9, Fault(cuts=1, replace_after=1, replacement=newer))
    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s,
            [server.url("a.mp4")],
            tmp_path,
            "clip",
            refresh_urls=no_refresh,
            expect=EXPECT,
            retry=NO_WAIT,
        )
    _first, second = server.requests_for("a.mp4")
    assert "If-Range" in second.headers and second.status == 200  # If-Range failed: whole file
    assert f.sha256 == sha(newer) and f.path.read_bytes() == newer


async def test_server_ignoring_range_restarts_cleanly(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    server.add("a.mp4", mp4_16x9, Fault(cuts=1, ignore_range=True))
    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s,
            [server.url("a.mp4")],
            tmp_path,
            "clip",
            refresh_urls=no_refresh,
            expect=EXPECT,
            retry=NO_WAIT,
        )
    assert [x.status for x in server.requests_for("a.mp4")] == [200, 200]
    assert f.sha256 == sha(mp4_16x9) and f.path.read_bytes() == mp4_16x9


async def test_complete_part_from_a_crash_before_rename_needs_no_bytes(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    server.add("a.mp4", mp4_16x9, Fault(cuts=1))
    async with aiohttp.ClientSession() as s:
        # Simulate: a first process fetched everything, then died before os.replace.
        await fetch_outputs(
            s,
            [server.url("a.mp4")],
            tmp_path,
            "clip",
            refresh_urls=no_refresh,
            expect=EXPECT,
            retry=NO_WAIT,
        )
        (tmp_path / "clip.mp4").rename(tmp_path / ".clip.mp4.part")
        etag = server.requests_for("a.mp4")[-1].headers["If-Range"]
        meta = {"etag": etag, "last_modified": None, "total": len(mp4_16x9)}
        (tmp_path / ".clip.mp4.part.meta").write_text(json.dumps(meta))
        server.seen.clear()
        [f] = await fetch_outputs(
            s, [server.url("a.mp4")], tmp_path, "clip", refresh_urls=no_refresh, expect=EXPECT
        )
    [req] = server.seen
    assert req.status == 416
    assert f.sha256 == sha(mp4_16x9) and listing(tmp_path) == ["clip.mp4"]


async def test_known_checksum_skips_the_download(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    (tmp_path / "clip.mp4").write_bytes(mp4_16x9)
    server.add("a.mp4", mp4_16x9)
    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s,
            [server.url("a.mp4")],
            tmp_path,
            "clip",
            refresh_urls=no_refresh,
            expect=EXPECT,
            known_sha256=[sha(mp4_16x9)],
        )
        assert f.reused and f.requests == 0 and server.seen == []
        # A different file under the final name is replaced, never trusted.
        (tmp_path / "clip.mp4").write_bytes(b"stale")
        [g] = await fetch_outputs(
            s,
            [server.url("a.mp4")],
            tmp_path,
            "clip",
            refresh_urls=no_refresh,
            expect=EXPECT,
            known_sha256=[sha(mp4_16x9)],
        )
    assert not g.reused and g.path.read_bytes() == mp4_16x9


@pytest.mark.parametrize(
    ("size", "asked", "seconds", "asked_s", "noted"),
    [
        ((64, 36), "16:9", 5.0, 5.0, None),
        ((36, 64), "9:16", 5.0, 5.0, None),
        ((48, 36), "4:3", 5.0, 5.0, None),
        ((84, 36), "21:9", 5.0, 5.0, None),
        ((36, 36), "16:9", 5.0, 5.0, "frame 36x36 is not 16:9 as asked"),
        ((64, 36), "16:9", 5.0, 10.0, "duration 5.00 s, 10 s was asked"),
        ((64, 36), "16:9", 4.75, 5.0, None),
    ],
)
async def test_aspect_and_duration_mismatch_is_noted_not_raised(
    server: FileServer,
    tmp_path: Path,
    size: tuple[int, int],
    asked: str,
    seconds: float,
    asked_s: float,
    noted: str | None,
) -> None:
    server.add("a.mp4", make_mp4(*size, seconds=seconds))
    async with aiohttp.ClientSession() as s:
        [f] = await fetch_outputs(
            s,
            [server.url("a.mp4")],
            tmp_path,
            "clip",
            refresh_urls=no_refresh,
            expect=Expectation(aspect_ratio=asked, duration_s=asked_s),
        )
    assert f.note == noted
    assert f.path.exists()


async def test_no_urls_is_an_error(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(DownloadError):
            await fetch_outputs(s, [], tmp_path, "clip", refresh_urls=no_refresh, expect=EXPECT)


def test_file_names() -> None:
    assert file_names("a", 1) == ["a.mp4"]
    assert file_names("a", 3) == ["a-1.mp4", "a-2.mp4", "a-3.mp4"]


async def test_a_link_at_the_partial_name_is_never_written_through(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    precious = tmp_path / "state.db"
    precious.write_bytes(b"every paid run")
    (tmp_path / ".clip.mp4.part").symlink_to(precious)
    server.add("a.mp4", mp4_16x9)

    async def refresh() -> list[str]:
        raise AssertionError("not needed")

    async with aiohttp.ClientSession() as s:
        async with s.get(server.url("a.mp4")) as resp:
            etag = resp.headers["ETag"]
        # a meta file that would make the download resume (append) onto the link
        meta = {"etag": etag, "last_modified": None, "total": len(mp4_16x9)}
        (tmp_path / ".clip.mp4.part.meta").write_text(json.dumps(meta), encoding="utf-8")
        [f] = await fetch_outputs(
            s, [server.url("a.mp4")], tmp_path, "clip", refresh_urls=refresh, expect=EXPECT
        )
    assert precious.read_bytes() == b"every paid run"
    assert f.path.read_bytes() == mp4_16x9
