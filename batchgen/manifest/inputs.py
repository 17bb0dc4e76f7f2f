"""One written value against the model's input schema: checked once per distinct value.

The schema's fields are independent, so each field is checked alone against its own
sub-schema, with a validator built once per field; a value seen before gets its earlier
answer (its problem is still reported where it is written again). A local image is
checked as a placeholder ``data:`` URI: its bytes are checked by ``images``.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from batchgen.manifest.context import Context, Where, did_you_mean, dotted
from batchgen.manifest.images import is_remote

_PLACEHOLDER_IMAGE = "data:image/png;base64,"


class InputCheck:
    def __init__(self, ctx: Context, props: dict[str, Any]) -> None:
        self.ctx = ctx
        self.props = props
        self._checked: dict[tuple[str, str], bool] = {}
        self._validators: dict[str, Draft202012Validator] = {}

    def valid(self, name: str, value: Any, where: Where) -> bool:
        """Whether ``value`` may be the input field ``name``; a problem is added when not."""
        probe_value = value
        if name == "image_urls":
            probe_value = [v if is_remote(v) else _PLACEHOLDER_IMAGE for v in value]
        token = (name, json.dumps(probe_value, sort_keys=True))
        if token in self._checked:
            ok = self._checked[token]
            if not ok:
                self._report(name, value, probe_value, where)
            return ok
        ok = self._report(name, value, probe_value, where)
        self._checked[token] = ok
        return ok

    def _report(self, name: str, value: Any, probe: Any, where: Where) -> bool:
        # The schema's fields are independent, so each field is checked alone against
        # its own sub-schema, with a validator built once (not one per value).
        validator = self._validators.get(name)
        if validator is None:
            validator = self._validators[name] = Draft202012Validator(self.props[name])
        found = [f"input.{name}: {e.message}" for e in validator.iter_errors(probe)]
        if not found:
            return True
        enum = self.props[name].get("enum")
        if name == "prompt" and isinstance(value, str) and not value.strip():
            self.ctx.add(
                where,
                f"{dotted(where)}: the prompt is blank",
                "write the prompt's text, or remove this value",
            )
        elif enum is not None:
            self.ctx.add(
                where,
                f"{dotted(where)}: {value!r} is not a valid {name}; allowed: {', '.join(enum)}"
                + did_you_mean(str(value), enum),
                f"use one of: {', '.join(enum)}",
            )
        else:
            self.ctx.add(where, f"{dotted(where)}: {'; '.join(found)}", f"fix the {name}")
        return False
