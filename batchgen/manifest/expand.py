"""The streaming expansion of a resolved manifest into jobs.

``batchgen.manifest.loader`` checks a manifest and resolves it into a ``Spec``: the base
input (model defaults + the manifest's ``defaults``), the axes (each a list of
``Choice``, one value of the axis, which may set several inputs and variables at once),
the excludes, the includes and ``repeat``. Everything here is then pure computation:

- **Order.** ``itertools.product`` over the axes in manifest order (``rows`` first),
  the last axis varying fastest; then the includes; ``repeat`` variants of a
  combination are adjacent. The same manifest always expands in the same order.
- **Identity.** A combination's canonical input is the base input updated by its
  choices, with the prompt template rendered. Its *key form* replaces a local image
  reference by the hash of the image's bytes. ``key = sha256(model NUL key-form JSON
  NUL variant)``, the JSON with sorted keys and no spaces: the same content gives the
  same key in any process, whatever order it was written in, and writing a default
  explicitly changes nothing.
- **Collapse.** Combinations whose key form is equal (a template that ignores a
  variable, a prompt written twice, an include the matrix already has) become one
  job; the first one met keeps its place and labels. The set of seen inputs holds
  16-byte digests, never the inputs.
- **Streaming.** ``jobs()`` is a generator: nothing but the digest set grows with the
  size of the matrix.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from batchgen.manifest.images import key_form

DIGEST_BYTES = 16


@dataclass(frozen=True, slots=True)
class ExpandedJob:
    key: str  # sha256 hex: model + canonical input (+ image bytes) + variant
    idx: int  # position in the deterministic expansion order
    variant: int  # 0 .. repeat-1
    input: dict[str, Any]  # canonical input as stored in job.input_json
    axes: dict[str, str]  # axis / template variable -> value label (job.axes_json)


@dataclass(slots=True)
class Choice:
    """One value of an axis (or one include): the inputs, variables and labels it sets."""

    fields: dict[str, Any]  # model inputs, stored form (the prompt may be a template)
    variables: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # names as written -> label
    #: bit i set: this choice does not contradict exclude i (filled by ``Spec.prepare``)
    mask: int = -1
    #: field -> its ``"name":value`` text in the key form (filled by ``Spec.prepare``)
    frags: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Axis:
    name: str
    choices: list[Choice]


@dataclass
class Spec:
    model: str
    base: dict[str, Any]  # model defaults updated by the manifest's defaults (inputs)
    base_variables: dict[str, str]
    base_labels: dict[str, str]  # the labels ``defaults`` gives (variables, image)
    axes: list[Axis]
    excludes: list[dict[str, frozenset[str]]]
    includes: list[Choice]
    repeat: int = 1
    #: every axis / variable name a job's ``axes`` mapping carries (missing ones: "")
    label_names: list[str] = field(default_factory=list)
    _base_mask: int = -1

    def matrix_size(self) -> int:
        """Combinations of the matrix before excludes (0 when an axis is empty)."""
        return math.prod(len(a.choices) for a in self.axes)

    def upper_bound(self) -> int:
        """Jobs at most: (matrix + includes) x repeat, before excludes and collapse."""
        return (self.matrix_size() + len(self.includes)) * self.repeat

    def prepare(self) -> None:
        """Precompute the key-form JSON pieces of every choice, and which excludes each
        choice is compatible with, as bit masks."""
        for choice in (*(c for a in self.axes for c in a.choices), *self.includes):
            choice.frags = _fragments(choice.fields)
        full = (1 << len(self.excludes)) - 1
        provided: set[str] = set()
        for axis in self.axes:
            for choice in axis.choices:
                choice.mask = full
                provided.update(_names(choice))
        self._base_mask = full
        # Names per choice and per axis, once: the loop below is rules x choices.
        names_of = [[_names(c) for c in a.choices] if self.excludes else [] for a in self.axes]
        owns = [set().union(*names) for names in names_of]
        for i, rule in enumerate(self.excludes):
            bit = 1 << i
            for name, allowed in rule.items():
                if name not in provided and self._base_value(name) not in allowed:
                    self._base_mask &= ~bit
            for axis, own, names_list in zip(self.axes, owns, names_of, strict=True):
                relevant = [(n, allowed) for n, allowed in rule.items() if n in own]
                if relevant:
                    self._exclude_from(axis, names_list, relevant, bit)

    def _exclude_from(
        self,
        axis: Axis,
        names_list: list[set[str]],
        relevant: list[tuple[str, frozenset[str]]],
        bit: int,
    ) -> None:
        """Clear ``bit`` in the mask of each choice of ``axis`` the rule does not match.
        A name this axis sets in some choices only (an empty CSV cell) has the base value
        in the others."""
        for choice, names in zip(axis.choices, names_list, strict=True):
            for name, allowed in relevant:
                value = _choice_value(choice, name) if name in names else None
                if value is None:
                    value = self._base_value(name)
                if value not in allowed:
                    choice.mask &= ~bit
                    break

    def _base_value(self, name: str) -> str:
        return _value_of(name, self.base, self.base_variables, self.base_labels)


@dataclass
class Counts:
    jobs: int = 0
    combinations: int = 0  # distinct combinations (jobs / repeat)
    collapsed: int = 0
    excluded: int = 0
    rules_hit: int = 0  # bit i set: exclude i dropped at least one combination


def _names(choice: Choice) -> set[str]:
    return set(choice.labels) | set(choice.fields) | set(choice.variables)


def _choice_value(choice: Choice, name: str) -> str:
    return _value_of(name, choice.fields, choice.variables, choice.labels)


def _value_of(
    name: str, fields: dict[str, Any], variables: dict[str, str], labels: dict[str, str]
) -> str:
    if name in labels:
        return labels[name]
    if name in variables:
        return variables[name]
    if name == "image" and "image_urls" in fields:
        urls = fields["image_urls"]
        return str(urls[0]) if isinstance(urls, list) and urls else ""
    value = fields.get(name)
    return value if isinstance(value, str) else json.dumps(value)


_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 as is: the same value gives the same text anywhere."""
    return _ENCODE(value)


