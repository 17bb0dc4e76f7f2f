"""Write ``schemas/manifest.schema.json`` from the manifest's pydantic models.

    python -m batchgen.manifest.schema_gen           # (re)write the file
    python -m batchgen.manifest.schema_gen --check   # exit 1 if the checked-in file is stale

Editors validate manifests as you type through the first line of each example,
``# yaml-language-server: $schema=../schemas/manifest.schema.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from batchgen.manifest.models import Manifest

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "manifest.schema.json"
SCHEMA_ID = "https://github.com/batchgen/batchgen/schemas/manifest.schema.json"


def manifest_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "batchgen manifest",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def render() -> str:
    return json.dumps(manifest_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--out", type=Path, default=SCHEMA_PATH, help="where to write")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(
                f"{args.out} is stale: run `python -m batchgen.manifest.schema_gen` and commit it",
                file=sys.stderr,
            )
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
