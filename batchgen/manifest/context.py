"""What every check of a manifest shares: where a value was written (``Where``), the
problems found so far (``Context``), and the small helpers that name things in a
problem (``dotted``, ``did_you_mean``) or read a prompt template.

The shape check (``shape``), the resolver (``resolve``) and the spec builder (``spec``)
all report through one ``Context``, so a manifest's every problem comes out at once.
"""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.errors import Problem
from batchgen.manifest.parse import Positions, YamlPath

#: a plain name: a template variable, an axis, a column
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: where a value was written: a YAML path in the manifest, or (file, line) of a values file
Where = YamlPath | tuple[Path, int]


def did_you_mean(name: str, options: list[str] | set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class Context:
    """The manifest being resolved and the problems found so far."""

    file: Path
    pos: Positions
    problems: list[Problem] = field(default_factory=list)

    def add(
        self, where: Where | None, message: str, fix: str | None = None, *, key: bool = False
    ) -> None:
        if where and isinstance(where[0], Path):
            self.problems.append(Problem(str(where[0]), message, int(where[1]), None, fix))
            return
        line, col = self.pos.of(tuple(where or ()), key=key)
        self.problems.append(Problem(str(self.file), message, line, col, fix))


def dotted(where: Where) -> str:
    if where and isinstance(where[0], Path):
        return f"{where[0].name} line {where[1]}"
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{" in value or "}" in value)


def template_variables(template: str) -> list[str]:
    """The variable names of a prompt template; ValueError for a malformed one."""
    names = []
    for _lit, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not IDENT.match(name) or spec or conversion:
            raise ValueError(f"{{{name}}} must be a plain name such as {{subject}}")
        names.append(name)
    return names
