"""``--db postgresql://…`` (or ``$BATCHGEN_DB``, or the root ``--db``) never becomes a
folder named ``postgresql:`` with a SQLite file inside (issue 12). The commands that
drive a batch (run, resume, retry, cancel) take it for the server it names: one that
does not answer is exit 75 (resumable) and one line, its password masked, and nothing
is written or sent. Also through ``run_batch``, the library's entry point. The readers
are ``test_cli_readers_postgres.py``'s; the workers at work ``test_run_postgres_workers.py``'s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen.errors import ExitCode
from batchgen.run.runner import arun_batch
from tests.support.manifests import write_manifest

URL = "postgresql://bob:s3cret@127.0.0.1:9/batches"
WORKERS = [("run", "M"), ("resume",), ("retry", "sweep"), ("cancel", "sweep")]


def batchgen(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    base.update(RUNBASE_API_KEY="sk-sim-0000000000000000", RUNBASE_BASE_URL="http://127.0.0.1:9")
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        env={**base, **env}, cwd=folder, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_unreachable(
    proc: subprocess.CompletedProcess[str], folder: Path, before: set[str]
) -> None:
    assert proc.returncode == ExitCode.INTERRUPTED, proc.stderr
    assert "postgresql://bob:***@127.0.0.1:9/batches" in proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr
    assert "batchgen: : " not in proc.stderr  # no empty batch name before the reason
    # no "postgresql:" folder, no file (`run` makes its empty output folder first)
    assert {p.name for p in folder.iterdir()} - {"out"} == before


@pytest.mark.parametrize("cmd", WORKERS, ids=lambda c: c[0])
def test_the_commands_that_drive_a_batch_take_the_url_for_a_server(
    tmp_path: Path, cmd: tuple[str, ...]
) -> None:
    manifest = write_manifest(tmp_path, ["a", "b"])
    before = {p.name for p in tmp_path.iterdir()}
    args = [str(manifest) if a == "M" else a for a in cmd]
    assert_unreachable(batchgen(tmp_path, *args, "--db", URL), tmp_path, before)
    assert_unreachable(batchgen(tmp_path, *args, BATCHGEN_DB=URL), tmp_path, before)


def test_the_root_option_names_it_too(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, ["a", "b"])
    before = {p.name for p in tmp_path.iterdir()}
    assert_unreachable(batchgen(tmp_path, "--db", URL, "run", str(manifest)), tmp_path, before)
    assert_unreachable(batchgen(tmp_path, "--db", URL, "status"), tmp_path, before)


async def test_run_batch_takes_a_postgres_url_for_a_server_never_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner drives PostgreSQL now: a server that does not answer is exit 75
    (resumable), its password masked, and the URL never becomes a folder or a file."""
    manifest = write_manifest(tmp_path, ["a", "b"])
    monkeypatch.chdir(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    summary = await arun_batch(Path(URL), api_key="sk-sim-0000000000000000", manifest=manifest)
    assert summary.exit_code == ExitCode.INTERRUPTED, summary.reason
    assert "postgresql://bob:***@127.0.0.1:9/batches" in summary.reason
    assert "s3cret" not in json.dumps(summary.to_json())
    # the output folder is made before the database is reached (as with SQLite): empty
    assert {p.name for p in tmp_path.iterdir()} - {"out"} == before
    assert not any((tmp_path / "out").iterdir())
