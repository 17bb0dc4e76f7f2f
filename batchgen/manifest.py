"""Load a manifest: YAML -> checked ``Manifest`` -> ``LoadedManifest`` that streams jobs.

``load_manifest`` reads the file, checks its shape (``manifest_models``), resolves it
against the model's input schema (``manifest_resolve``) and counts the jobs with one
streaming pass (``expand``). Every problem found on the way is collected and raised
together as one ``UsageError`` (exit 2): nothing is written, nothing is sent. The format
is described in ``docs/manifest.md``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from batchgen.errors import Problem, UsageError
from batchgen.expand import Counts, ExpandedJob, Spec, count, expand
from batchgen.manifest_models import Limits, Manifest
from batchgen.manifest_resolve import (
    IMAGE,
    Context,
    Resolver,
    did_you_mean,
    template_variables,
)
from batchgen.manifest_shape import check_shape
from batchgen.manifest_yaml import load_yaml
from batchgen.modelspec import known_models, load_model
from batchgen.naming import TemplateError, check_template

__all__ = ["ExpandedJob", "LoadedManifest", "Overrides", "load_manifest"]

DEFAULT_MAX_JOBS = 100_000
DEFAULT_SETTINGS: dict[str, Any] = {
    "rate": [20, 10.0],
    "concurrency": 10,
    "budget_usd": None,
    "max_attempts": 5,
}


@dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line values that beat the manifest."""

    out_dir: Path | None = None
    rate: tuple[int, float] | None = None
    concurrency: int | None = None
    budget_usd: float | None = None
    max_attempts: int | None = None
    max_jobs: int | None = None  # None: 100_000


@dataclass
class LoadedManifest:
    """A checked manifest. ``job_count``, ``collapsed``, ``excluded`` and ``warnings``
    need one pass over the combinations: it runs on first access, or comes free with a
    complete ``jobs()`` pass, whichever is first."""

    path: Path  # absolute
    sha256: str  # of the manifest file's bytes
    name: str  # date template applied
    model: str
    out_dir: Path  # absolute, date template applied
    filename_template: str
    settings: dict[str, Any]  # rate [n, seconds], concurrency, budget_usd, max_attempts
    run_date: dt.date
    axes: dict[str, list[str]]  # axis -> value labels, in order (for `plan`)
    spec: Spec = field(repr=False, compare=False)
    notes: list[str] = field(default_factory=list)  # warnings known without counting
    _counts: Counts | None = field(default=None, repr=False, compare=False)

    def counts(self) -> Counts:
        if self._counts is None:
            self._counts = count(self.spec)
        return self._counts

    @property
    def job_count(self) -> int:
        """Jobs after excludes, includes, repeat and de-duplication."""
        return self.counts().jobs

    @property
    def collapsed(self) -> int:
        """Identical combinations folded into one job."""
        return self.counts().collapsed

    @property
    def excluded(self) -> int:
        """Matrix combinations dropped by ``exclude``."""
        return self.counts().excluded

    @property
    def warnings(self) -> list[str]:
        out = list(self.notes)
        if self.collapsed:
            out.append(
                f"{self.collapsed} combination(s) collapsed into identical jobs (the same "
                "model input: a value written twice, a variable the prompt does not use, "
                "or an include the matrix already has)"
            )
        return out

    def jobs(self) -> Iterator[ExpandedJob]:
        """Stream the jobs in their deterministic order; may be called again."""
        tally = Counts()
        yield from expand(self.spec, tally)
        self._counts = tally


