"""Turn a shape-checked ``Manifest`` into an expansion ``Spec``, finding every problem.

What is checked here (each problem names its file, line and column and a fix):
values against the model's input schema (once per distinct value, not per job: the
fields of the schema are independent), numbers where the model wants text (coerced:
``duration: 5`` -> ``"5"``), local images, values files, prompt templates and their
variables (each variable needs values, each non-input name must be used by a prompt),
names set by two axes, excludes naming unknown names, includes without a prompt.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from batchgen.manifest.context import (
    IDENT,
    Context,
    Where,
    did_you_mean,
    dotted,
    is_template,
)
from batchgen.manifest.expand import Axis, Choice
from batchgen.manifest.files import FileProblem, read_lines, read_rows
from batchgen.manifest.images import (
    ImageError,
    LocalImage,
    body_warning,
    check_image,
    is_remote,
    public_url,
    reference,
    resolve,
)
from batchgen.manifest.inputs import InputCheck
from batchgen.manifest.models import FileRef, Manifest
from batchgen.manifest.naming import BASE_FIELDS
from batchgen.manifest.parse import YamlPath
from batchgen.runbase.models import ModelSpec

IMAGE = "image"
#: a URL of any scheme (``ftp://``, ``s3://``, ``HTTPS://`` ...): never a local path
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
RESERVED = (*BASE_FIELDS, "rows")


class Resolver:
    def __init__(self, ctx: Context, manifest: Manifest, spec: ModelSpec, *, partial: bool) -> None:
        self.ctx = ctx
        self.m = manifest
        self.model = spec
        self.partial = partial  # parts of the manifest were dropped: skip cross checks
        #: matrix axes whose values file could not be read: their names are known, so
        #: the checks across the manifest still run (the values are not needed there)
        self.unread: set[str] = set()
        self.base_dir = ctx.file.parent
        self.props: dict[str, Any] = spec.input_schema.get("properties", {})
        self.inputs = set(self.props) | {IMAGE}
        self._inputs = InputCheck(ctx, self.props)
        self._images: dict[str, str | None] = {}
        self._inline: dict[str, LocalImage] = {}  # local images sent as data: URIs
        self._body_checked: set[tuple[str, ...]] = set()
        self.templates: list[tuple[str, Where, str]] = []  # (template, where, scope)
        self.included: dict[int, Choice] = {}  # manifest index -> include
        self.notes: list[str] = []  # warnings that are no problems
        self.sources: list[Path] = []  # files the manifest names (no output may replace them)
        #: a values or rows file with more entries than this is refused while it is
        #: read (the job limit: a longer axis could not pass it anyway)
        self.max_values: int | None = None

    # ------------------------------------------------------------ values

    def field_value(self, name: str, raw: Any, where: Where) -> tuple[str, Any, str] | None:
        """``(input field, stored value, label)`` of one written value, or None (a problem)."""
        if name == IMAGE:
            return self._image_field(raw, where)
        kind = self.props[name].get("type")
        if kind == "array":
            typed = self._array_field(name, raw, where)
        elif kind == "string":
            typed = self._string_field(raw, where)
        else:
            typed = raw, json.dumps(raw)
        if typed is None:
            return None
        value, label = typed
        if name == "prompt" and is_template(value):
            return name, value, label  # checked once rendered (``expand.count``)
        if not self._inputs.valid(name, value, where):
            return None
        return name, value, label

    def _image_field(self, raw: Any, where: Where) -> tuple[str, Any, str] | None:
        if not isinstance(raw, str):
            self.ctx.add(where, f"{dotted(where)}: an image is one path or URL", "write a text")
            return None
        ref = self.image(raw, where)
        if ref is None:
            return None
        self._check_body([raw])
        return "image_urls", [ref], raw

    def _array_field(self, name: str, raw: Any, where: Where) -> tuple[Any, str] | None:
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            self.ctx.add(where, f"{dotted(where)}: expected a list of texts", "e.g. [a, b]")
            return None
        if name != "image_urls":
            return items, "+".join(items)
        refs = [self.image(i, where) for i in items]
        if any(r is None for r in refs):
            return None
        self._check_body(items)
        return refs, "+".join(items)

    def _string_field(self, raw: Any, where: Where) -> tuple[Any, str] | None:
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            self.ctx.add(
                where,
                f"{dotted(where)}: expected a text, got {json.dumps(raw)}",
                f'write it in quotes: "{raw}"',
            )
            return None
        return str(raw), str(raw)

    def variable_value(self, raw: Any, where: Where) -> str | None:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            self.ctx.add(where, f"{dotted(where)}: expected a text or a number", "quote it")
            return None
        return str(raw)

    def check_images_mapping(self) -> None:
        for folder, base in self.m.images.items():
            if not base.startswith(("http://", "https://")):
                self.ctx.add(
                    ("images", folder),
                    f"images.{folder}: {base!r} is not an http(s) URL",
                    "map the folder to the public base URL it is served from, "
                    "e.g. https://cdn.example.com/images/",
                )
            elif not resolve(folder, self.base_dir).is_dir():
                self.ctx.add(
                    ("images", folder),
                    f"images: {folder!r} is not a folder next to the manifest",
                    "name a folder relative to the manifest's folder",
                    key=True,
                )

    def image(self, written: str, where: Where) -> str | None:
        if is_remote(written):
            pattern = self.props.get("image_urls", {}).get("items", {}).get("pattern")
            if pattern and not re.search(pattern, written):
                self.ctx.add(
                    where,
                    f"{dotted(where)}: {written[:80]!r} is not a complete URL "
                    "(an https:// URL needs a host; a data: URI needs its comma and data)",
                    "give the whole URL, e.g. https://cdn.example.com/a.png, or a local file",
                )
                return None
            return written
        if _URL.match(written):
            self.ctx.add(
                where,
                f"{dotted(where)}: {written!r} is a URL the API cannot fetch "
                "(it takes https://, http:// and data: URLs)",
                "host the image at an https:// URL, or give the path of a local file",
            )
            return None
        if written not in self._images:
            try:
                self.sources.append(resolve(written, self.base_dir))
                found = check_image(self.sources[-1])
            except ImageError as exc:
                self.ctx.add(where, f"{dotted(where)}: {exc}", exc.fix)
                self._images[written] = None
            else:
                url = public_url(written, self.base_dir, self.m.images)
                self._images[written] = url or reference(written, found.sha256)
                if url is None:
                    self._inline[written] = found
        return self._images[written]

    def _check_body(self, written: list[str]) -> None:
        """Note (once per image list) a job whose inline images make its request body
        larger than a server may take."""
        key = tuple(written)
        if key in self._body_checked:
            return
        self._body_checked.add(key)
        inline = [(w, self._inline[w]) for w in written if w in self._inline]
        warning = body_warning(inline) if inline else None
        if warning is not None:
            self.notes.append(warning)

    def choice(
        self,
        values: dict[str, Any],
        where: Where,
        *,
        scope: str,
        single: bool = False,
        keep_partial: bool = False,
    ) -> Choice | None:
        """A set of names -> values (one include, one row, one axis value: ``single``,
        ``where`` then points at the value itself)."""
        choice = Choice(fields={})
        ok = True
        for name, raw in values.items():
            at: Where = where if single or isinstance(where[0], Path) else (*where, name)
            if name in self.inputs:
                got = self.field_value(name, raw, at)
                if got is None:
                    ok = False
                    continue
                field_name, value, label = got
                if field_name in choice.fields:
                    self.ctx.add(at, f"{dotted(at)}: image and image_urls both given", "keep one")
                    ok = False
                choice.fields[field_name] = value
                choice.labels[name] = label
                if field_name == "prompt" and is_template(value):
                    self.templates.append((value, at, scope))
            elif self.variable_name(name, at):
                text = self.variable_value(raw, at)
                if text is None:
                    ok = False
                    continue
                choice.variables[name] = text
                choice.labels[name] = text
            else:
                ok = False
        return choice if ok or keep_partial else None

    def variable_name(self, name: str, where: Where) -> bool:
        if name in RESERVED or not IDENT.match(name):
            self.ctx.add(
                where,
                f"{dotted(where)}: {name!r} cannot be a template variable "
                + ("(a reserved name)" if name in RESERVED else "(use letters, digits and _)")
                + did_you_mean(name, self.inputs),
                f"rename it; model inputs are: {', '.join(sorted(self.inputs))}",
                key=True,
            )
            return False
        return True

    # ------------------------------------------------------------ axes

    def axes(self) -> list[Axis]:
        out: list[Axis] = []
        if self.m.rows is not None:
            rows = self.rows()
            if rows is not None:
                out.append(rows)
        for name, values in self.m.matrix.items():
            where: YamlPath = ("matrix", name)
            if name not in self.inputs and not self.variable_name(name, where):
                continue
            items: list[tuple[Any, Where]] | None
            size = math.prod(len(a.choices) for a in out)
            if isinstance(values, FileRef) and self.max_values and size > self.max_values:
                # The matrix is over the job limit already (reported by the loader):
                # reading more files could only cost time.
                self.unread.add(name)
                continue
            if isinstance(values, FileRef):
                items = self.file_values(values.file, (*where, "file"))
            else:
                items = [(v, (*where, i)) for i, v in enumerate(values)]
            if items is None:  # the file's problem is reported
                self.unread.add(name)
                continue
            if not items:
                self.ctx.add(
                    where,
                    f"matrix.{name} has no values",
                    "give it at least one value, or remove the axis",
                )
                continue
            choices = [self.choice({name: v}, w, scope="matrix", single=True) for v, w in items]
            # An axis keeps its good values even when some are bad (the problems are
            # reported anyway), so later checks do not report it missing as well.
            out.append(Axis(name, [c for c in choices if c is not None]))
        return out

    def file_values(self, written: str, where: YamlPath) -> list[tuple[Any, Where]] | None:
        path = resolve(written, self.base_dir)
        self.sources.append(path)
        try:
            return [(text, (path, n)) for n, text in read_lines(path, max_values=self.max_values)]
        except FileProblem as exc:
            self._file_problem(path, exc, where)
            return None

    def _file_problem(self, path: Path, exc: FileProblem, where: YamlPath) -> None:
        if exc.line is None:
            self.ctx.add(where, f"{dotted(where)}: {exc}", exc.fix)
        else:
            self.ctx.add((path, exc.line), str(exc), exc.fix)

    def rows(self) -> Axis | None:
        rows = self.m.rows
        items: list[tuple[dict[str, Any], Where]]
        if isinstance(rows, str):
            path = resolve(rows, self.base_dir)
            self.sources.append(path)
            try:
                items = [
                    (r.values, (path, r.line)) for r in read_rows(path, max_rows=self.max_values)
                ]
            except FileProblem as exc:
                self._file_problem(path, exc, ("rows",))
                self.partial = True  # its columns are unknown: cross checks would guess
                return None
        else:
            items = [(r, ("rows", i)) for i, r in enumerate(rows or [])]
        if not items:
            self.ctx.add(("rows",), "rows has no rows", "give at least one row, or remove rows")
            return None
        names: list[str] = []
        for values, _ in items:
            names.extend(n for n in values if n not in names)
        choices = []
        for values, where in items:
            missing = [n for n in names if n not in values and n not in self.m.defaults]
            if missing:
                self.ctx.add(
                    where,
                    f"{dotted(where)}: this row has no value for {', '.join(missing)}",
                    "give every row every column (or put a value in defaults)",
                )
                continue
            given = {k: v for k, v in values.items() if not (k in self.inputs and v == "")}
            choices.append(self.choice(given, where, scope="rows"))
        return Axis("rows", [c for c in choices if c is not None])

    # ------------------------------------------------------------ the rest

    def base(self) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
        """Model defaults updated by the manifest's defaults; its variables; its labels."""
        choice = self.choice(
            dict(self.m.defaults), ("defaults",), scope="defaults", keep_partial=True
        )
        base = self.model.defaults()
        assert choice is not None
        base.update(choice.fields)
        labels = {k: v for k, v in choice.labels.items() if k not in self.props}
        return base, choice.variables, labels

    def includes(self) -> list[Choice]:
        for i, entry in enumerate(self.m.include):
            choice = self.choice(dict(entry), ("include", i), scope=f"include {i}")
            if choice is not None:
                self.included[i] = choice
        return list(self.included.values())

    def excludes(self, known: set[str]) -> list[dict[str, frozenset[str]]]:
        out = []
        for i, entry in enumerate(self.m.exclude):
            rule: dict[str, frozenset[str]] = {}
            for name, raw in entry.items():
                if name not in known:
                    if self.partial:  # it may be a column of a rows file that failed
                        continue
                    self.ctx.add(
                        ("exclude", i, name),
                        f"exclude[{i}]: {name!r} is no axis, variable or input of this "
                        f"manifest{did_you_mean(name, known)}",
                        f"use one of: {', '.join(sorted(known))}",
                        key=True,
                    )
                    continue
                values = raw if isinstance(raw, list) else [raw]
                rule[name] = frozenset(str(v) for v in values)
            out.append(rule)
        return out
