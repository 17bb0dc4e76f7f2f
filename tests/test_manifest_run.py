"""A manifest with local images, run end to end against the simulator over loopback:
what is stored keeps references, what is sent carries the image bytes."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from sqlmodel import Session, select

from batchgen.polling import PollPolicy
from batchgen.runner import RunOptions, arun_batch
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from batchgen.store.schema import Job, open_db

ROOT = Path(__file__).resolve().parent.parent


async def test_local_images_are_stored_as_references_and_sent_inline(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests" / "images", folder / "images")
    manifest = folder / "i2v.yaml"
    shutil.copy(ROOT / "manifests" / "image-to-video.yaml", manifest)
    db_path = tmp_path / "state.db"
    async with Simulator(SimConfig(time_scale=0.002, rate=(20, 0.5))) as sim:
        summary = await arun_batch(
            db_path,
            api_key=DEFAULT_KEY,
            manifest=manifest,
            options=RunOptions(
                base_url=sim.base_url,
                rate=(20, 0.5),
                poll_policy=PollPolicy(min_interval_s=0.01),
            ),
        )
        sent = [run.input for run in sim.state.book.runs.values()]
    assert summary.exit_code == 0, summary.to_json()
    assert len(sent) == 4
    images = {(folder / "images" / n).read_bytes() for n in ("sunrise.png", "harbour.png")}
    seen = set()
    for input_ in sent:
        head, _, body = input_["image_urls"][0].partition(",")
        assert head == "data:image/png;base64"
        seen.add(base64.b64decode(body))
    assert seen == images
    with Session(open_db(db_path)) as session:
        stored = [json.loads(j.input_json) for j in session.exec(select(Job))]
    assert all(s["image_urls"][0].startswith("file:images/") for s in stored)
    assert not any("base64" in json.dumps(s) for s in stored)
    assert len(list((tmp_path / "demo-out" / "image-to-video").glob("*.mp4"))) == 4
