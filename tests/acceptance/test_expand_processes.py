"""Job keys computed in a fresh Python process match this one's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.manifests import SWEEP, load, write
from tests.support.paths import REPO

ROOT = REPO


def test_keys_are_the_same_in_a_fresh_python_process(tmp_path: Path) -> None:
    path = write(tmp_path, SWEEP)
    here = [j.key for j in load(tmp_path, SWEEP).jobs()]
    code = (
        "import json, sys; from pathlib import Path; "
        "from batchgen.manifest.loader import load_manifest; "
        "print(json.dumps([j.key for j in load_manifest(Path(sys.argv[1])).jobs()]))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert json.loads(out.stdout) == here
