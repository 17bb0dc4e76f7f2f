"""File names computed in a fresh Python process match this one's."""

from __future__ import annotations

import os
import subprocess
import sys

from batchgen.manifest.naming import (
    output_stem,
)


def test_stable_across_processes() -> None:
    code = (
        "from batchgen.manifest.naming import output_stem as o;"
        "print(o('{prompt:.10}', index=1, key='job/1', axes={}, input={'prompt': 'héllo wörld'},"
        " batch='b'))"
    )
    out = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    here = output_stem(
        "{prompt:.10}", index=1, key="job/1", axes={}, input={"prompt": "héllo wörld"}, batch="b"
    )
    assert out == {here}
