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
from batchgen.manifest.context import Context, did_you_mean
from batchgen.manifest.expand import Counts, ExpandedJob, Spec, count, expand
from batchgen.manifest.expand import keys as expand_keys
from batchgen.manifest.models import Limits, Manifest
from batchgen.manifest.parse import load_yaml
from batchgen.manifest.resolve import Resolver
from batchgen.manifest.safefile import FileRefused, read_regular
from batchgen.manifest.shape import check_shape
from batchgen.manifest.spec import axis_labels, build_spec, too_many, too_many_excludes
from batchgen.runbase.models import known_models, load_model
from batchgen.runbase.ratelimit import rate_from_text
from batchgen.settings import CommandLine, resolve_settings
from batchgen.textsafe import describe, invisible_at, printable, reveal

#: the path separators a batch name may not contain (nor what ``invisible_at`` finds)
_SEPARATOR = re.compile(r"[/\\]")

__all__ = ["ExpandedJob", "LoadedManifest", "Overrides", "load_manifest"]

DEFAULT_MAX_JOBS = 100_000
#: the highest job limit ``--max-jobs`` may set: counting the jobs of a manifest takes
#: about 10 s per million, so a larger batch is better split into several manifests
MAX_MAX_JOBS = 10_000_000
#: the largest manifest read (long lists belong in values files, which may be larger)
MAX_MANIFEST_BYTES = 1024 * 1024


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
    #: what the batch stores (``Settings.to_batch``): the overrides over the manifest's
    #: ``limits:`` over the defaults (rate [n, seconds], concurrency, budget_usd, max_attempts)
    settings: dict[str, Any]
    run_date: dt.date
    axes: dict[str, list[str]]  # axis -> value labels, in order (for `plan`)
    spec: Spec = field(repr=False, compare=False)
    notes: list[str] = field(default_factory=list)  # warnings known without counting
    sources: tuple[Path, ...] = ()  # the files it names: values, rows, local images
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
        counts = self.counts()
        for i in range(len(self.spec.excludes)):
            if not counts.rules_hit >> i & 1:
                out.append(f"exclude[{i}] matches no combination (a misspelt value?)")
        if counts.jobs == 0:
            out.append("the manifest makes no jobs: every combination is excluded")
        if self.collapsed:
            out.append(
                f"{self.collapsed} combination(s) collapsed into identical jobs (the same "
                "model input: a value written twice, a variable the prompt does not use, "
                "or an include the matrix already has)"
            )
        return out

    def keys(self) -> Iterator[str]:
        """Only the keys of ``jobs()``, in the same order (no mapping is built: faster)."""
        return expand_keys(self.spec)

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
    max_jobs = over.max_jobs if over.max_jobs is not None else DEFAULT_MAX_JOBS
    if max_jobs > MAX_MAX_JOBS:
        raise UsageError(
            [
                Problem(
                    "<command line>",
                    f"--max-jobs {max_jobs:,} is over the highest limit, {MAX_MAX_JOBS:,}",
                    fix=f"split the batch into manifests of at most {MAX_MAX_JOBS:,} jobs",
                )
            ]
        )
    raw, text = _read(path)
    data, pos, problems = load_yaml(path, text)
    ctx = Context(path, pos, problems)
    if problems and data is None:  # malformed: nothing more can be checked
        _fail(ctx)
    manifest, partial = check_shape(data, ctx)
    if manifest is None:
        _fail(ctx)
    spec_model = _model(manifest, ctx)
    name = _dated(ctx, "name", manifest.name or path.stem, run_date, {})
    _check_name(ctx, name, written=manifest.name is not None)
    _check_template(ctx, manifest.filename)
    out_text = _dated(ctx, "out_dir", manifest.out_dir, run_date, {"batch": name})
    settings = _settings(manifest.limits, over, ctx)
    if spec_model is None:
        _fail(ctx)
    resolver = Resolver(ctx, manifest, spec_model, partial=partial)
    resolver.max_values = max_jobs
    spec = build_spec(resolver, manifest)
    if not partial and spec.upper_bound() > max_jobs:
        too_many(ctx, spec, max_jobs)
    too_many_excludes(ctx, spec)
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
        axes=axis_labels(spec),
        spec=spec,
        notes=resolver.notes,
        sources=tuple(dict.fromkeys(resolver.sources)),
    )


