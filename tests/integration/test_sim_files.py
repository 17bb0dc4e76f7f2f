"""Outputs over loopback (behaviour 8 of issue 2): real H.264 MP4s with the asked aspect
ratio and duration, a picture drawn from the prompt, Content-Length, ETag and Range."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import pytest

from tests.support.simapi import running


def decode(data: bytes) -> tuple[str, int, int, float, int, bytes]:
    """codec, width, height, duration (s), frames, the first frame's luma bytes."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert container.duration is not None
        luma = bytes(frames[0].planes[0])
        return (
            stream.codec_context.name,
            stream.codec_context.width,
            stream.codec_context.height,
            container.duration / 1_000_000,
            len(frames),
            luma,
        )


# the usual convention (docs/sim.md): the short side is the resolution's lines, the long
# side follows the aspect ratio
SIZES = {
    ("16:9", "720p"): (1280, 720), ("9:16", "720p"): (720, 1280), ("4:3", "720p"): (960, 720),
    ("3:4", "1080p"): (1080, 1440), ("1:1", "1080p"): (1080, 1080),
    ("21:9", "1080p"): (2520, 1080), ("16:9", "1080p"): (1920, 1080),
}  # fmt: skip


@pytest.mark.parametrize(
    ("aspect", "resolution", "duration"),
    [("16:9", "720p", "5"), ("9:16", "720p", "10"), ("4:3", "720p", "5"), ("3:4", "1080p", "5"),
     ("1:1", "1080p", "5"), ("21:9", "1080p", "10"), ("16:9", "1080p", "10")],
)  # fmt: skip
async def test_the_file_is_a_real_h264_mp4_of_the_asked_size_and_length(
    aspect, resolution, duration
):
    async with running(tiny_videos=False) as (_sim, api):
        _, data, got = await api.succeeded_file(
            {"prompt": "a heron", "aspect_ratio": aspect, "resolution": resolution,
             "duration": duration}
        )  # fmt: skip
    assert got.headers["Content-Type"] == "video/mp4"
    assert data[4:8] == b"ftyp"
    codec, width, height, seconds, frames, _ = decode(data)
    assert codec == "h264"
    assert (width, height) == SIZES[aspect, resolution]
    assert abs(seconds - int(duration)) < 0.3 and frames >= int(duration)
    assert len(data) < 1_000_000  # one frame a second at a low bitrate: cheap to serve


async def test_without_a_resolution_the_models_default_1080p_is_served():
    async with running(tiny_videos=False) as (_sim, api):
        _, data, _ = await api.succeeded_file({"prompt": "a heron", "aspect_ratio": "9:16"})
    assert decode(data)[1:3] == (1080, 1920)


@pytest.mark.parametrize(
    ("aspect", "duration"),
    [("16:9", "5"), ("9:16", "5"), ("4:3", "10"), ("3:4", "5"), ("1:1", "5"), ("21:9", "10")],
)
async def test_tiny_videos_keep_the_asked_ratio_and_length_on_a_36_pixel_side(aspect, duration):
    async with running(tiny_videos=True) as (_sim, api):
        _, data, _ = await api.succeeded_file(
            {
                "prompt": "a heron",
                "aspect_ratio": aspect,
                "resolution": "1080p",
                "duration": duration,
            }
        )
    codec, width, height, seconds, frames, _ = decode(data)
    a, b = (int(x) for x in aspect.split(":"))
    assert codec == "h264"
    assert Fraction(width, height) == Fraction(a, b)
    assert 36 <= min(width, height) <= 72
    assert abs(seconds - int(duration)) < 0.3 and frames >= int(duration)


