"""The decoder check compares the frame size with the asked resolution (issue 10.12):
with the tolerance real encoders need, recorded and shown, never a failed paid job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from batchgen.engine.schedule import PollPolicy
from batchgen.files.media import Expectation, MediaInfo, frame_size, probe
from batchgen.report.page import write_report
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from batchgen.store.schema import Job
from tests.test_engine_helpers import make_batch


def info(width: int, height: int, seconds: float = 5.0) -> MediaInfo:
    return MediaInfo(codec="h264", width=width, height=height, duration_s=seconds, frames=5)


@pytest.mark.parametrize(
    ("aspect", "resolution", "size"),
    [
        ("16:9", "720p", (1280, 720)),
        ("9:16", "720p", (720, 1280)),
        ("4:3", "720p", (960, 720)),
        ("3:4", "720p", (720, 960)),
        ("1:1", "720p", (720, 720)),
        ("21:9", "720p", (1680, 720)),
        ("16:9", "1080p", (1920, 1080)),
        ("9:16", "1080p", (1080, 1920)),
        ("21:9", "1080p", (2520, 1080)),
        ("16:9", "bogus", None),
        ("5:0", "720p", None),
    ],
)
def test_the_size_a_resolution_stands_for(
    aspect: str, resolution: str, size: tuple[int, int] | None
) -> None:
    assert frame_size(aspect, resolution) == size


SIZE_NOTE = "frame {}x{} is not {} ({}) as asked"


@pytest.mark.parametrize(
    ("got", "aspect", "resolution", "noted"),
    [
        ((1920, 1080), "16:9", "1080p", None),
        ((1920, 1088), "16:9", "1080p", None),  # macroblock padding kept
        ((1080, 1920), "9:16", "1080p", None),
        ((1088, 1920), "9:16", "1080p", None),
        ((1280, 720), "16:9", "720p", None),
        ((720, 1280), "9:16", "720p", None),
        ((2528, 1088), "21:9", "1080p", None),
        ((1080, 1080), "1:1", "1080p", None),
        ((1088, 1088), "1:1", "1080p", None),
        ((1280, 720), "16:9", "1080p", SIZE_NOTE.format(1280, 720, "1080p", "1920x1080")),
        ((64, 36), "16:9", "720p", SIZE_NOTE.format(64, 36, "720p", "1280x720")),
        ((36, 64), "9:16", "1080p", SIZE_NOTE.format(36, 64, "1080p", "1080x1920")),
        ((1920, 1080), "16:9", "720p", SIZE_NOTE.format(1920, 1080, "720p", "1280x720")),
        ((1280, 736), "16:9", "720p", SIZE_NOTE.format(1280, 736, "720p", "1280x720")),
        # the other orientation is the wrong aspect ratio: said once, not twice
        ((1920, 1080), "9:16", "1080p", "frame 1920x1080 is not 9:16 as asked"),
        ((64, 36), "16:9", "", None),  # no resolution asked: the size is not checked
        ((64, 36), "16:9", "8k", "resolution '8k' not understood"),
    ],
)
def test_the_frame_size_is_compared_with_encoder_tolerance(
    got: tuple[int, int], aspect: str, resolution: str, noted: str | None
) -> None:
    expect = Expectation(aspect_ratio=aspect, duration_s=5.0, resolution=resolution)
    assert expect.mismatch(info(*got)) == noted


def test_size_and_duration_are_both_said() -> None:
    expect = Expectation(aspect_ratio="16:9", duration_s=10.0, resolution="720p")
    assert expect.mismatch(info(64, 36, 5.0)) == (
        "frame 64x36 is not 720p (1280x720) as asked; duration 5.00 s, 10 s was asked"
    )


async def _run(tmp_path: Path, *, tiny: bool) -> list[Job]:
    inputs = [
        {"prompt": "a fox", "aspect_ratio": "16:9", "resolution": "720p", "duration": "5"},
        {"prompt": "a heron", "aspect_ratio": "9:16", "resolution": "720p", "duration": "5"},
    ]
    db_path, out = tmp_path / "state.db", tmp_path / "out"
    db, batch = make_batch(db_path, inputs, out)
    config = SimConfig(time_scale=0.002, rate=(20, 0.5), tiny_videos=tiny)
    async with Simulator(config) as sim:
        summary = await arun_batch(
            db_path,
            api_key=DEFAULT_KEY,
            batch=batch.name,
            options=RunOptions(
                base_url=sim.base_url, rate=(20, 0.5), poll_policy=PollPolicy(min_interval_s=0.01)
            ),
        )
        charged = sim.stats()["runs_created"]
    assert summary.exit_code == 0 and charged == 2  # a wrong size never fails a paid job
    with Session(db) as s:
        jobs = list(s.exec(select(Job).order_by(col(Job.idx))).all())
    assert batch.id is not None
    page = write_report(db, batch.id, tmp_path / "report.html").read_text(encoding="utf-8")
    for job in jobs:
        assert job.state == "succeeded"
        if job.media_note:  # shown, not hidden
            assert job.media_note in page
    return jobs


async def test_the_simulators_videos_have_the_asked_size_and_pass_the_check(
    tmp_path: Path,
) -> None:
    jobs = await _run(tmp_path, tiny=False)
    assert [j.media_note for j in jobs] == [None, None]
    sizes = [probe(tmp_path / "out" / json.loads(j.output_paths_json)[0]) for j in jobs]
    assert [(m.width, m.height) for m in sizes] == [(1280, 720), (720, 1280)]


async def test_tiny_videos_succeed_with_the_size_mismatch_recorded(tmp_path: Path) -> None:
    jobs = await _run(tmp_path, tiny=True)
    assert [j.media_note for j in jobs] == [
        "frame 64x36 is not 720p (1280x720) as asked",
        "frame 36x64 is not 720p (720x1280) as asked",
    ]
    video = tmp_path / "out" / json.loads(jobs[0].output_paths_json)[0]
    side = json.loads(video.with_name(video.name + ".json").read_text(encoding="utf-8"))
    assert side["media_note"] == jobs[0].media_note
