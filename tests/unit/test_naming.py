"""File names: safe on every common filesystem, stable, unique per job."""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen.manifest.naming import (
    MAX_STEM_BYTES,
    TemplateError,
    check_template,
    output_stem,
    sanitize,
    template_fields,
)

KEY = "3f2a9c0d4e5b6a7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7"
INPUT = {
    "prompt": "A red fox runs through snow",
    "aspect_ratio": "16:9",
    "resolution": "1080p",
    "duration": "5",
}


def stem(template: str, **kw: object) -> str:
    args: dict[str, object] = {
        "index": 7,
        "key": KEY,
        "axes": {"subject": "fox"},
        "input": INPUT,
        "batch": "nightly",
    }
    args.update(kw)
    return output_stem(template, **args)  # type: ignore[arg-type]


# ---------------------------------------------------------------- examples


def test_typical_template() -> None:
    got = stem("{index:04d}_{subject}_{aspect_ratio}_{resolution}_{prompt:.12}")
    assert got == "0007_fox_16x9_1080p_A_red_fox_ru-3f2a9c0d4e"


def test_key_in_template_means_no_tag() -> None:
    assert stem("{batch}-{key}") == f"nightly-{KEY}"
    # A shortened key no longer proves uniqueness: the tag comes back.
    assert stem("{key:.6}") == f"{KEY[:6]}-{KEY[:10]}"
    # Keys that sanitising could alter or merge with their neighbours keep the tag.
    assert stem("a.{key}", key=".b") == "a.b-" + hashlib.sha256(b".b").hexdigest()[:10]
    assert stem("a.{key}", key="b") == "a.b"


def test_non_hex_keys_get_a_hashed_tag() -> None:
    a = stem("{subject}", key="job/000001")
    b = stem("{subject}", key="job/000002")
    assert a != b
    assert a == "fox-" + hashlib.sha256(b"job/000001").hexdigest()[:10]


def test_numeric_spec_on_numeric_string() -> None:
    assert stem("{duration:03d}s") == "005s-3f2a9c0d4e"


def test_axes_label_wins_over_input_and_base_fields_win_over_both() -> None:
    got = stem("{prompt}-{index}", axes={"prompt": "fox-shot", "index": "x"})
    assert got == "fox-shot-7-3f2a9c0d4e"


def test_list_and_url_values() -> None:
    inp = {
        **INPUT,
        "image_urls": ["https://cdn.example/img/cat.png?sig=1", "data:image/png;base64,AAAA"],
    }
    assert stem("{image_urls}", input=inp) == "cat+inline-3f2a9c0d4e"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("../../etc/passwd", "_._etc_passwd"),
        ("..", "_"),
        (".hidden", "hidden"),
        ('a/b\\c:d*e?f"g<h>i|j', "a_b_c_d_e_f_g_h_i_j"),
        ("tab\there\nnewline\x00nul\x7f", "tab_here_newline_nul_"),
        ("  spaced   out  ", "_spaced_out_"),
        ("trailing dots...", "trailing_dots"),
        ("CON", "_CON"),
        ("lpt1.txt", "_lpt1.txt"),
        ("", "_"),
        ("-rf", "rf"),
        ("e\u0301cole", "\u00e9cole"),  # NFC
        ("bidi\u202eevil\u200b", "bidievil"),
    ],
)
def test_sanitize_examples(template: str, expected: str) -> None:
    assert sanitize(template) == expected


def test_hostile_template_values_stay_one_component(tmp_path: Path) -> None:
    got = stem("{prompt}", input={"prompt": "../../../../tmp/x"})
    assert "/" not in got and ".." not in got
    p = tmp_path / (got + ".mp4")
    p.write_bytes(b"")
    assert p.parent == tmp_path


def test_long_multibyte_prompt_is_bounded_without_splitting_characters() -> None:
    got = stem("{prompt}", input={"prompt": "狐" * 200})
    raw = got.encode()
    assert len(raw) <= MAX_STEM_BYTES
    assert got.endswith("-3f2a9c0d4e") and got.startswith("狐")
    raw.decode("utf-8")  # whole characters only


# ---------------------------------------------------------------- template errors


def test_unknown_field_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"unknown field \{colour\}") as info:
        stem("{index}-{colour}")
    assert isinstance(info.value, TemplateError) and info.value.field == "colour"


