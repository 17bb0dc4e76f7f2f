"""The shape of a manifest, as pydantic models.

These models are the single source of ``schemas/manifest.schema.json``
(``python -m batchgen.manifest.schema_gen``) and the first check a manifest goes through
(types, unknown keys). What depends on the model (allowed values, which names are
model inputs and which are prompt-template variables) is checked afterwards by
``batchgen.manifest.loader`` against ``schemas/models/<model>.json``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from batchgen.runbase.models import DEFAULT_MODEL, load_model
from batchgen.runbase.ratelimit import RATE_PATTERN
from batchgen.settings import MAX_BUDGET_USD

#: one value of an input or a template variable; numbers become text where the model
#: wants text (``duration: 5`` -> ``"5"``)
Scalar = StrictStr | StrictInt | StrictFloat
#: a value of a list-typed input such as ``image_urls``
Value = Scalar | list[StrictStr]

DEFAULT_FILENAME = "{index:05d}"
DEFAULT_OUT_DIR = "videos/{batch}"

_INPUT_DOC = (
    "Model inputs (prompt, aspect_ratio, resolution, duration, image, image_urls) and "
    "prompt-template variables (any other name used as {name} in a prompt)."
)


def _value_hint(prop: dict[str, Any]) -> dict[str, Any]:
    hint = {k: v for k, v in prop.items() if k in ("description", "enum", "type")}
    if prop.get("type") == "array":
        hint["items"] = {"type": "string"}  # local paths too, not only URLs
    enum = prop.get("enum")
    if enum and all(isinstance(v, str) and v.isdigit() for v in enum):
        hint.pop("type", None)
        hint["enum"] = [*enum, *(int(v) for v in enum)]  # duration: 5 is taken as "5"
    return hint


def _input_hints(shape: str) -> dict[str, Any]:
    """Editor hints for the default model's inputs, as ``properties`` of a mapping.

    Only for the JSON Schema (completion and checks while typing); the loader checks
    the manifest's own model, whatever it is."""
    props: dict[str, Any] = load_model(DEFAULT_MODEL).input_schema["properties"]
    one = {name: _value_hint(prop) for name, prop in props.items()}
    one["image"] = {
        "type": "string",
        "description": "One source image, a URL or a local path; sent as image_urls: [it]",
    }
    if shape == "axis":
        return {
            "properties": {
                name: {
                    "anyOf": [
                        {"type": "array", "items": hint, "minItems": 1},
                        {
                            "type": "object",
                            "properties": {"file": {"type": "string"}},
                            "required": ["file"],
                            "additionalProperties": False,
                        },
                    ]
                }
                for name, hint in one.items()
            }
        }
    return {"properties": one}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileRef(_Strict):
    """Axis values read from a file: one value per line (blank lines and # comments skipped)."""

    file: StrictStr = Field(description="Path of a .txt file, relative to the manifest's folder.")


class Limits(_Strict):
    """Per-batch limits; the command line beats each of them."""

    rate: StrictStr | None = Field(
        default=None,
        description="Request limit of the API key, REQUESTS/SECONDS (default 20/10s).",
        pattern=RATE_PATTERN,
        examples=["20/10s"],
    )
    concurrency: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None, description="Most runs in flight at once (default 100)."
    )
    # finite (YAML's .inf and .nan are floats too): the budget is counted in micro-USD
    budget_usd: (
        Annotated[StrictFloat, Field(gt=0, le=MAX_BUDGET_USD)]
        | Annotated[StrictInt, Field(gt=0, le=MAX_BUDGET_USD)]
        | None
    ) = Field(
        default=None, description="Never spend more than this on the batch (default: no cap)."
    )
    max_attempts: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None, description="Paid attempts per job before it fails for good (default 5)."
    )


class Manifest(_Strict):
    """A batch of video generations: a matrix of inputs whose product is the jobs."""

    name: StrictStr | None = Field(
        default=None,
        min_length=1,
        description="Batch name; may use {date:%Y-%m-%d}. Default: the manifest's file name.",
        examples=["nightly-{date:%Y-%m-%d}"],
    )
    model: StrictStr = Field(default=DEFAULT_MODEL, description="Runbase model to run.")
    out_dir: StrictStr = Field(
        default=DEFAULT_OUT_DIR,
        min_length=1,
        description="Output folder, relative to the manifest's folder; may use {batch} and "
        "{date:%Y-%m-%d}.",
    )
    filename: StrictStr = Field(
        default=DEFAULT_FILENAME,
        min_length=1,
        description="File name template (no extension): {index}, {key}, {batch}, {variant}, "
        "any axis or variable, any model input; format specs such as {index:04d} work.",
    )
    defaults: dict[str, Value] = Field(
        default_factory=dict,
        description="Values every job starts from. " + _INPUT_DOC,
        json_schema_extra=_input_hints("value"),
    )
    matrix: dict[str, list[Value] | FileRef] = Field(
        default_factory=dict,
        description="Axes: name -> list of values (or {file: values.txt}). The jobs are the "
        "cartesian product of all axes (and rows). " + _INPUT_DOC,
        json_schema_extra=_input_hints("axis"),
    )
    rows: StrictStr | list[dict[str, Value]] | None = Field(
        default=None,
        description="One more axis whose values set several names at once: a list of "
        "mappings, or a .csv / .jsonl file (columns = names) or a .txt file (one prompt "
        "per line).",
    )
    include: list[Annotated[dict[str, Value], Field(json_schema_extra=_input_hints("value"))]] = (
        Field(
            default_factory=list,
            description="Extra jobs, each written out in full (defaults apply).",
        )
    )
    exclude: list[dict[str, Scalar | list[Scalar]]] = Field(
        default_factory=list,
        description="Drop matrix combinations that match every name given here (a list "
        "matches any of its values).",
    )
    repeat: Annotated[StrictInt, Field(ge=1, le=1000)] = Field(
        default=1, description="Variants of each combination (different jobs, same input)."
    )
    images: dict[str, StrictStr] = Field(
        default_factory=dict,
        description="Local folder (relative to the manifest) -> public base URL: images "
        "under it are sent as URLs instead of inline data: URIs.",
    )
    limits: Limits = Field(default_factory=Limits)
