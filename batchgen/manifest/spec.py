"""From a resolved manifest to the expansion ``Spec``, with the checks that need the
whole manifest: prompt templates and their variables, unused variables, names set by
two axes, the file-name template, and the size limit.
"""

from __future__ import annotations

from typing import Any

from batchgen.manifest.context import Context, Where, did_you_mean, template_variables
from batchgen.manifest.expand import Axis, Spec
from batchgen.manifest.models import Manifest
from batchgen.manifest.naming import TemplateError, check_template, template_fields
from batchgen.manifest.resolve import IMAGE, Resolver


def build_spec(r: Resolver, m: Manifest) -> Spec:
    """The expansion spec of ``m``; problems go to ``r.ctx``."""
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
    everywhere = set(base_vars) | r.unread
    for axis in axes:
        if axis.choices:
            everywhere |= set.intersection(*(set(c.variables) for c in axis.choices))
    if not r.partial:
        used = _check_templates(r, m, base, base_vars, axes, includes, everywhere)
        fields = {*label_names, *r.props, *r.unread}
        try:
            check_template(m.filename, fields)
        except TemplateError as exc:
            r.ctx.add(("filename",), str(exc), "use only the fields listed")
        else:
            _note_idle_columns(r, m, axes, used)
    known = {*label_names, *r.props, IMAGE, *r.unread}
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
) -> set[str]:
    """Check every prompt template; return the variables the templates use."""
    used: set[str] = set()
    blankable = {n for n, v in base_vars.items() if not v.strip()}
    for axis in axes:
        for choice in axis.choices:
            blankable.update(n for n, v in choice.variables.items() if not v.strip())
    for template, where, scope in list(r.templates):
        if scope.startswith("include "):
            inc = r.included.get(int(scope.split()[1]))
            have = set(base_vars) | set(inc.variables if inc else everywhere)
        else:
            have = everywhere
        used.update(_check_template(r, template, where, blankable, have))
    _check_required(r, m, base, axes)
    _check_unused(r, m, base_vars, axes, used)
    return used


def _check_template(
    r: Resolver, template: str, where: Where, blankable: set[str], have: set[str]
) -> list[str]:
    """One prompt template: it parses, cannot render empty, and each variable has values
    (``have``). Returns its variables (none when it does not parse)."""
    try:
        names = template_variables(template)
    except ValueError as exc:
        r.ctx.add(
            where, f"prompt template {template!r}: {exc}", "write {{ and }} for literal braces"
        )
        return []
    blank = {n: "" for n in names}
    if not template.format_map(blank).strip() and all(n in blankable for n in names):
        r.ctx.add(
            where,
            f"prompt template {template!r} renders empty when "
            + " and ".join(f"{{{n}}}" for n in names)
            + " are empty, and they can be",
            "give the template some fixed text, or remove the empty values",
        )
    for name in names:
        if name not in have:
            r.ctx.add(
                where,
                f"prompt template variable {{{name}}} has no values",
                f"add a matrix axis `{name}: [...]`, a rows column or a defaults value",
            )
    return names


def _check_required(r: Resolver, m: Manifest, base: dict[str, Any], axes: list[Any]) -> None:
    """Inputs the model requires (Seedance: the prompt) must reach every job."""
    for need in r.model.input_schema.get("required", []):
        from_axis = [a for a in axes if a.name == need or all(need in c.fields for c in a.choices)]
        # an axis the matrix names but that has no good value has its own problem
        if need not in base and not from_axis and need not in m.matrix:
            r.ctx.add(
                ("matrix",) if m.matrix else (),
                f"no {need}: every job needs one",
                f"add defaults.{need}, a matrix {need} axis, or a {need} column in rows",
            )
        for i, inc in r.included.items():
            if need not in inc.fields and need not in base:
                r.ctx.add(("include", i), f"include[{i}] has no {need}", f"give it a {need}")


def _check_unused(
    r: Resolver, m: Manifest, base_vars: dict[str, str], axes: list[Any], used: set[str]
) -> None:
    """A name that is no model input must be a variable some prompt template uses."""
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


def _note_idle_columns(r: Resolver, m: Manifest, axes: list[Axis], used: set[str]) -> None:
    # A rows column may only label jobs (an id for file names), so it is not an error
    # like an unused matrix axis; but a column no one reads is most likely a typo.
    in_name = set(template_fields(m.filename))
    for axis in axes:
        if axis.name != "rows":
            continue
        columns = dict.fromkeys(n for c in axis.choices for n in c.variables)
        for name in columns:
            if name not in used and name not in in_name:
                r.notes.append(
                    f"rows column {name!r} is no model input, no prompt uses it and the "
                    f"file name does not show it{did_you_mean(name, r.inputs)}"
                )


#: exclude rules x axis values: each rule is checked against each value once, before the
#: expansion; past this a manifest would take seconds to minutes to check
MAX_EXCLUDE_CHECKS = 1_000_000


def too_many_excludes(ctx: Context, spec: Spec) -> None:
    values = sum(len(a.choices) for a in spec.axes)
    if len(spec.excludes) * values > MAX_EXCLUDE_CHECKS:
        ctx.add(
            ("exclude",),
            f"{len(spec.excludes):,} exclude rules x {values:,} axis values make "
            f"{len(spec.excludes) * values:,} checks, over the limit of {MAX_EXCLUDE_CHECKS:,}",
            "merge exclude rules (a rule's value may be a list: {subject: [a, b, c]}), "
            "or drop the values from the axes instead of excluding them",
        )


def too_many(ctx: Context, spec: Spec, max_jobs: int) -> None:
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


def axis_labels(spec: Spec) -> dict[str, list[str]]:
    seen: dict[str, dict[str, None]] = {}  # ordered sets
    for axis in spec.axes:
        for choice in axis.choices:
            for name, label in choice.labels.items():
                seen.setdefault(name, {})[label] = None
    return {name: list(labels) for name, labels in seen.items()}
