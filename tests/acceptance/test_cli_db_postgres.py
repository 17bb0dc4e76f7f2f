"""``--db postgresql://…`` (or ``$BATCHGEN_DB``) is refused by the commands that run a
batch (``run``, ``resume``, ``retry``: the runner does not drive PostgreSQL yet) with
exit 2 and one clear line, its password masked; it never becomes a folder named
``postgresql:`` with a SQLite file inside (issue 12), and nothing is written or sent.
Also through ``run_batch``, the library's entry point. The other commands read it
(``test_cli_readers_postgres.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen.errors import ExitCode
from batchgen.run.runner import arun_batch
from tests.support.manifests import write_manifest

URL = "postgresql://bob:s3cret@127.0.0.1:9/batches"
COMMANDS = [("run", "M"), ("resume",), ("retry", "sweep")]


def batchgen(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    base.update(RUNBASE_API_KEY="sk-sim-0000000000000000", RUNBASE_BASE_URL="http://127.0.0.1:9")
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        env={**base, **env}, cwd=folder, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_refused(proc: subprocess.CompletedProcess[str], folder: Path, before: set[str]) -> None:
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "PostgreSQL state databases are not supported" in proc.stderr
    assert "postgresql://bob:***@127.0.0.1:9/batches" in proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr
    assert {p.name for p in folder.iterdir()} == before  # no "postgresql:" folder, no file


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c[0])
def test_every_command_refuses_a_postgres_db(tmp_path: Path, cmd: tuple[str, ...]) -> None:
    manifest = write_manifest(tmp_path, ["a", "b"])
    before = {p.name for p in tmp_path.iterdir()}
    args = [str(manifest) if a == "M" else a for a in cmd]
    assert_refused(batchgen(tmp_path, *args, "--db", URL), tmp_path, before)


def test_the_environment_and_the_root_option_name_it_too(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, ["a", "b"])
    before = {p.name for p in tmp_path.iterdir()}
    assert_refused(batchgen(tmp_path, "resume", BATCHGEN_DB=URL), tmp_path, before)
    assert_refused(batchgen(tmp_path, "--db", URL, "run", str(manifest)), tmp_path, before)
    # a reader takes it for the server it names (nothing answers on port 9: exit 75)
    status = batchgen(tmp_path, "status", BATCHGEN_DB=URL)
    assert status.returncode == ExitCode.INTERRUPTED, status.stderr
    assert "postgresql://bob:***@127.0.0.1:9/batches: cannot reach it" in status.stderr
    assert "s3cret" not in status.stdout + status.stderr
    assert {p.name for p in tmp_path.iterdir()} == before


async def test_run_batch_refuses_a_postgres_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path, ["a", "b"])
    monkeypatch.chdir(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    summary = await arun_batch(Path(URL), api_key="sk-sim-0000000000000000", manifest=manifest)
    assert summary.exit_code == ExitCode.USAGE
    assert "not supported" in summary.reason and "s3cret" not in summary.reason
    assert {p.name for p in tmp_path.iterdir()} == before