def load_manifest(
    path: Path, *, date: dt.date | None = None, overrides: Overrides | None = None
) -> LoadedManifest:
    """Load and check ``path``; raises ``UsageError`` listing every problem (exit 2)."""
    path = Path(path).absolute()
    over = overrides or Overrides()
    run_date = date or dt.date.today()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = (
            "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read: {exc}"
        )
        raise UsageError(
            [Problem(str(path), f"manifest {reason}", fix="check the path of the manifest")]
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(
            [Problem(str(path), "manifest is not UTF-8 text", fix="save it as UTF-8")]
        ) from None
    data, pos, problems = load_yaml(path, text)
    ctx = Context(path, pos, problems)
    if problems and data is None:  # malformed: nothing more can be checked
        _fail(ctx)
    manifest, partial = check_shape(data, ctx)
    if manifest is None:
        _fail(ctx)
    spec_model = _model(manifest, ctx)
    name = _dated(ctx, "name", manifest.name or path.stem, run_date, {})
    out_text = _dated(ctx, "out_dir", manifest.out_dir, run_date, {"batch": name})
    settings = _settings(manifest.limits, over, ctx)
    if spec_model is None:
        _fail(ctx)
    resolver = Resolver(ctx, manifest, spec_model, partial=partial)
    spec = _spec(resolver, manifest)
    max_jobs = over.max_jobs if over.max_jobs is not None else DEFAULT_MAX_JOBS
    if not partial and spec.upper_bound() > max_jobs:
        _too_many(ctx, spec, max_jobs)
    if ctx.problems:
        _fail(ctx)
    out_dir = Path(
        os.path.normpath(over.out_dir.absolute() if over.out_dir else path.parent / out_text)
    )
    return LoadedManifest(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        name=name,
        model=manifest.model,
        out_dir=out_dir,
        filename_template=manifest.filename,
        settings=settings,
        run_date=run_date,
        axes=_axis_labels(spec),
        spec=spec,
    )


def _fail(ctx: Context) -> NoReturn:
    def order(p: Problem) -> tuple[bool, str, int, int]:
        return (p.file != str(ctx.file), p.file, p.line or 0, p.column or 0)

    raise UsageError(sorted(ctx.problems, key=order))


def _model(manifest: Manifest, ctx: Context) -> Any:
    known = known_models()
    if manifest.model not in known:
        ctx.add(
            ("model",),
            f"unknown model {manifest.model!r}{did_you_mean(manifest.model, known)}",
            f"use one of: {', '.join(known)}",
        )
        return None
    return load_model(manifest.model)


def _dated(ctx: Context, key: str, text: str, run_date: dt.date, extra: dict[str, str]) -> str:
    allowed = {"date", *extra}
    try:
        for _lit, fname, _spec, _conv in string.Formatter().parse(text):
            if fname is not None and fname not in allowed:
                raise ValueError(f"unknown field {{{fname}}}")
        return text.format(date=run_date, **extra)
    except (ValueError, KeyError, IndexError) as exc:
        ctx.add(
            (key,),
            f"{key} {text!r}: {exc}",
            "only "
            + ", ".join(f"{{{a}}}" for a in sorted(allowed))
            + " may appear, e.g. {date:%Y-%m-%d}; write {{ and }} for literal braces",
        )
        return text


_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(s|sec|seconds?|m|min)?\s*")


def _settings(limits: Limits, over: Overrides, ctx: Context) -> dict[str, Any]:
    settings = dict(DEFAULT_SETTINGS)
    if limits.rate is not None:
        m = _RATE.fullmatch(limits.rate)
        if not m or int(m.group(1)) < 1 or float(m.group(2)) <= 0:
            ctx.add(
                ("limits", "rate"),
                f"limits.rate {limits.rate!r} is not a rate",
                "write REQUESTS/SECONDS, e.g. 20/10s",
            )
        else:
            unit = 60 if (m.group(3) or "s").startswith("m") else 1
            settings["rate"] = [int(m.group(1)), float(m.group(2)) * unit]
    for name in ("concurrency", "budget_usd", "max_attempts"):
        value = getattr(limits, name)
        if value is not None:
            settings[name] = float(value) if name == "budget_usd" else value
    if over.rate is not None:
        settings["rate"] = [int(over.rate[0]), float(over.rate[1])]
    for name in ("concurrency", "budget_usd", "max_attempts"):
        value = getattr(over, name)
        if value is not None:
            settings[name] = value
    return settings


def _spec(r: Resolver, m: Manifest) -> Spec:
    r.check_images_mapping()
    base, base_vars, base_labels = r.base()
    axes = r.axes()
    includes = r.includes()
    provides: dict[str, list[str]] = {}  # name -> axes that set it
    for axis in axes:
        set_here = {n for c in axis.choices for n in (*c.labels, *c.fields)}
        for n in {"image_urls" if n == IMAGE else n for n in set_here}:
            provides.setdefault(n, []).append(axis.name)
    for n, where in provides.items():
        if len(where) > 1:
            r.ctx.add(
                ("matrix",),
                f"{n!r} is set by more than one axis ({', '.join(where)})",
                "set each input or variable in one place only",
            )
    # Every job carries every variable (and ``image``) label, "" where it has none, so a
    # file name template can use them; model inputs fall back to the input value.
    names: dict[str, None] = dict.fromkeys(base_labels)
    for choice in [c for a in axes for c in a.choices] + includes:
        names.update(dict.fromkeys(choice.labels))
    label_names = list(names)
    padded = [n for n in label_names if n not in r.props]
    everywhere = set(base_vars)
    for axis in axes:
        if axis.choices:
            everywhere |= set.intersection(*(set(c.variables) for c in axis.choices))
    if not r.partial:
        _check_templates(r, m, base, base_vars, axes, includes, everywhere)
        fields = {*label_names, *r.props}
        try:
            check_template(m.filename, fields)
        except TemplateError as exc:
            r.ctx.add(("filename",), str(exc), "use only the fields listed")
    known = {*label_names, *r.props, IMAGE}
    return Spec(
        model=m.model,
        base=base,
        base_variables=base_vars,
        base_labels=base_labels,
        axes=axes,
        excludes=r.excludes(known),
        includes=includes,
        repeat=m.repeat,
        label_names=padded,
    )


def _check_templates(
    r: Resolver,
    m: Manifest,
    base: dict[str, Any],
    base_vars: dict[str, str],
    axes: list[Any],
    includes: list[Any],
    everywhere: set[str],
) -> None:
    used: set[str] = set()
    templates = list(r.templates)
    blankable = {n for n, v in base_vars.items() if not v.strip()}
    for axis in axes:
        for choice in axis.choices:
            blankable.update(n for n, v in choice.variables.items() if not v.strip())
    for template, where, scope in templates:
        try:
            names = template_variables(template)
        except ValueError as exc:
            r.ctx.add(
                where, f"prompt template {template!r}: {exc}", "write {{ and }} for literal braces"
            )
            continue
        used.update(names)
        blank = {n: "" for n in names}
        if not template.format_map(blank).strip() and all(n in blankable for n in names):
            r.ctx.add(
                where,
                f"prompt template {template!r} renders empty when "
                + " and ".join(f"{{{n}}}" for n in names)
                + " are empty, and they can be",
                "give the template some fixed text, or remove the empty values",
            )
        if scope.startswith("include "):
            inc = r.included.get(int(scope.split()[1]))
            have = set(base_vars) | set(inc.variables if inc else everywhere)
        else:
            have = everywhere
        for name in names:
            if name not in have:
                r.ctx.add(
                    where,
                    f"prompt template variable {{{name}}} has no values",
                    f"add a matrix axis `{name}: [...]`, a rows column or a defaults value",
                )
    prompt_axes = [
        a for a in axes if a.name == "prompt" or all("prompt" in c.fields for c in a.choices)
    ]
    if "prompt" not in base and not prompt_axes:
        r.ctx.add(
            ("matrix",) if m.matrix else (),
            "no prompt: every job needs one",
            "add defaults.prompt, a matrix prompt axis, or a prompt column in rows",
        )
    for i, inc in r.included.items():
        if "prompt" not in inc.fields and "prompt" not in base:
            r.ctx.add(("include", i), f"include[{i}] has no prompt", "give it a prompt")
    defined: list[tuple[tuple[str | int, ...], str]] = [(("defaults", n), n) for n in base_vars]
    defined += [
        (("matrix", a.name), a.name) for a in axes if a.name in m.matrix and a.name not in r.inputs
    ]
    defined += [(("include", i, n), n) for i, inc in r.included.items() for n in inc.variables]
    for where, name in defined:
        if name not in used:
            r.ctx.add(
                where,
                f"{name!r} is not a model input and no prompt template uses it"
                + did_you_mean(name, r.inputs | used),
                f"use it in a prompt as {{{name}}}, or remove it; model inputs are: "
                + ", ".join(sorted(r.inputs)),
                key=True,
            )


def _too_many(ctx: Context, spec: Spec, max_jobs: int) -> None:
    sizes = " x ".join(f"{len(a.choices)} {a.name}" for a in spec.axes) or "1"
    extra = f" + {len(spec.includes)} includes" if spec.includes else ""
    rep = f", x {spec.repeat} repeats" if spec.repeat > 1 else ""
    ctx.add(
        ("matrix",),
        f"the manifest makes up to {spec.upper_bound():,} jobs ({sizes}{extra}{rep}), "
        f"over the limit of {max_jobs:,}",
        f"shrink the matrix, or raise the limit on the command line: --max-jobs "
        f"{spec.upper_bound()}",
    )


def _axis_labels(spec: Spec) -> dict[str, list[str]]:
    seen: dict[str, dict[str, None]] = {}  # ordered sets
    for axis in spec.axes:
        for choice in axis.choices:
            for name, label in choice.labels.items():
                seen.setdefault(name, {})[label] = None
    return {name: list(labels) for name, labels in seen.items()}
