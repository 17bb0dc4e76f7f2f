"""The decoder check compares the frame size with the asked resolution (issue 10.12):
with the tolerance real encoders need, recorded and shown, never a failed paid job."""

from __future__ import annotations

import json
from pathlib import Path

from sqlmodel import Session, col, select

from batchgen.engine.schedule import PollPolicy
from batchgen.files.media import probe
from batchgen.report.page import write_report
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from batchgen.store.schema import Job
from tests.support.engine import make_batch


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