def job_key(model: str, key_json: str, variant: int) -> str:
    """``sha256(model NUL key-form JSON NUL variant)`` in hex."""
    return hashlib.sha256(f"{model}\x00{key_json}\x00{variant}".encode()).hexdigest()


def _key_input(input_: dict[str, Any]) -> dict[str, Any]:
    urls = input_.get("image_urls")
    if isinstance(urls, list):
        return {**input_, "image_urls": [key_form(u) if isinstance(u, str) else u for u in urls]}
    return input_


def _fragments(fields: dict[str, Any]) -> dict[str, str]:
    # Joined in sorted key order with "," inside "{}", the pieces are exactly
    # canonical_json(key form): the same text, computed once per choice, not per job.
    key = _key_input(fields)
    return {name: f"{_ENCODE(name)}:{_ENCODE(value)}" for name, value in key.items()}


def _picks(spec: Spec, counts: Counts | None) -> Iterator[tuple[Choice, ...]]:
    spec.prepare()
    product = itertools.product(*(axis.choices for axis in spec.axes))
    if spec.excludes:
        base_mask = spec._base_mask
        for picks in product:
            mask = base_mask
            for choice in picks:
                mask &= choice.mask
            if mask:  # some exclude rule matches every part of this combination
                if counts is not None:
                    counts.excluded += 1
                    counts.rules_hit |= mask
                continue
            yield picks
    else:
        yield from product
    for include in spec.includes:
        yield (include,)