def test_check_template_up_front() -> None:
    check_template("{index:04d}-{subject}-{prompt:.40}", ["subject", "prompt"])
    with pytest.raises(TemplateError, match="subjet") as info:
        check_template("{subjet}", ["subject", "prompt"])
    assert info.value.field == "subjet"
    assert "known fields: batch, index, key, prompt, subject, variant" in str(info.value)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{index", "expected '}'"),
        ("{input.prompt}", "plain name"),
        ("{axes[0]}", "plain name"),
        ("{}", "plain name"),
        ("{prompt:.{n}}", "nested"),
    ],
)
def test_bad_template_syntax(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        template_fields(template)


def test_format_spec_that_does_not_fit_the_value() -> None:
    with pytest.raises(TemplateError, match=r"\{index:\.3\}") as info:
        stem("{index:.3}")
    assert info.value.field == "index"
    with pytest.raises(TemplateError, match="prompt"):
        stem("{prompt:05d}")


def test_variant_field() -> None:
    assert stem("{index}-{variant}", variant=2) == "7-2-3f2a9c0d4e"


# ---------------------------------------------------------------- properties

FIELDS = ["index", "key", "batch", "variant", "prompt", "aspect_ratio", "subject", "duration"]
SPECS = ["", ":.40", ":.3", ":>8", ":_<12", "!r"]
ILLEGAL = set('<>:"/\\|?*\x00')
RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(10)),
    *(f"lpt{i}" for i in range(10)),
}

literal = st.text(max_size=30).map(lambda s: s.replace("{", "{{").replace("}", "}}"))
INT_SPECS = ["", ":06d", ":>8", ":_<12", "!r"]
field = st.sampled_from(FIELDS).flatmap(
    lambda name: st.sampled_from(INT_SPECS if name in ("index", "variant") else SPECS).map(
        lambda spec: "{" + name + spec + "}"
    )
)
templates = st.lists(st.one_of(literal, field), min_size=0, max_size=6).map("".join)
values = st.text(max_size=300)
keys = st.one_of(
    st.text(min_size=1, max_size=40),
    st.text("ab0_-.", min_size=1, max_size=8),
    # Real keys are hash-derived; the 10-character tag is then a 40-bit random value.
    st.binary(max_size=8).map(lambda b: hashlib.sha256(b).hexdigest()),
)


def render(template: str, key: str, prompt: str, subject: str, batch: str, index: int) -> str:
    return output_stem(
        template,
        index=index,
        key=key,
        axes={"subject": subject},
        input={"prompt": prompt, "aspect_ratio": "16:9", "duration": "5"},
        batch=batch,
    )


def assert_safe(name: str) -> None:
    assert name, "empty"
    assert len(name.encode("utf-8")) <= MAX_STEM_BYTES
    assert not name.startswith(".") and not name.startswith("-")
    assert not name.endswith(".") and not name.endswith(" ")
    assert ".." not in name
    assert not (set(name) & ILLEGAL)
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name)
    assert not any(c.isspace() for c in name)
    assert unicodedata.is_normalized("NFC", name)
    assert name.split(".")[0].lower() not in RESERVED
    assert name not in (".", "..")
    name.encode("utf-8")  # no lone surrogates


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(templates, keys, values, values, values, st.integers(0, 10**9))
def test_property_every_stem_is_safe(
    template: str, key: str, prompt: str, subject: str, batch: str, index: int
) -> None:
    name = render(template, key, prompt, subject, batch, index)
    assert_safe(name)
    assert name == render(template, key, prompt, subject, batch, index)  # stable
    assert Path("/out", name + ".mp4").parent == Path("/out")


@settings(max_examples=300, deadline=None)
@given(templates, keys, keys, values, values)
def test_property_distinct_keys_give_distinct_stems(
    template: str, key_a: str, key_b: str, prompt: str, subject: str
) -> None:
    if key_a == key_b:
        return
    a = render(template, key_a, prompt, subject, "b", 1)
    b = render(template, key_b, prompt, subject, "b", 1)
    assert a != b


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400), st.integers(1, 300))
def test_property_sanitize(text: str, limit: int) -> None:
    name = sanitize(text, max_bytes=max(limit, 6))
    assert name and len(name.encode()) <= max(limit, 6)
    assert not (set(name) & ILLEGAL) and ".." not in name and not name.startswith(".")
    assert sanitize(name, max_bytes=max(limit, 6)) == name  # idempotent
