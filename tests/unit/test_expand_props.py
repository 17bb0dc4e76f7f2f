"""Property tests of the expansion (hypothesis)."""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen.manifest.images import materialize
from batchgen.manifest.loader import LoadedManifest, Overrides, load_manifest
from batchgen.runbase.models import load_model
from tests.support.manifests import png

RATIOS = ["16:9", "9:16", "4:3", "3:4", "1:1", "21:9"]
WORDS = st.text(alphabet="abcdefgh xyz", min_size=1, max_size=6).filter(lambda s: s.strip() == s)


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    n_vars = draw(st.integers(1, 3))
    names = ["v0", "v1", "v2"][:n_vars]
    axes: dict[str, list[str]] = {
        name: draw(st.lists(WORDS, min_size=1, max_size=4, unique=True)) for name in names
    }
    if draw(st.booleans()):
        axes["aspect_ratio"] = draw(st.lists(st.sampled_from(RATIOS), min_size=1, unique=True))
    excludes = []
    for _ in range(draw(st.integers(0, 3))):
        picked = draw(st.lists(st.sampled_from(sorted(axes)), min_size=1, max_size=2, unique=True))
        excludes.append({a: draw(st.sampled_from(axes[a])) for a in picked})
    # "|" never occurs in a value, so the template renders distinct values distinctly.
    includes = [{"prompt": f"include {i}"} for i in range(draw(st.integers(0, 3)))]
    return {
        "defaults": {"prompt": "p " + "|".join(f"{{{n}}}" for n in names)},
        "matrix": axes,
        "exclude": excludes,
        "include": includes,
        "repeat": draw(st.integers(1, 3)),
    }


def _load(data: dict[str, Any]) -> LoadedManifest:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return load_manifest(path, overrides=Overrides(max_jobs=10**6))


def _excluded(data: dict[str, Any]) -> int:
    axes = data["matrix"]
    n = 0
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        if any(all(values[k] == v for k, v in rule.items()) for rule in data["exclude"]):
            n += 1
    return n


PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(manifests())
def test_size_is_product_minus_excludes_plus_includes_times_repeat(data: dict[str, Any]) -> None:
    loaded = _load(data)
    product = math.prod(len(v) for v in data["matrix"].values())
    expected = (product - _excluded(data) + len(data["include"])) * data["repeat"]
    jobs = list(loaded.jobs())
    assert len(jobs) == loaded.job_count == expected
    assert loaded.collapsed == 0
    assert loaded.excluded == _excluded(data)


@PROPS
@given(manifests())
def test_re_expanding_never_duplicates_a_key_and_gives_the_same_jobs(data: dict[str, Any]) -> None:
    loaded = _load(data)
    first = [(j.key, j.idx, j.variant, j.input) for j in loaded.jobs()]
    assert len({k for k, *_ in first}) == len(first)
    assert list(loaded.keys()) == [k for k, *_ in first]
    assert first == [(j.key, j.idx, j.variant, j.input) for j in loaded.jobs()]
    assert first == [(j.key, j.idx, j.variant, j.input) for j in _load(data).jobs()]


@PROPS
@given(manifests(), st.randoms(use_true_random=False))
def test_the_order_values_are_written_in_changes_no_key(data: dict[str, Any], rnd: Any) -> None:
    keys = {j.key for j in _load(data).jobs()}
    shuffled = {**data, "matrix": {}}
    names = list(data["matrix"])
    rnd.shuffle(names)
    for name in names:
        values = list(data["matrix"][name])
        rnd.shuffle(values)
        shuffled["matrix"][name] = values
    assert {j.key for j in _load(shuffled).jobs()} == keys


@PROPS
@given(
    manifests(),
    st.lists(st.sampled_from(["720p", "1080p"]), min_size=1, unique=True),
    st.lists(st.sampled_from([5, 10]), min_size=1, unique=True),
    st.lists(st.sampled_from(["local.png", "https://cdn.example.com/a.jpg"]), unique=True),
)
def test_every_input_a_run_would_send_passes_the_models_schema(
    data: dict[str, Any], resolutions: list[str], durations: list[int], images: list[str]
) -> None:
    """Checked locally, so ``invalid_input`` never costs a request."""
    matrix = {**data["matrix"], "resolution": resolutions, "duration": durations}
    if images:
        matrix["image"] = images
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "local.png").write_bytes(png())
        path = folder / "m.yaml"
        # No excludes here: they could drop every combination of a duration.
        text = yaml.safe_dump({**data, "matrix": matrix, "exclude": []})
        path.write_text(text, encoding="utf-8")
        loaded = load_manifest(path, overrides=Overrides(max_jobs=10**6))
        spec = load_model(loaded.model)
        sent = [materialize(job.input, folder) for job in loaded.jobs()]
    assert sent
    assert all(spec.problems(s) == [] for s in sent)
    assert {s["duration"] for s in sent} >= {str(d) for d in durations}
