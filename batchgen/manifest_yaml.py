"""Read a YAML file into plain data, remembering where every key and value sits.

PyYAML's own constructor forgets positions, so the node tree is walked here and each
path (``("matrix", "aspect_ratio", 1)``) is mapped to its 1-based line and column.

Two deliberate departures from YAML 1.1 as PyYAML implements it:

- ``16:9`` stays the string ``"16:9"``. YAML 1.1 reads unquoted ``16:9`` as the
  base-60 integer 969, which is never what a manifest means.
- A key written twice in one mapping is a problem, not a silent "last one wins".
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

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
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
    loader = _Loader(text)
    try:
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
    except yaml.YAMLError as exc:
        problems.append(Problem(file=str(path), message=f"malformed YAML: {exc}"))
        return None, pos, problems
    finally:
        loader.dispose()
    return data, pos, problems


def _mark(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


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
        return loader.construct_object(node, deep=True)
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
            key = loader.construct_object(key_node, deep=True)
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
