"""The first check of a manifest: its shape (types, unknown keys), with pydantic.

Pydantic's errors are turned into ``Problem``s that name the line and column, say what
was expected in words, and suggest the closest known key for an unknown one. When some
top-level keys are broken they are dropped and the rest is checked again, so one run
reports as many problems as it can (``partial`` then tells the resolver to skip the
checks that need the whole manifest).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from batchgen.manifest.context import Context, did_you_mean
from batchgen.manifest.models import FileRef, Limits, Manifest

_EXPECTED: dict[tuple[str, ...], str] = {
    ("repeat",): "a whole number from 1 to 1000",
    ("defaults", "*"): "a text, a number or a list of texts",
    ("include", "*"): "a mapping of names to values",
    ("include", "*", "*"): "a text, a number or a list of texts",
    ("exclude", "*"): "a mapping of names to values",
    ("exclude", "*", "*"): "a value or a list of values",
    ("matrix", "*"): "a list of values, or {file: values.txt}",
    ("matrix", "*", "*"): "a text, a number or a list of texts",
    ("rows",): "a file path (.csv, .jsonl, .txt) or a list of mappings",
    ("rows", "*"): "a mapping of names to values",
    ("rows", "*", "*"): "a text, a number or a list of texts",
    ("images", "*"): "a URL such as https://cdn.example.com/images/",
    ("limits", "concurrency"): "a whole number of at least 1",
    ("limits", "max_attempts"): "a whole number of at least 1",
    ("limits", "budget_usd"): "a number of dollars above 0 (finite, at most 1e9), e.g. 25",
    ("limits", "rate"): "a rate such as 20/10s",
}
_MAPPINGS: dict[tuple[str, ...], type[BaseModel]] = {(): Manifest, ("limits",): Limits}


def _expected(path: tuple[str | int, ...]) -> str | None:
    generic = tuple("*" if i > 0 else str(p) for i, p in enumerate(path))
    for probe in (tuple(str(p) for p in path), generic):
        if probe in _EXPECTED:
            return _EXPECTED[probe]
    if len(path) == 1 and path[0] in ("name", "model", "out_dir", "filename"):
        return "a text"
    if len(path) == 1:
        return "a mapping"
    return None


def _data_path(data: Any, loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """The part of a pydantic ``loc`` that indexes ``data`` (drops union member tags)."""
    path: list[str | int] = []
    cur = data
    for part in loc:
        in_dict = isinstance(cur, dict) and part in cur
        if in_dict or (isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)):
            path.append(part)
            cur = cur[part]
    return tuple(path)


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the manifest"


def _allowed_keys(parent: tuple[str | int, ...]) -> list[str]:
    model: type[BaseModel] | None = _MAPPINGS.get(tuple(str(p) for p in parent))
    if model is None and len(parent) == 2 and parent[0] == "matrix":
        model = FileRef
    return sorted(model.model_fields) if model else []


def _problems(data: Any, exc: ValidationError, ctx: Context) -> set[str]:
    """Add one problem per broken place; return the broken top-level keys."""
    by_path: dict[tuple[str | int, ...], list[Any]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            _unknown_key(_data_path(data, loc), ctx)
        else:
            by_path.setdefault(_data_path(data, loc), []).append(err)
    for path, errs in by_path.items():
        _broken_value(data, path, errs, ctx)
    return {str(e["loc"][0]) for e in exc.errors() if e["loc"]}


def _unknown_key(path: tuple[str | int, ...], ctx: Context) -> None:
    parent, key = path[:-1], str(path[-1]) if path else ""
    allowed = _allowed_keys(parent)
    where = f" in {_dotted(parent)}" if parent else ""
    ctx.add(
        path,
        f"unknown key {key!r}{where}{did_you_mean(key, allowed)}",
        f"known keys here: {', '.join(allowed)}" if allowed else "remove it",
        key=True,
    )


def _broken_value(data: Any, path: tuple[str | int, ...], errs: list[Any], ctx: Context) -> None:
    """One problem for the errors pydantic found at one place: missing, mistyped, or wrong."""
    missing = [e for e in errs if e["type"] == "missing"]
    if missing:
        name = str(missing[0]["loc"][-1])
        ctx.add(path, f"{_dotted(path)}: {name!r} is required", f"add {name}: ...")
        return
    value = _value_at(data, path)
    shown = json.dumps(value, default=str)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    typed = all(
        e["type"].endswith("_type") or e["type"] in ("union_tag_invalid", "string_pattern_mismatch")
        for e in errs
    )
    expected = _expected(path)
    if typed and expected:
        fix = f"write {expected}"
        if isinstance(value, bool):
            fix += " (yes/no/true/false are booleans in YAML; quote them for text)"
        ctx.add(path, f"{_dotted(path)}: expected {expected}, got {shown}", fix)
        return
    err = next((e for e in errs if not e["type"].endswith("_type")), errs[0])
    ctx.add(
        path,
        f"{_dotted(path)}: {err['msg']} (got {shown})",
        f"write {expected}" if expected else None,
    )


def _value_at(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def check_shape(data: Any, ctx: Context) -> tuple[Manifest | None, bool]:
    """The manifest if its shape holds (perhaps without its broken top-level keys)."""
    if data is None:
        ctx.add((), "the manifest is empty", "start from manifests/example.yaml")
        return None, False
    if not isinstance(data, dict):
        ctx.add(
            (),
            "the manifest must be a mapping of keys (name:, matrix:, ...)",
            "start from manifests/example.yaml",
        )
        return None, False
    try:
        return Manifest.model_validate(data), False
    except ValidationError as exc:
        broken = _problems(data, exc, ctx)
    rest = {k: v for k, v in data.items() if k not in broken}
    # Broken limits, repeat, images or names leave the matrix checks meaningful.
    partial = bool(broken & {"matrix", "rows", "defaults", "include", "exclude", "filename"})
    try:
        return Manifest.model_validate(rest), partial
    except ValidationError:
        return None, True
