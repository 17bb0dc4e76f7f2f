"""``open_db(readonly=True)``: what ``plan``, ``status``, ``report`` and ``export`` read
with. It must read correctly while a writer starts, never write, and leave no file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchgen.store import batches, reports
from batchgen.store.schema import open_db
from tests.support.manifests import write_manifest
from tests.support.paths import REPO
from tests.support.stored import SUBJECTS, files, stored


def test_a_read_after_a_killed_writer_sees_its_commits_and_changes_no_byte(tmp_path):
    """A writer killed with SIGKILL leaves its commits in the -wal; a reader must see
    them and leave the WAL for the next writer (a read-only connection never folds)."""
    db_path = stored(tmp_path)
    manifest = write_manifest(tmp_path, [*SUBJECTS, "late"])
    code = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from batchgen.manifest.loader import load_manifest\n"
        "from batchgen.store import batches\n"
        "from batchgen.store.schema import open_db\n"
        f"db = open_db(Path({str(db_path)!r}))\n"
        f"batches.sync_batch(db, load_manifest(Path({str(manifest)!r})))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert db_path.with_name("state.db-wal").stat().st_size > 0
    before = files(tmp_path)
    reader = open_db(db_path, readonly=True)
    batch = batches.find_batch(reader, "sweep")
    assert batch.id is not None
    assert reports.job_total(reader, batch.id) == 2 * len(SUBJECTS) + 2
    reader.dispose()
    # The reader rebuilt the WAL index in -shm (shared memory, not data); the database
    # and its WAL are byte for byte what the killed writer left.
    after = files(tmp_path)
    assert after.keys() == before.keys()
    assert after["state.db"] == before["state.db"]
    assert after["state.db-wal"] == before["state.db-wal"]


NOBODY = 65534

# The reader drops to another user only after it imported everything `status` needs
# (a warm-up read of a copy, as root): the clone and its .venv may lie in a folder only
# their owner can enter (a 0700 home or TMPDIR), and the test must not depend on that.
_READ_AS_NOBODY = """
import contextlib, io, os, sys
from batchgen.cli import main
warm, target = sys.argv[1:3]
NOBODY = int(sys.argv[3])

def status(db):
    sys.argv = ["batchgen", "status", "--db", db, "--json"]
    try:
        main()
    except SystemExit as exc:
        if exc.code:
            raise

with contextlib.redirect_stdout(io.StringIO()):
    status(warm)
os.setgroups([])
os.setgid(NOBODY)
os.setuid(NOBODY)
status(target)
"""


def _enterable_by_others(folder: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in (folder, *folder.parents))


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder outside pytest's private tmp tree that another user can enter."""
    places = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]
    usable = [p for p in places if p.is_dir() and _enterable_by_others(p)]
    if not usable:
        pytest.skip("no temporary folder here that another user may enter")
    folder = Path(tempfile.mkdtemp(prefix="batchgen-ro-", dir=usable[0]))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root to become another user for the read",
)
def test_status_reads_a_database_in_a_folder_it_may_not_write(shared_folder, tmp_path):
    """SQLite cannot create the WAL index there, so only an immutable read works."""
    db_path = stored(shared_folder)
    db_path.chmod(0o644)
    warm = tmp_path / "warm.db"
    shutil.copy(db_path, warm)
    before = files(shared_folder)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    status = subprocess.run(
        [sys.executable, "-c", _READ_AS_NOBODY, str(warm), str(db_path), str(NOBODY)],
        capture_output=True,
        text=True,
        env=env,
        cwd=shared_folder,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["jobs"] == 2 * len(SUBJECTS)
    assert files(shared_folder) == before
