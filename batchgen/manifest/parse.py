"""Read a YAML file into plain data, remembering where every key and value sits.

PyYAML's own constructor forgets positions, so the node tree is walked here and each
path (``("matrix", "aspect_ratio", 1)``) is mapped to its 1-based line and column.

Two deliberate departures from YAML 1.1 as PyYAML implements it:

- ``16:9`` stays the string ``"16:9"``. YAML 1.1 reads unquoted ``16:9`` as the
  base-60 integer 969, which is never what a manifest means.
- A key written twice in one mapping is a problem, not a silent "last one wins".

Bounded work whatever the text: before any node is composed, one pass over the
parser's event stream (flat, no recursion) measures the nesting depth and the number
of nodes *after alias expansion* (an anchored node's expanded size is remembered, so an
alias costs one addition: a "billion laughs" alias bomb is counted, never built). Past
``MAX_DEPTH`` or ``MAX_NODES`` the manifest is refused, naming the limit and the place.
Control characters YAML does not allow are reported with their line and column.
libyaml's parser is used when PyYAML has it (about 20 times faster).
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from batchgen.errors import Problem

YamlPath = tuple[str | int, ...]

#: deepest nesting of lists and mappings a manifest may have
MAX_DEPTH = 64
#: most YAML nodes (values, lists, mappings) a manifest may have, aliases expanded
MAX_NODES = 100_000

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


# What YAML 1.1 allows in a stream (PyYAML's own reader check), as one search.
_NOT_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
_SafeBase: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeBase):  # type: ignore[valid-type,misc]
    """SafeLoader without the base-60 numbers (``16:9`` -> 969)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


@dataclass
class Positions:
    """Where each value (and each mapping key) of a YAML document was written."""

    values: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)

    def of(self, path: YamlPath, *, key: bool = False) -> tuple[int | None, int | None]:
        """The line and column of ``path`` (its key when ``key``), else of the nearest parent."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), (None, None))


def load_yaml(path: Path, text: str) -> tuple[Any, Positions, list[Problem]]:
    """``text`` (the content of ``path``) as data, its positions, and what is wrong with it."""
    problems: list[Problem] = []
    pos = Positions()
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        line, column = _line_column(text, bad.start())
        problems.append(
            Problem(
                str(path),
                f"the manifest contains the control character U+{ord(bad.group()):04X}, "
                "which YAML does not allow (is this a binary file?)",
                line,
                column,
                'remove it, or write it as an escape inside double quotes, e.g. "\\t"',
            )
        )
        return None, pos, problems
    loader: _Loader | None = None
    try:
        over = _over_limits(text)
        if over is not None:
            message, (line, column), fix = over
            problems.append(Problem(str(path), message, line, column, fix))
            return None, pos, problems
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None, pos, problems
        data = _build(loader, node, (), pos, problems, str(path))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        problems.append(
            Problem(
                file=str(path),
                message=f"malformed YAML: {message}",
                line=mark.line + 1 if mark else None,
                column=mark.column + 1 if mark else None,
                fix="check the indentation and quoting around this place "
                "(values with ': ', '#', '{' or '[' need quotes)",
            )
        )
        return None, pos, problems
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        problems.append(Problem(file=str(path), message=f"malformed YAML: {exc}"))
        return None, pos, problems
    finally:
        if loader is not None:
            loader.dispose()
    return data, pos, problems


def _line_column(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _over_limits(text: str) -> tuple[str, tuple[int, int], str] | None:
    """Check depth and expanded size on the event stream, before anything is built:
    ``(message, (line, column), fix)`` of the first limit passed, else None."""
    depth = 0
    total = 0
    starts: list[tuple[int, str | None]] = []  # (``total`` before, anchor) of open ones
    anchors: dict[str, int] = {}  # anchor -> expanded node count of its node
    events = yaml.parse(text, Loader=_Loader)
    while True:
        try:
            event = next(events, None)
        except yaml.MarkedYAMLError as exc:
            # libyaml's scanner reads ahead and stops at 1,000 levels on its own
            if "nesting depth" not in str(exc.problem) or exc.problem_mark is None:
                raise
            return _too_deep((exc.problem_mark.line + 1, exc.problem_mark.column + 1))
        if event is None:
            return None
        if isinstance(event, yaml.AliasEvent):
            total += anchors.get(event.anchor or "", 1)
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor:
                anchors[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            total += 1
            starts.append((total - 1, event.anchor))
            depth += 1
            if depth > MAX_DEPTH:
                return _too_deep(_event_place(event))
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            begun, anchor = starts.pop()
            if anchor:
                anchors[anchor] = total - begun
        if total > MAX_NODES:
            return (
                f"the manifest has more than {MAX_NODES:,} YAML nodes (values, lists and "
                f"mappings) once its aliases are expanded (the limit is {MAX_NODES:,}; "
                "nested aliases multiply)",
                _event_place(event),
                "write long lists of values in a file ({file: values.txt}, or rows: "
                "a .csv file) and do not nest aliases",
            )


def _too_deep(place: tuple[int, int]) -> tuple[str, tuple[int, int], str]:
    return (
        f"the manifest nests lists and mappings more than {MAX_DEPTH} levels deep "
        f"(the limit is {MAX_DEPTH})",
        place,
        "a manifest needs a few levels; flatten it",
    )


def _event_place(event: yaml.Event) -> tuple[int, int]:
    mark = event.start_mark
    return (mark.line + 1, mark.column + 1) if mark else (0, 0)


def _mark(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _construct(loader: _Loader, node: Node) -> Any:
    """A node's value; a value YAML can write but Python cannot hold (an integer of
    thousands of digits, the 13th month) is a problem at its place."""
    try:
        return loader.construct_object(node, deep=True)
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(
            None, None, f"{str(node.value)[:40]!r} cannot be read: {exc}", node.start_mark
        ) from None


def _build(
    loader: _Loader,
    node: Node,
    path: YamlPath,
    pos: Positions,
    problems: list[Problem],
    file: str,
) -> Any:
    pos.values[path] = _mark(node)
    if isinstance(node, ScalarNode):
        return _construct(loader, node)
    if isinstance(node, SequenceNode):
        return [
            _build(loader, child, (*path, i), pos, problems, file)
            for i, child in enumerate(node.value)
        ]
    if isinstance(node, MappingNode):
        explicit = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)  # resolves "<<" merge keys: merged pairs come first
        first_explicit = len(node.value) - explicit
        merged: set[str] = set()
        out: dict[Any, Any] = {}
        for i, (key_node, value_node) in enumerate(node.value):
            line, col = _mark(key_node)
            key = _construct(loader, key_node)
            if not isinstance(key, Hashable) or isinstance(key, list | dict):
                problems.append(
                    Problem(file, "a mapping key must be a plain word", line, col, "write a name")
                )
                continue
            if not isinstance(key, str):
                key = str(key)
            if key in merged:
                # Merged values ("<<") give way to later merges and to explicit keys.
                merged.discard(key)
                out.pop(key, None)
            if i < first_explicit:
                merged.add(key)
            if key in out:
                first = pos.keys[(*path, key)]
                problems.append(
                    Problem(
                        file,
                        f"key {key!r} is written twice in this mapping (first on line {first[0]})",
                        line,
                        col,
                        "keep only one of them",
                    )
                )
                continue
            pos.keys[(*path, key)] = (line, col)
            out[key] = _build(loader, value_node, (*path, key), pos, problems, file)
        return out
    return loader.construct_object(node, deep=True)  # pragma: no cover - no other node kinds
