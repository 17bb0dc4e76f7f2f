"""No output of any command writes over the state database (or its -wal/-shm/lock
files), the manifest or a file the manifest names, by whatever path, symlink or hard
link: exit 2, nothing written."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.errors import BatchgenError, ExitCode
from batchgen.files.outputs import Protected, output_problems
from batchgen.manifest.loader import load_manifest
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.store import batches
from batchgen.store.schema import open_db
from tests.support.manifests import write_manifest

KEY = "sk-test-0123456789abcdef"
runner = CliRunner()


def invoke(*args: str) -> int:
    result = runner.invoke(app, list(args), env={"BATCHGEN_DB": None})
    if isinstance(result.exception, BatchgenError):
        return int(result.exception.exit_code)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        # the database's own -wal/-shm come and go with its connections (resume opens
        # it to find the batch's manifest); what counts is every byte of the files
        if p.is_file() and not p.is_symlink() and not p.name.endswith(("-wal", "-shm"))
    }


def stored(folder: Path) -> tuple[Path, Path]:
    (folder / "styles.txt").write_text("watercolour\nink\n", encoding="utf-8")
    manifest = write_manifest(
        folder,
        ["fox"],
        name="b",
        extra="  style: {file: styles.txt}\n",
    )
    manifest.write_text(manifest.read_text().replace("in a meadow", "in {style}"), encoding="utf-8")
    db = folder / "state.db"
    engine = open_db(db)
    batches.sync_batch(engine, load_manifest(manifest))
    engine.dispose()
    return db, manifest


def aliases(folder: Path, target: Path) -> list[Path]:
    """The target itself, a symlink to it, a hard link to it, and a relative detour."""
    link = folder / f"link-to-{target.name}"
    link.symlink_to(target)
    hard = folder / f"hard-{target.name}"
    os.link(target, hard)
    (folder / "sub").mkdir(exist_ok=True)
    return [target, link, hard, folder / "sub" / ".." / target.name]


def test_export_and_report_never_write_over_the_database_or_its_companions(tmp_path):
    db, manifest = stored(tmp_path)
    targets = [
        *aliases(tmp_path, db),
        tmp_path / "state.db-wal",  # not there now; SQLite makes it on the next write
        tmp_path / "state.db-shm",
        tmp_path / "state.db.lock",
        tmp_path / "link-to-state.db-wal",  # no such file, but nor is it the -wal
        manifest,
        tmp_path / "styles.txt",
    ]
    before = snapshot(tmp_path)
    for out in targets:
        if out.name == "link-to-state.db-wal":
            continue
        for cmd in (["export", "--format", "csv"], ["report"]):
            code = invoke(*cmd, "b", "--db", str(db), "--out", str(out))
            assert code == ExitCode.USAGE, (cmd, out)
            assert snapshot(tmp_path) == before, (cmd, out)
    # the -wal of the database reached through a symlink is protected too
    link = tmp_path / "link-to-state.db"
    code = invoke("export", "b", "--db", str(link), "--out", str(tmp_path / "state.db-wal"))
    assert code == ExitCode.USAGE
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("option", ["summary_file", "log_file", "metrics_file", "report_path"])
async def test_run_outputs_never_write_over_what_the_run_reads(tmp_path, option):
    db, manifest = stored(tmp_path)
    targets = [
        *aliases(tmp_path, db),
        tmp_path / "state.db-wal",
        tmp_path / "state.db.lock",
        manifest,
        *aliases(tmp_path, tmp_path / "styles.txt")[1:],
        tmp_path / "styles.txt",
    ]
    before = snapshot(tmp_path)
    for target in targets:
        for kw in ({"manifest": manifest}, {"batch": "b"}):
            opts = RunOptions(base_url="http://127.0.0.1:9", **{option: target})
            summary = await arun_batch(db, api_key=KEY, options=opts, **kw)
            assert summary.exit_code == ExitCode.USAGE, (option, target, kw)
            assert "writing there would destroy it" in summary.reason
            assert snapshot(tmp_path) == before, (option, target, kw)


async def test_videos_may_not_land_on_a_protected_file(tmp_path):
    """The database inside the output folder under a video's name: refused up front."""
    _db, manifest = stored(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    db = out / "000-fox.mp4"
    summary = await arun_batch(
        db, api_key=KEY, manifest=manifest, options=RunOptions(base_url="http://127.0.0.1:9")
    )
    assert summary.exit_code == ExitCode.USAGE and "a download could replace it" in summary.reason
    assert not db.exists()


def test_an_unrelated_output_is_fine(tmp_path):
    db, manifest = stored(tmp_path)
    protected = Protected.of(db, manifest, [tmp_path / "styles.txt"])
    assert output_problems([("--out", tmp_path / "jobs.csv")], protected) == []
    assert output_problems([("--out", "-")], protected) == []
    assert invoke("export", "b", "--db", str(db), "--out", str(tmp_path / "jobs.csv")) == 0


def test_a_link_at_a_temp_name_is_never_written_through(tmp_path):
    from batchgen.files.sidecar import atomic_write_text

    precious = tmp_path / "precious.db"
    precious.write_bytes(b"paid runs")
    (tmp_path / ".summary.json.tmp").symlink_to(precious)
    atomic_write_text(tmp_path / "summary.json", "{}\n")
    assert precious.read_bytes() == b"paid runs"
    assert (tmp_path / "summary.json").read_text() == "{}\n"


async def test_the_database_and_its_lock_may_not_be_a_file_the_manifest_names(tmp_path):
    _db, manifest = stored(tmp_path)
    styles = tmp_path / "styles.txt"
    before = snapshot(tmp_path)
    for db in (styles, tmp_path / "styles.txt.x", tmp_path / "link"):
        if db.name == "styles.txt.x":
            os.link(styles, tmp_path / "styles.txt.x.lock")  # its lock would be the values file
        if db.name == "link":
            db.symlink_to(styles)
        summary = await arun_batch(
            db, api_key=KEY, manifest=manifest, options=RunOptions(base_url="http://127.0.0.1:9")
        )
        assert summary.exit_code == ExitCode.USAGE, db
        assert "writing there would destroy it" in summary.reason
        assert styles.read_text() == "watercolour\nink\n"
    assert snapshot(tmp_path) == {**before, "styles.txt.x.lock": before["styles.txt"]}


def test_the_batch_outputs_rule_is_the_output_folder_and_the_video_names(tmp_path):
    """Any video, sidecar or partial-download name in the output folder (the videos of
    jobs to come too), by any path; other names there, and video names elsewhere, are fine."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "001-fox.mp4.json").write_text("{}")
    protected = Protected.of(out_dirs=[out, None])
    (tmp_path / "via").symlink_to(out)
    os.link(out / "001-fox.mp4.json", tmp_path / "notes.txt")
    hits = {
        out / "001-fox.mp4": "one of the batch's videos",  # not fetched yet
        out / "002.MP4": "one of the batch's videos",  # one file on macOS's file system
        tmp_path / "via" / "001-fox.mp4.json": "the sidecar of one of the batch's videos",
        tmp_path / "notes.txt": "the sidecar of one of the batch's videos",  # hard link
        out / ".001-fox.mp4.part": "a partial download of one of the batch's videos",
        out / ".001-fox.mp4.part.meta": "a partial download of one of the batch's videos",
    }
    for path, what in hits.items():
        hit = protected.clash(path)
        assert hit is not None and hit[0] == what, path
    for path in (out / "report.html", out / "jobs.csv", tmp_path / "001-fox.mp4"):
        assert protected.clash(path) is None, path
    assert Protected.of().clash(out / "001-fox.mp4") is None
