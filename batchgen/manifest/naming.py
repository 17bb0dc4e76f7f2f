"""File names for downloaded videos, from the manifest's ``filename_template``.

A template is a Python format string (``str.format`` syntax, see ``string.Formatter``)
over these fields:

- ``index`` (int, the job's index in the batch), ``key`` (the job key), ``batch`` (the
  batch name), ``variant`` (int, the repeat number);
- every axis / prompt variable of the manifest (``subject``, ``style``, ...), as the
  label the expansion gave it;
- every model input field (``prompt``, ``aspect_ratio``, ``resolution``, ``duration``,
  ``image_urls``, ...). An axis label wins over the raw input value of the same name.

Format specs work as usual: ``{index:04d}``, ``{prompt:.40}``, ``{duration:>3}``; a
numeric spec on a numeric string (``{duration:03d}`` with ``"5"``) converts it first.

The result is a *stem* (no extension) that is safe on Linux, macOS and Windows:
NFC-normalised; no path separators, no ``..``, no control characters, none of
``<>:"/\\|?*``; whitespace runs become ``_``; never empty, never a dot-file, never a
reserved Windows device name; at most ``MAX_STEM_BYTES`` bytes of UTF-8. Aspect ratios
such as ``16:9`` become ``16x9``. The stem is a pure function of its inputs, so it is
stable across resumes, and it ends with ``-`` plus a short key tag unless the full job
key already appears in it, so two jobs never share a file name.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from batchgen.errors import InputError

#: the stem's UTF-8 length bound; ``.{stem}-NN.mp4.part.meta`` stays far below 255
MAX_STEM_BYTES = 120
#: key characters (or key-hash characters) appended to keep stems unique
KEY_TAG_LEN = 10
BASE_FIELDS = ("index", "key", "batch", "variant")

# Characters illegal on Windows or anywhere (controls), and whitespace, in runs -> one "_".
_ILLEGAL = re.compile(r'(?:[<>:"/\\|?*\x00-\x1f\x7f-\x9f]|\s)+')
_DOTS = re.compile(r"\.{2,}")
_RATIO = re.compile(r"^\s*(\d+)\s*[:/]\s*(\d+)\s*$")
_HEX = re.compile(r"^[0-9a-fA-F]{16,}$")
_SIMPLE_KEY = re.compile(r"^[a-z0-9_]+$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# CON, PRN, AUX, NUL, COM1-9, LPT1-9 are device names on Windows, whatever the extension.
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)


class TemplateError(InputError):
    """A file-name template that cannot be rendered; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def template_fields(template: str) -> list[str]:
    """The field names ``template`` uses, in order, without repeats.

    Raises ``TemplateError`` for broken syntax, attribute or index access
    (``{input.x}``, ``{a[0]}``), positional fields (``{}``) and nested specs.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"file name template {template!r}: {exc}") from exc
    names: list[str] = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not _IDENT.match(name):
            raise TemplateError(
                f"file name template {template!r}: field {{{name}}} must be a plain name "
                "such as {prompt} or {index:04d}",
                field=name,
            )
        if spec and "{" in spec:
            raise TemplateError(
                f"file name template {template!r}: nested fields in the format of "
                f"{{{name}}} are not supported",
                field=name,
            )
        if spec and any(int(n) > MAX_STEM_BYTES for n in re.findall(r"\d+", spec)):
            raise TemplateError(
                f"file name template {template!r}: the width or precision in "
                f"{{{name}:{spec}}} is over {MAX_STEM_BYTES}, the longest file name stem",
                field=name,
            )
        if conversion not in (None, "s", "r", "a"):
            raise TemplateError(
                f"file name template {template!r}: unknown conversion !{conversion}", field=name
            )
        if name not in names:
            names.append(name)
    return names


def check_template(template: str, fields: Iterable[str]) -> None:
    """Raise ``TemplateError`` (a ``ValueError``) unless every field of ``template`` is known.

    ``fields``: the axis, variable and model-input names the manifest offers; the base
    fields (index, key, batch, variant) are always known. Meant for the manifest loader,
    so a bad template is reported before anything is paid for.
    """
    known = set(BASE_FIELDS) | set(fields)
    for name in template_fields(template):
        if name not in known:
            raise TemplateError(
                f"file name template {template!r}: unknown field {{{name}}}; "
                f"known fields: {', '.join(sorted(known))}",
                field=name,
            )


def output_stem(
    template: str,
    *,
    index: int,
    key: str,
    axes: Mapping[str, str],
    input: Mapping[str, Any],
    batch: str,
    variant: int = 0,
    max_bytes: int = MAX_STEM_BYTES,
) -> str:
    """The safe, stable, unique file stem (no extension) of one job. See the module doc."""
    values: dict[str, Any] = {k: _label(v) for k, v in input.items()}
    values.update({k: _label(v) for k, v in axes.items()})
    values.update(index=index, key=key, batch=batch, variant=variant)
    text = _render(template, values)
    body = sanitize(text, max_bytes=max_bytes)
    if _key_proves_unique(template, key) and body == sanitize(text, max_bytes=len(text) * 4 + 8):
        return body
    tag = _key_tag(key)
    room = max_bytes - len(tag.encode()) - 1
    body = _truncate(body, room).rstrip(" ._-")
    return f"{body}-{tag}" if body and body != "_" else tag


def sanitize(text: str, *, max_bytes: int = MAX_STEM_BYTES) -> str:
    """``text`` made into one safe path component (no extension added); never empty."""
    text = unicodedata.normalize("NFC", text)
    # Invisible format code points (bidi overrides, zero-width joiners) and lone
    # surrogates are dropped: they make names that look alike or cannot be encoded.
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cf", "Cs"))
    text = _ILLEGAL.sub("_", text)
    text = _DOTS.sub(".", text)
    text = text.lstrip(".-").rstrip(". ")
    text = _truncate(text, max_bytes).rstrip(". ")
    text = unicodedata.normalize("NFC", text)
    if not text:
        return "_"
    if _RESERVED.match(text):
        text = _truncate("_" + text, max_bytes)
    return text


def _render(template: str, values: Mapping[str, Any]) -> str:
    fmt = string.Formatter()
    out: list[str] = []
    for name in template_fields(template):
        if name not in values:
            raise TemplateError(
                f"file name template {template!r}: unknown field {{{name}}}; "
                f"known fields: {', '.join(sorted(values))}",
                field=name,
            )
    for literal, field_name, spec, conversion in fmt.parse(template):
        out.append(literal)
        if field_name is None:
            continue
        name = field_name
        value = values[name]
        if conversion:
            value = fmt.convert_field(value, conversion)
        out.append(_format(name, value, spec or ""))
    return "".join(out)


def _format(name: str, value: Any, spec: str) -> str:
    try:
        return format(value, spec)
    except (ValueError, TypeError) as first:
        if isinstance(value, str):
            for kind in (int, float):
                try:
                    return format(kind(value), spec)
                except (ValueError, TypeError):
                    continue
        raise TemplateError(
            f"file name field {{{name}:{spec}}} cannot format {value!r}: {first}", field=name
        ) from first


def _label(value: Any) -> Any:
    """The file-name face of an input value: ratios as 16x9, URLs as their file stem."""
    if isinstance(value, str):
        ratio = _RATIO.match(value)
        if ratio:
            return f"{ratio.group(1)}x{ratio.group(2)}"
        if value.startswith("data:"):
            return "inline"
        if value.startswith(("http://", "https://")):
            last = value.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            return last.rsplit(".", 1)[0] or "url"
        return value
    if isinstance(value, list | tuple):
        return "+".join(str(_label(v)) for v in value)
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return value


def _key_proves_unique(template: str, key: str) -> bool:
    """True when the whole key lands in the name unchanged, so no tag is needed.

    Only a plain ``{key}`` (no spec, no conversion) of lower-case letters, digits and
    ``_`` qualifies: sanitising never alters those characters or merges them with
    their neighbours, and lower case keeps case-insensitive filesystems apart.
    """
    plain = any(
        name == "key" and not spec and not conv
        for _lit, name, spec, conv in string.Formatter().parse(template)
    )
    return plain and bool(_SIMPLE_KEY.match(key))


def _key_tag(key: str) -> str:
    # Hex keys (hash-derived) show their own head, so a file matches its key at a glance;
    # anything else is hashed, so keys with a common prefix still get distinct tags.
    if _HEX.match(key):
        return key[:KEY_TAG_LEN].lower()
    return hashlib.sha256(key.encode()).hexdigest()[:KEY_TAG_LEN]


def _truncate(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that fits ``max_bytes`` of UTF-8, whole code points."""
    if max_bytes <= 0:
        return ""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    cut = raw[:max_bytes].decode("utf-8", errors="ignore")
    # Do not leave a base letter stripped of half its combining marks at the end.
    while cut and unicodedata.combining(cut[-1]):
        cut = cut[:-1]
    return cut