def named_files(path: Path | str, run_date: str | None = None) -> tuple[Path, ...]:
    """The files a stored batch's manifest names now (values, rows, local images), so
    that no output replaces one; () when the manifest no longer loads."""
    try:
        date = dt.date.fromisoformat(run_date) if run_date else None
        return load_manifest(Path(path), date=date).sources
    except (UsageError, OSError, ValueError):
        return ()


def _read(path: Path) -> tuple[bytes, str]:
    """The manifest's bytes and text; only a regular file of at most ``MAX_MANIFEST_BYTES``
    of UTF-8 (a byte-order mark is dropped)."""
    try:
        raw = read_regular(path, "manifest", MAX_MANIFEST_BYTES)
    except FileRefused as exc:
        fix = exc.fix
        if "over the limit" in exc.reason:
            fix += "; long lists of values belong in files: {file: values.txt}, rows: a.csv"
        raise UsageError([Problem(str(path), f"manifest {exc.reason}", fix=fix)]) from None
    try:
        return raw, raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UsageError(
            [
                Problem(
                    str(path),
                    f"manifest is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                    f"{exc.start:,}; is this a binary file?)",
                    line,
                    column,
                    fix="save it as UTF-8",
                )
            ]
        ) from None


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


def _check_name(ctx: Context, name: str, *, written: bool) -> None:
    """A batch name is one folder name (``videos/{batch}``) and is printed everywhere:
    no separators, no control or invisible characters (``batchgen.textsafe``: a name
    that looks like another is found by neither ``status`` nor a reader), not ``.`` or
    ``..``. Refused rather than cleaned: renaming an existing batch's folder silently
    would orphan its videos."""
    sep = _SEPARATOR.search(name)
    hidden = invisible_at(name)
    if sep is None and hidden is None and name.strip() not in ("", ".", ".."):
        return
    if hidden is not None and (sep is None or hidden < sep.start()):
        why = f"contains {_unseen(name, hidden)}"
    elif sep is not None:
        why = f"contains {sep.group()!r} (a path separator)"
    else:
        why = "is empty or a dot folder name"
    where = "name" if written else "the manifest's file name (the default batch name)"
    ctx.add(
        ("name",),
        f"batch name {reveal(repr(name))} {why}: it names the output folder "
        "videos/{batch} and is printed in every message",
        f"set {where} to a name without '/', '\\', control or invisible characters "
        "(retype it rather than paste it), e.g. name: animals-{date:%Y-%m-%d}",
    )


def _check_template(ctx: Context, template: str) -> None:
    """The file-name template is a name a user writes too: no invisible character in it
    (``naming`` drops format characters from every stem, but a template holding one is
    a paste gone wrong; the labels it takes are values, and keep theirs)."""
    hidden = invisible_at(template)
    if hidden is None:
        return
    ctx.add(
        ("filename",),
        f"file name template {reveal(repr(template))} contains {_unseen(template, hidden)}",
        "retype the template without it",
    )


def _unseen(text: str, index: int) -> str:
    """``U+200B ZERO WIDTH SPACE (character 6, invisible)``, for a problem."""
    char = text[index]
    kind = "a control character" if printable(char) != char else "invisible"
    return f"{describe(char)} (character {index + 1}, {kind})"


def _settings(limits: Limits, over: Overrides, ctx: Context) -> dict[str, Any]:
    """What the batch stores: the overrides over ``limits:`` (``batchgen.settings``)."""
    written: dict[str, Any] = {}
    if limits.rate is not None:
        rate = rate_from_text(limits.rate)
        if rate is None:
            ctx.add(
                ("limits", "rate"),
                f"limits.rate {limits.rate!r} is not a rate",
                "write REQUESTS/SECONDS, e.g. 20/10s",
            )
        else:
            written["rate"] = [rate[0], rate[1]]
    for name in ("concurrency", "budget_usd", "max_attempts"):
        value = getattr(limits, name)
        if value is not None:
            written[name] = float(value) if name == "budget_usd" else value
    given = CommandLine(
        rate=over.rate,
        concurrency=over.concurrency,
        budget_usd=over.budget_usd,
        max_attempts=over.max_attempts,
    )
    return resolve_settings(given, manifest=written).to_batch()
