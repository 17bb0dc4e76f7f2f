"""A state database that cannot be used (read-only, immutable, in a read-only folder,
damaged in the middle) is one clear line and exit 2 for every command, never a
traceback; a command that only reads may still answer from a read-only database.
The database's bytes stay as they were."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from batchgen.manifest.loader import load_manifest
from batchgen.store import batches
from batchgen.store.schema import open_db
from tests.support.manifests import write_manifest

SUBJECTS = [f"s{i:03d}" for i in range(300)]  # a database of some 50 pages
WRITERS = [("run", "M"), ("resume",), ("retry", "sweep"), ("cancel", "sweep")]
READERS = [("status",), ("plan", "M"), ("report", "--out", "R"), ("export", "--format", "csv")]


def batchgen(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    env.update(RUNBASE_API_KEY="sk-sim-0000000000000000", RUNBASE_BASE_URL="http://127.0.0.1:9")
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        env=env, cwd=folder, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def stored(folder: Path) -> tuple[Path, Path]:
    manifest = write_manifest(folder, SUBJECTS)
    db_path = folder / "db" / "state.db"
    db = open_db(db_path)
    batches.sync_batch(db, load_manifest(manifest))
    db.dispose()
    return db_path, manifest


def argv(cmd: tuple[str, ...], db: Path, manifest: Path, out: Path) -> list[str]:
    subst = {"M": str(manifest), "R": str(out / "report.html")}
    return [*(subst.get(a, a) for a in cmd), "--db", str(db)]


def check_all(
    folder: Path, db: Path, manifest: Path, *, readers_may_read: bool, readers: bool = True
) -> None:
    before = db.read_bytes()
    out = folder / "out-of-band"
    out.mkdir(exist_ok=True)
    for cmd in [*WRITERS, *(READERS if readers else READERS[:1])]:
        proc = batchgen(folder, *argv(cmd, db, manifest, out))
        assert "Traceback" not in proc.stderr, (cmd, proc.stderr)
        if cmd in READERS and readers_may_read and proc.returncode == 0:
            continue
        assert proc.returncode == 2, (cmd, proc.returncode, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("batchgen: ") and str(db.name) in last, (cmd, proc.stderr)
    assert db.read_bytes() == before


def _chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` (file or folder) made unwritable, even for root (immutable)."""
    if os.geteuid() == 0:
        if not _chattr("+i", path):
            pytest.skip("root, and this filesystem has no immutable flag (chattr +i)")
        try:
            yield
        finally:
            _chattr("-i", path)
        return
    mode = path.stat().st_mode
    path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        yield
    finally:
        path.chmod(mode)


def test_a_read_only_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    db, manifest = stored(tmp_path)
    with read_only(db):
        check_all(tmp_path, db, manifest, readers_may_read=True)
        proc = batchgen(tmp_path, "resume", "--db", str(db))
        assert "read-only" in proc.stderr


def test_a_database_in_a_read_only_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    db, manifest = stored(tmp_path)
    with read_only(db.parent):  # the readers are the same as for a read-only file
        check_all(tmp_path, db, manifest, readers_may_read=True, readers=False)


def test_a_database_damaged_in_the_middle_is_one_line_and_exit_2(tmp_path: Path) -> None:
    db, manifest = stored(tmp_path)
    size = db.stat().st_size
    page = 4096
    start = (size // 3) // page * page
    with db.open("r+b") as f:  # a third of the pages in the middle overwritten
        f.seek(start)
        f.write(os.urandom((size // 3) // page * page))
    check_all(tmp_path, db, manifest, readers_may_read=False)
    proc = batchgen(tmp_path, "cancel", "sweep", "--db", str(db))
    assert "damaged" in proc.stderr
