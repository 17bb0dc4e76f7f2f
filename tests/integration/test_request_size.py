"""A local image whose inline data: URI makes the request larger than a server takes:
validate and plan warn naming the image; at run time the 413 fails only that job,
uncharged, and the failure names the image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.engine.schedule import PollPolicy
from batchgen.manifest.images import REQUEST_BODY_LIMIT, data_uri_length
from batchgen.manifest.loader import load_manifest
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.sim import Simulator
from batchgen.states import JobState
from batchgen.store import jobs as store
from batchgen.store.schema import open_db
from tests.support.engine import KEY, tiny_sim_config
from tests.support.manifests import png, write

runner = CliRunner()
MANIFEST = (
    "name: sizes\nout_dir: out\ndefaults: {prompt: a fox, resolution: 720p}\n"
    "matrix:\n  image: [big.png, small.png]\n"
)


def images(folder: Path, big_bytes: int = 7_000_000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "big.png").write_bytes(png() + b"\x00" * big_bytes)
    (folder / "small.png").write_bytes(png())


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"BATCHGEN_DB": None})


def test_the_size_of_a_data_uri_is_computed_from_the_file_size() -> None:
    assert data_uri_length(0, "image/png") == len("data:image/png;base64,")
    assert data_uri_length(7, "image/png") == len("data:image/png;base64,") + 12
    # the largest image that still fits: 3/4 of the limit, less the JSON around it
    assert data_uri_length(6_000_000, "image/jpeg") < REQUEST_BODY_LIMIT
    assert data_uri_length(6_300_000, "image/jpeg") > REQUEST_BODY_LIMIT


def test_validate_and_plan_warn_about_the_image_that_makes_the_body_too_large(
    tmp_path: Path,
) -> None:
    images(tmp_path)
    path = write(tmp_path, MANIFEST)
    loaded = load_manifest(path)
    found = [w for w in loaded.warnings if "big.png" in w]
    assert len(found) == 1 and "9.3 MB" in found[0] and "small.png" not in found[0]
    result = invoke("validate", str(path))
    assert result.exit_code == 0 and "warning: a job with the image big.png" in result.output
    result = invoke("plan", str(path), "--db", str(tmp_path / "none.db"))
    assert result.exit_code == 0 and "warning: a job with the image big.png" in result.output


def test_no_warning_for_images_that_fit_or_are_sent_as_urls(tmp_path: Path) -> None:
    images(tmp_path, big_bytes=6_000_000)
    assert not load_manifest(write(tmp_path, MANIFEST)).warnings
    images(tmp_path / "pics")
    text = MANIFEST.replace("[big.png, small.png]", "[pics/big.png]")
    text += "images:\n  pics: https://cdn.example.com/pics/\n"
    assert not load_manifest(write(tmp_path, text)).warnings


async def test_a_413_fails_only_that_job_uncharged_and_names_the_image(tmp_path: Path) -> None:
    images(tmp_path)
    path = write(tmp_path, MANIFEST)
    db_path = tmp_path / "state.db"
    async with Simulator(tiny_sim_config(time_scale=0.002, rate=(20, 0.5))) as sim:
        options = RunOptions(
            base_url=sim.base_url, rate=(20, 0.5), poll_policy=PollPolicy(min_interval_s=0.01)
        )
        summary = await arun_batch(db_path, api_key=KEY, manifest=path, options=options)
        stats = sim.stats()
    assert summary.counts == {"failed": 1, "succeeded": 1}
    assert stats["charged_micro_usd"] - stats["refunded_micro_usd"] == summary.spend_micro_usd
    db = open_db(db_path)
    failed = [
        j for j in store.iter_jobs(db, 1, states=list(JobState)) if j.state == JobState.FAILED
    ]
    db.dispose()
    assert len(failed) == 1 and failed[0].attempts == 1  # refused once, never retried
    assert failed[0].error_code == "request_too_large"
    assert "big.png" in (failed[0].last_error or "") and "MB" in (failed[0].last_error or "")