async def test_a_clip_is_cached_per_size_so_switching_tiny_videos_live_serves_the_other():
    async with running(tiny_videos=False) as (sim, api):
        _, big, _ = await api.succeeded_file({"prompt": "a fox", "resolution": "720p"})
        sim.config.tiny_videos = True
        _, small, _ = await api.succeeded_file({"prompt": "a fox", "resolution": "720p"})
        _, small_again, _ = await api.succeeded_file({"prompt": "a fox", "resolution": "720p"})
        encoded = sim.stats()["clips_encoded"]
    assert decode(big)[1:3] == (1280, 720) and decode(small)[1:3] == (64, 36)
    assert small == small_again and encoded == 2


async def test_two_prompts_give_different_pictures_and_one_prompt_the_same_bytes():
    async with running() as (sim, api):
        _, fox, fox_answer = await api.succeeded_file({"prompt": "a red fox in snow"})
        _, sea, _ = await api.succeeded_file({"prompt": "a calm blue sea"})
        _, fox_again, fox_again_answer = await api.succeeded_file({"prompt": "a red fox in snow"})
        encoded = sim.stats()["clips_encoded"]
    luma_fox, luma_sea = decode(fox)[5], decode(sea)[5]
    differing = sum(1 for x, y in zip(luma_fox, luma_sea, strict=True) if abs(x - y) > 8)
    assert differing > len(luma_fox) // 4  # visibly different, not a pixel or two
    assert fox == fox_again and fox_answer.headers["ETag"] == fox_again_answer.headers["ETag"]
    assert encoded == 2  # the second fox came from the cache


async def test_content_length_etag_and_ranges():
    async with running() as (_sim, api):
        url, data, full = await api.succeeded_file({"prompt": "x"})
        etag = full.headers["ETag"]
        size = len(data)
        head = await api.fetch(url, {"Range": "bytes=0-99"})
        tail = await api.fetch(url, {"Range": "bytes=-50"})
        rest = await api.fetch(url, {"Range": f"bytes={size - 10}-", "If-Range": etag})
        past = await api.fetch(url, {"Range": f"bytes={size}-"})
        stale = await api.fetch(url, {"Range": "bytes=10-", "If-Range": '"another-version"'})
        again = await api.fetch(url)
    assert int(full.headers["Content-Length"]) == size and full.headers["Accept-Ranges"] == "bytes"
    assert etag.startswith('"') and again.headers["ETag"] == etag and again.body == data
    assert (head.status, head.body) == (206, data[:100])
    assert head.headers["Content-Range"] == f"bytes 0-99/{size}"
    assert int(head.headers["Content-Length"]) == 100 and head.headers["ETag"] == etag
    assert (tail.status, tail.body) == (206, data[-50:])
    assert (rest.status, rest.body) == (206, data[-10:])
    assert past.status == 416 and past.headers["Content-Range"] == f"bytes */{size}"
    assert (stale.status, stale.body) == (200, data)  # If-Range mismatch: the whole file


async def test_a_head_request_gives_the_size_without_the_body():
    async with running() as (_sim, api):
        url, data, _ = await api.succeeded_file({"prompt": "x"})
        async with api.session.head(url) as resp:
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) == len(data)
            assert await resp.read() == b""


async def test_no_file_for_a_failed_run():
    async with running(fail_rate=1.0) as (sim, api):
        run_id = (await api.post({"prompt": "x"})).body["id"]
        await api.wait(run_id)
        run = sim.state.book.runs[run_id]
        url = sim._signer.url(api.base_url, f"/files/{run.id}/0.mp4", 10**10)
        answer = await api.fetch(url)
    assert answer.status == 404


async def test_a_prompt_with_a_lone_surrogate_still_gives_a_file():
    # Valid JSON ("\ud800" is a legal escape) that Python cannot encode as UTF-8: the
    # run succeeds, so its file must download, not fail with a 500 forever.
    body = b'{"model": "bytedance/seedance-1-pro", "input": {"prompt": "a fox \\ud800"}}'
    async with running() as (_sim, api):
        created = await api.post(body=body)
        assert created.status == 200, created
        done = await api.wait(created.body["id"])
        got = await api.fetch(done.body["output"]["urls"][0])
    assert got.status == 200 and decode(got.body)[0] == "h264"
