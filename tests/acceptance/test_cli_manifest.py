"""`batchgen validate`, `plan` and `status` as a user types them: exit codes, output,
and that plan and status never write a byte or open a socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.manifests import write_manifest

# ------------------------------------------------------------------ validate


# ------------------------------------------------------------------ plan


# ------------------------------------------------------------------ status


def test_the_installed_entry_point(tmp_path):
    """A real process: `python -m batchgen plan --json`, then `status` on no database."""
    manifest = write_manifest(tmp_path, ["fox", "owl"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    env["BATCHGEN_DB"] = str(tmp_path / "state.db")
    run = [sys.executable, "-m", "batchgen"]
    plan = subprocess.run(
        [*run, "plan", str(manifest), "--json"], env=env, capture_output=True, text=True
    )
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["jobs"] == 4
    status = subprocess.run([*run, "status"], env=env, capture_output=True, text=True)
    assert status.returncode == 2
    assert "state.db" in status.stderr
    assert not (tmp_path / "state.db").exists()
