"""The tree drawn in ``batchgen.errors``'s docstring is the real one, and has one root."""

from __future__ import annotations

import importlib
import re

import batchgen.errors as errors

_LINE = re.compile(r"^(?P<indent>[ │]*)(?P<branch>[├└]── )?(?P<name>[A-Z]\w+)(?P<rest>.*)$")


def _drawn() -> list[tuple[int, type[BaseException]]]:
    """(depth, class) for each line of the drawing, the class found where it says."""
    doc = errors.__doc__ or ""
    block = doc.split("::", 1)[1].split("\n\n")[1]
    out = []
    for line in block.splitlines():
        match = _LINE.match(line[4:])
        if match is None:  # a description carried onto the next line
            assert re.match(r"^[ │]+[a-z]", line[4:]), line
            continue
        module = re.search(r"\((batchgen\.[\w.]+)\)", match["rest"])
        where = importlib.import_module(module[1]) if module else errors
        depth = len(match["indent"]) // 4 + (1 if match["branch"] else 0)
        out.append((depth, getattr(where, match["name"])))
    return out


def test_every_class_drawn_is_a_child_of_the_one_above_it() -> None:
    drawn = _drawn()
    assert drawn[0] == (0, errors.BatchgenError)
    parents: dict[int, type[BaseException]] = {}
    for depth, cls in drawn:
        parents[depth] = cls
        if depth:
            assert parents[depth - 1] in cls.__bases__, (cls, parents[depth - 1])


def test_every_error_class_of_the_module_is_drawn() -> None:
    drawn = {cls for _depth, cls in _drawn()}
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }
    assert defined <= drawn


def test_the_input_errors_still_are_value_errors() -> None:
    for _depth, cls in _drawn():
        if issubclass(cls, errors.InputError):
            assert issubclass(cls, ValueError)
