"""No output of any command writes over the batch's own videos or sidecars.

A batch of two jobs is run on the simulator; then ``report --out``, ``export --out``,
``resume --summary-file``/``--log-file`` and ``run --log-file`` are pointed at one of
its videos, a sidecar, a symlink to a video and a hard link to one: each exits 2
naming the file, and every byte of the output folder stays as it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchgen.run.runner import arun_batch
from batchgen.sim import DEFAULT_KEY, Simulator
from tests.support.manifests import write_manifest
from tests.support.processes import batchgen
from tests.support.runs import FAST, opts

#: resume and run never reach the API here: the refusal comes first
NO_API = {"RUNBASE_API_KEY": DEFAULT_KEY, "RUNBASE_BASE_URL": "http://127.0.0.1:9"}


@dataclass(frozen=True)
class Ran:
    folder: Path
    db: Path
    manifest: Path
    out: Path
    video: Path
    sidecar: Path
    symlink: Path  # elsewhere, to the video
    hardlink: Path  # elsewhere, the video's inode


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    folder = tmp_path_factory.mktemp("outputs")
    manifest = write_manifest(folder, ["fox"], name="b")
    db = folder / "state.db"

    async def go() -> int:
        async with Simulator(FAST) as sim:
            summary = await arun_batch(
                db, api_key=DEFAULT_KEY, manifest=manifest, options=opts(sim.base_url)
            )
        return summary.exit_code

    assert asyncio.run(go()) == 0
    out = folder / "out"
    video = sorted(out.glob("*.mp4"))[0]
    (folder / "elsewhere").mkdir()
    symlink = folder / "elsewhere" / "sheet.html"
    symlink.symlink_to(video)
    hardlink = folder / "elsewhere" / "jobs.csv"
    os.link(out / sorted(p.name for p in out.glob("*.mp4"))[1], hardlink)
    return Ran(folder, db, manifest, out, video, Path(f"{video}.json"), symlink, hardlink)


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def targets(ran: Ran) -> list[tuple[Path, str]]:
    """Each way to a protected output, and what the message must call it."""
    return [
        (ran.video, "is one of the batch's videos"),
        (ran.sidecar, "is the sidecar of one of the batch's videos"),
        (ran.symlink, "is one of the batch's videos"),
        (ran.hardlink, "is one of the batch's videos"),
        (ran.out / "sub" / ".." / ran.video.name, "is one of the batch's videos"),
    ]


def refused(args: list[str], target: Path, said: str, option: str, ran: Ran) -> None:
    before = snapshot(ran.out), snapshot(ran.folder / "elsewhere")
    proc = batchgen(*args, cwd=ran.folder, env=NO_API)
    assert proc.returncode == 2, (args, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if said in line]
    assert lines, proc.stderr
    assert f"{option} {target}" in lines[0] and "would destroy it" in lines[0], proc.stderr
    assert f"fix: give {option} another file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (snapshot(ran.out), snapshot(ran.folder / "elsewhere")) == before


#: every writer once and every way to a protected file at least once (the rule itself,
#: every way for every name, is tests/integration/test_outputs.py's): one process each
PAIRS = [
    ("report", 0),  # the video
    ("export", 4),  # sub/../video
    ("--summary-file", 1),  # the sidecar
    ("--log-file", 2),  # a symlink to the video
    ("--metrics-file", 3),  # a hard link to a video
    ("--report", 1),
]


@pytest.mark.parametrize(("writer", "way"), PAIRS, ids=[w for w, _ in PAIRS])
def test_no_output_writes_over_a_video_or_sidecar(ran: Ran, writer: str, way: int) -> None:
    (ran.out / "sub").mkdir(exist_ok=True)
    target, said = targets(ran)[way]
    if writer.startswith("--"):  # run/resume/retry's files
        args, option = ["resume", "b", "--db", str(ran.db), writer, str(target)], writer
    else:
        args, option = [writer, "b", "--db", str(ran.db), "--out", str(target)], "--out"
    refused(args, target, said, option, ran)


def test_run_log_file_at_a_video_not_fetched_yet_leaves_no_file(ran):
    """The video name of a job to come is the batch's too; opening the log made no file."""
    later = ran.out / "009-fox-later.mp4"
    args = ["run", str(ran.manifest), "--db", str(ran.db), "--log-file", str(later)]
    refused(args, later, "is one of the batch's videos", "--log-file", ran)
    part = ran.out / ".009-fox-later.mp4.part"
    args = ["resume", "b", "--db", str(ran.db), "--summary-file", str(part)]
    refused(args, part, "is a partial download of one of the batch's", "--summary-file", ran)
    assert not later.exists() and not part.exists()


def test_other_files_in_the_output_folder_are_fine(ran, tmp_path):
    """The default report.html lives beside the videos; so may an export."""
    for args in (
        ["report", "b", "--db", str(ran.db), "--posters", "none"],
        ["export", "b", "--db", str(ran.db), "--out", str(ran.out / "jobs.csv")],
    ):
        proc = batchgen(*args, cwd=ran.folder)
        assert proc.returncode == 0, proc.stderr
    assert (ran.out / "report.html").is_file() and (ran.out / "jobs.csv").is_file()
    (ran.out / "report.html").unlink()
    (ran.out / "jobs.csv").unlink()
