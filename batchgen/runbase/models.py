"""Model input schemas and price tables, read from ``schemas/models/*.json``.

One source of truth for the client (local validation, cost estimates) and the
simulator (validation, charging).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

DEFAULT_MODEL = "bytedance/seedance-1-pro"


def _schema_dirs() -> list[Path]:
    package = Path(__file__).resolve().parent.parent
    # Wheel installs carry the folder as package data; a checkout has it at the top.
    return [package / "_schemas" / "models", package.parent / "schemas" / "models"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    input_schema: dict[str, Any]
    prices: dict[str, dict[str, int]]  # resolution -> duration -> micro-USD
    typical_s: dict[str, dict[str, float]]  # resolution -> duration -> seconds

    def defaults(self) -> dict[str, Any]:
        props: dict[str, Any] = self.input_schema["properties"]
        return {k: v["default"] for k, v in props.items() if "default" in v}

    def with_defaults(self, input: dict[str, Any]) -> dict[str, Any]:
        return {**self.defaults(), **input}

    def problems(self, input: dict[str, Any]) -> list[str]:
        """Every way ``input`` breaks the schema, each naming the field."""
        validator = jsonschema.Draft202012Validator(self.input_schema)
        out = []
        for err in sorted(validator.iter_errors(input), key=lambda e: list(e.absolute_path)):
            field = ".".join(str(p) for p in err.absolute_path)
            if err.validator == "additionalProperties":
                extra = sorted(set(input) - set(self.input_schema["properties"]))
                out.append(f"input: unknown field(s) {', '.join(extra)}")
            elif err.validator == "required":
                out.append(f"input.{err.message.split(chr(39))[1]}: required")
            else:
                out.append(f"input.{field}: {err.message}")
        return out

    def price_micro_usd(self, input: dict[str, Any]) -> int:
        full = self.with_defaults(input)
        return self.prices[full["resolution"]][full["duration"]]

    def typical_seconds(self, input: dict[str, Any]) -> float:
        full = self.with_defaults(input)
        return self.typical_s[full["resolution"]][full["duration"]]


def known_models() -> list[str]:
    names: set[str] = set()
    for d in _schema_dirs():
        if d.is_dir():
            for f in d.glob("*.json"):
                names.add(json.loads(f.read_text())["model"])
    return sorted(names)


@cache
def load_model(name: str) -> ModelSpec:
    """The spec of ``name``; KeyError when no schema file describes it."""
    file_name = name.replace("/", "-") + ".json"
    for d in _schema_dirs():
        f = d / file_name
        if f.is_file():
            data = json.loads(f.read_text())
            return ModelSpec(
                name=data["model"],
                title=data.get("title", name),
                input_schema=data["input_schema"],
                prices=data["price_micro_usd"],
                typical_s=data["typical_generation_s"],
            )
    raise KeyError(name)
