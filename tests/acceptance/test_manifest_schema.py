"""The checked-in manifest JSON Schema is generated from the models and up to date."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from batchgen.manifest.schema_gen import SCHEMA_PATH, main, manifest_schema
from tests.support.paths import REPO

ROOT = REPO


def test_the_checked_in_schema_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "batchgen.manifest.schema_gen", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert SCHEMA_PATH == ROOT / "schemas" / "manifest.schema.json"


def test_check_fails_on_a_stale_file_and_writing_fixes_it(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    out.write_text("{}\n")
    assert main(["--check", "--out", str(out)]) == 1
    assert main(["--out", str(out)]) == 0
    assert main(["--check", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == manifest_schema()


def test_the_schema_is_valid_and_rejects_what_the_loader_rejects() -> None:
    schema = manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"defaults": {"prompt": "a cat"}, "matrix": {"style": ["a"]}})
    assert not validator.is_valid({"nmae": "x"})
    assert not validator.is_valid({"repeat": 0})
    assert not validator.is_valid({"matrix": {"style": "not a list"}})
    assert not validator.is_valid({"limits": {"rate": "fast"}})


def test_editors_get_the_model_inputs_allowed_values() -> None:
    validator = jsonschema.Draft202012Validator(manifest_schema())
    assert not validator.is_valid({"defaults": {"resolution": "4k"}})
    assert not validator.is_valid({"matrix": {"aspect_ratio": ["2:1"]}})
    assert not validator.is_valid({"include": [{"duration": 7}]})
    assert validator.is_valid({"defaults": {"duration": 5, "image": "a.png"}})
    assert validator.is_valid({"matrix": {"prompt": {"file": "p.txt"}, "image": ["a.png"]}})
    assert validator.is_valid({"matrix": {"image_urls": [["a.png", "https://x.example/b"]]}})