def _stream(
    spec: Spec, counts: Counts | None, *, build: bool
) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """``(key-form JSON, input, labels)`` of every combination that survives the
    excludes, then of every include, in order; input and labels stay empty unless
    ``build``."""
    base_labels = dict.fromkeys(spec.label_names, "")
    base_labels.update(spec.base_labels)
    base, base_vars = spec.base, spec.base_variables
    base_frags = _fragments(base)
    empty: dict[str, Any] = {}
    for picks in _picks(spec, counts):
        frags = base_frags.copy()
        template = base.get("prompt")
        for choice in picks:
            frags.update(choice.frags)
            if "prompt" in choice.fields:
                template = choice.fields["prompt"]
        input_ = labels = empty
        if build:
            input_ = base.copy()
            labels = base_labels.copy()
            for choice in picks:
                input_.update(choice.fields)
                labels.update(choice.labels)
        if template.__class__ is str and ("{" in template or "}" in template):
            variables = base_vars.copy()
            for choice in picks:
                variables.update(choice.variables)
            prompt = template.format_map(variables)
            frags["prompt"] = '"prompt":' + _ENCODE(prompt)
            if build:
                input_["prompt"] = prompt
                if "prompt" in labels:
                    labels["prompt"] = prompt
        yield "{" + ",".join([frags[k] for k in sorted(frags)]) + "}", input_, labels


def combinations(
    spec: Spec, counts: Counts | None = None
) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    """``(input, labels)`` of every combination, before collapsing identical ones."""
    for _key_json, input_, labels in _stream(spec, counts, build=True):
        yield input_, labels


def expand(spec: Spec, counts: Counts | None = None) -> Iterator[ExpandedJob]:
    """The jobs of ``spec``, streamed, collapsed and keyed (see the module doc).

    ``counts``, when given, is filled in as the stream goes (complete at its end).
    """
    tally = counts if counts is not None else Counts()
    seen: set[bytes] = set()
    idx = 0
    model, repeat = spec.model, spec.repeat
    sha256 = hashlib.sha256
    for key_json, input_, labels in _stream(spec, tally, build=True):
        # The variant-0 key doubles as the combination's identity: one hash, not two.
        first = sha256(f"{model}\x00{key_json}\x000".encode()).digest()
        digest = first[:DIGEST_BYTES]
        if digest in seen:
            tally.collapsed += 1
            continue
        seen.add(digest)
        tally.combinations += 1
        for variant in range(repeat):
            key = (
                first
                if variant == 0
                else sha256(f"{model}\x00{key_json}\x00{variant}".encode()).digest()
            )
            yield ExpandedJob(
                key=key.hex(),
                idx=idx,
                variant=variant,
                input=input_ if variant == 0 else dict(input_),
                axes=labels,
            )
            idx += 1
    tally.jobs = tally.combinations * repeat


def keys(spec: Spec) -> Iterator[str]:
    """The job keys of ``spec`` in order, as ``expand`` gives them, but faster
    (no input or label mapping is built)."""
    seen: set[bytes] = set()
    model, repeat = spec.model, spec.repeat
    sha256 = hashlib.sha256
    for key_json, _input, _labels in _stream(spec, None, build=False):
        first = sha256(f"{model}\x00{key_json}\x000".encode()).digest()
        if first[:DIGEST_BYTES] in seen:
            continue
        seen.add(first[:DIGEST_BYTES])
        yield first.hex()
        for variant in range(1, repeat):
            yield sha256(f"{model}\x00{key_json}\x00{variant}".encode()).hexdigest()


def count(spec: Spec) -> Counts:
    """Jobs, collapsed and excluded combinations, by one pass that builds no job."""
    counts = Counts()
    seen: set[bytes] = set()
    model = spec.model
    sha256 = hashlib.sha256
    for key_json, _input, _labels in _stream(spec, counts, build=False):
        digest = sha256(f"{model}\x00{key_json}\x000".encode()).digest()[:DIGEST_BYTES]
        if digest in seen:
            counts.collapsed += 1
            continue
        seen.add(digest)
        counts.combinations += 1
    counts.jobs = counts.combinations * spec.repeat
    return counts
