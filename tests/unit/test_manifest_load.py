"""Loading manifests: the examples, templates, files, defaults, limits and overrides."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from batchgen.manifest.images import materialize, parse_reference
from batchgen.manifest.loader import Overrides, load_manifest
from batchgen.runbase.models import load_model
from tests.support.manifests import load, png, write
from tests.support.paths import REPO

ROOT = REPO
EXAMPLES = sorted((ROOT / "manifests").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_and_matches_the_json_schema(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# yaml-language-server: $schema=../schemas/manifest.schema.json\n")
    schema = json.loads((ROOT / "schemas" / "manifest.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(text), schema)
    loaded = load_manifest(path, date=dt.date(2024, 5, 1))
    jobs = list(loaded.jobs())
    assert len(jobs) == loaded.job_count > 0
    assert [j.idx for j in jobs] == list(range(len(jobs)))
    assert len({j.key for j in jobs}) == len(jobs)
    assert loaded.warnings == []
    # What would be POSTed passes the model's whole input schema: no invalid_input.
    spec = load_model(loaded.model)
    assert [spec.problems(materialize(j.input, path.parent)) for j in jobs] == [[]] * len(jobs)


def test_the_examples_cover_what_the_docs_promise() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"example.yaml", "image-to-video.yaml", "prompt-sweep.yaml", "nightly.yaml"} <= names
    example = load_manifest(ROOT / "manifests" / "example.yaml")
    assert example.job_count == 6
    assert all(
        j.input["resolution"] == "720p" and j.input["duration"] == "5" for j in example.jobs()
    )
    sweep = load_manifest(ROOT / "manifests" / "prompt-sweep.yaml")
    assert sweep.job_count == 3 * 3 * 2 - 2 + 1
    itv = load_manifest(ROOT / "manifests" / "image-to-video.yaml")
    refs = [parse_reference(j.input["image_urls"][0]) for j in itv.jobs()]
    assert all(r is not None for r in refs)


def test_date_templates_use_the_run_date_and_out_dir_is_relative_to_the_manifest(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "sub",
        """
        name: "nightly-{date:%Y-%m-%d}"
        out_dir: "../out/{date:%Y%m%d}/{batch}"
        defaults: {prompt: a cat}
        """,
    )
    loaded = load_manifest(path, date=dt.date(2024, 5, 1))
    assert loaded.name == "nightly-2024-05-01"
    assert loaded.out_dir == tmp_path / "out" / "20240501" / "nightly-2024-05-01"
    assert loaded.run_date == dt.date(2024, 5, 1)
    assert loaded.path == path.absolute()
    assert load_manifest(path).name == f"nightly-{dt.date.today():%Y-%m-%d}"
    assert not (tmp_path / "out").exists()  # loading writes nothing


def test_name_defaults_to_the_file_name_and_settings_to_the_documented_values(
    tmp_path: Path,
) -> None:
    loaded = load(tmp_path, "defaults: {prompt: a cat}\n")
    assert loaded.name == "m"
    assert loaded.model == "bytedance/seedance-1-pro"
    assert loaded.filename_template == "{index:05d}"
    assert loaded.out_dir == tmp_path / "videos" / "m"
    assert loaded.settings == {
        "rate": [20, 10.0],
        "concurrency": 100,
        "budget_usd": None,
        "max_attempts": 5,
    }


def test_overrides_beat_the_manifest_limits(tmp_path: Path) -> None:
    text = """
    defaults: {prompt: a cat}
    limits: {rate: 2/1m, concurrency: 3, budget_usd: 7, max_attempts: 2}
    """
    assert load(tmp_path, text).settings == {
        "rate": [2, 60.0],
        "concurrency": 3,
        "budget_usd": 7.0,
        "max_attempts": 2,
    }
    over = load(
        tmp_path,
        text,
        rate=(5, 1.0),
        concurrency=9,
        budget_usd=1.5,
        max_attempts=4,
        out_dir=tmp_path / "elsewhere",
    )
    assert over.settings == {
        "rate": [5, 1.0],
        "concurrency": 9,
        "budget_usd": 1.5,
        "max_attempts": 4,
    }
    assert over.out_dir == tmp_path / "elsewhere"


def test_duration_written_as_a_number_becomes_text_and_16_9_stays_a_ratio(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """
        defaults: {prompt: a cat, duration: 10}
        matrix:
          aspect_ratio: [16:9, 9:16, "1:1"]
        """,
    )
    inputs = [j.input for j in loaded.jobs()]
    assert [i["aspect_ratio"] for i in inputs] == ["16:9", "9:16", "1:1"]
    assert {i["duration"] for i in inputs} == {"10"}


def test_writing_a_model_default_explicitly_changes_no_key(tmp_path: Path) -> None:
    implicit = load(tmp_path, "defaults: {prompt: a cat}\n")
    explicit = load(
        tmp_path,
        """
        defaults: {prompt: a cat, resolution: 1080p, duration: "5", aspect_ratio: "16:9"}
        """,
    )
    assert [j.key for j in implicit.jobs()] == [j.key for j in explicit.jobs()]
    job = next(iter(implicit.jobs()))
    assert job.input == {
        "prompt": "a cat",
        "aspect_ratio": "16:9",
        "resolution": "1080p",
        "duration": "5",
    }


def test_prompt_templates_take_variables_from_axes_defaults_and_includes(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """
        filename: "{index:03d}-{subject}-{style}-{light}"
        defaults:
          prompt: "a {subject} in {style}, {light} light"
          light: soft
        matrix:
          subject: [cat, dog]
          style: [watercolor, "film noir"]
        include:
          - {subject: owl, style: ink, prompt: "an {subject} drawn in {style}"}
        """,
    )
    jobs = list(loaded.jobs())
    prompts = [j.input["prompt"] for j in jobs]
    assert prompts == [
        "a cat in watercolor, soft light",
        "a cat in film noir, soft light",
        "a dog in watercolor, soft light",
        "a dog in film noir, soft light",
        "an owl drawn in ink",
    ]
    assert jobs[0].axes == {"light": "soft", "subject": "cat", "style": "watercolor"}
    assert jobs[-1].axes == {
        "light": "soft",
        "subject": "owl",
        "style": "ink",
        "prompt": prompts[-1],
    }
    assert loaded.axes == {"subject": ["cat", "dog"], "style": ["watercolor", "film noir"]}


def test_prompts_from_a_text_file_one_per_line(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("# comment\na cat\n\n  a dog  \n", encoding="utf-8")
    loaded = load(tmp_path, "matrix:\n  prompt: {file: p.txt}\n")
    assert [j.input["prompt"] for j in loaded.jobs()] == ["a cat", "a dog"]
    assert loaded.axes == {"prompt": ["a cat", "a dog"]}


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_rows_files_feed_prompts_and_variables(tmp_path: Path, kind: str) -> None:
    if kind == "csv":
        (tmp_path / "rows.csv").write_text(
            'shot,prompt,aspect_ratio\nharbor,"boats, {style}",9:16\nforest,"trees, {style}",\n'
        )
    else:
        (tmp_path / "rows.jsonl").write_text(
            '{"shot": "harbor", "prompt": "boats, {style}", "aspect_ratio": "9:16"}\n'
            "\n"
            '{"shot": "forest", "prompt": "trees, {style}", "aspect_ratio": ""}\n'
        )
    loaded = load(
        tmp_path,
        f"""
        rows: rows.{kind}
        filename: "{{shot}}-{{style}}"
        matrix:
          style: [ink, oil]
        """,
    )
    got = [(j.axes["shot"], j.input["prompt"], j.input["aspect_ratio"]) for j in loaded.jobs()]
    assert got == [
        ("harbor", "boats, ink", "9:16"),
        ("harbor", "boats, oil", "9:16"),
        ("forest", "trees, ink", "16:9"),  # an empty cell leaves the default
        ("forest", "trees, oil", "16:9"),
    ]


def test_reordering_a_prompts_file_changes_no_key(tmp_path: Path) -> None:
    lines = [f"prompt number {i}" for i in range(20)]
    (tmp_path / "p.txt").write_text("\n".join(lines))
    first = {
        j.input["prompt"]: j.key for j in load(tmp_path, "matrix: {prompt: {file: p.txt}}").jobs()
    }
    (tmp_path / "p.txt").write_text("\n".join(["a new one", *reversed(lines)]))
    second = {
        j.input["prompt"]: j.key for j in load(tmp_path, "matrix: {prompt: {file: p.txt}}").jobs()
    }
    assert {p: second[p] for p in first} == first
    assert len(second) == 21


def test_inline_rows_include_exclude_and_repeat(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """
        rows:
          - {prompt: "a {animal} running", animal: fox}
          - {prompt: "a {animal} sleeping", animal: cat}
        matrix:
          aspect_ratio: ["16:9", "9:16", "1:1"]
        exclude:
          - {animal: cat, aspect_ratio: ["9:16", "1:1"]}
          - {prompt: "a {animal} running", aspect_ratio: "1:1"}
        include:
          - {prompt: a bird, resolution: 720p}
        repeat: 2
        """,
    )
    jobs = list(loaded.jobs())
    combos = [(j.input["prompt"], j.input["aspect_ratio"], j.variant) for j in jobs]
    assert combos == [
        ("a fox running", "16:9", 0),
        ("a fox running", "16:9", 1),
        ("a fox running", "9:16", 0),
        ("a fox running", "9:16", 1),
        ("a cat sleeping", "16:9", 0),
        ("a cat sleeping", "16:9", 1),
        ("a bird", "16:9", 0),
        ("a bird", "16:9", 1),
    ]
    assert loaded.job_count == 8 and loaded.excluded == 3 and loaded.collapsed == 0
    assert jobs[0].input == jobs[1].input and jobs[0].key != jobs[1].key


def test_identical_combinations_collapse_with_a_warning(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """
        matrix:
          prompt: [a cat, a dog, a cat]
          duration: ["5", 5, "10"]
        include:
          - {prompt: a dog, duration: 10}
        """,
    )
    # 3 prompts x 3 durations = 9 combinations + 1 include; distinct: 2 x 2 = 4.
    assert loaded.job_count == 4
    assert loaded.collapsed == 6
    assert loaded.warnings == [
        "6 combination(s) collapsed into identical jobs (the same model input: a value "
        "written twice, a variable the prompt does not use, or an include the matrix "
        "already has)"
    ]
    assert len(list(loaded.jobs())) == 4


def test_local_image_key_follows_the_bytes_not_the_path(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(color=(1, 2, 3)))
    (tmp_path / "b.png").write_bytes(png(color=(1, 2, 3)))
    text = "defaults: {prompt: move, image: %s}\n"
    key_a = next(iter(load(tmp_path, text % "a.png").jobs())).key
    key_b = next(iter(load(tmp_path, text % "b.png").jobs())).key
    assert key_a == key_b
    (tmp_path / "b.png").write_bytes(png(color=(9, 9, 9)))
    assert next(iter(load(tmp_path, text % "b.png").jobs())).key != key_a
    job = next(iter(load(tmp_path, text % "a.png").jobs()))
    assert job.input["image_urls"][0].startswith("file:a.png#sha256=")
    assert job.axes == {"image": "a.png"}


def test_an_images_mapping_sends_public_urls(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "cat.png").write_bytes(png())
    loaded = load(
        tmp_path,
        """
        defaults: {prompt: move}
        images: {pics: "https://cdn.example.com/batch/"}
        matrix:
          image: [pics/cat.png, "https://elsewhere.example.com/dog.jpg"]
        """,
    )
    assert [j.input["image_urls"] for j in loaded.jobs()] == [
        ["https://cdn.example.com/batch/cat.png"],
        ["https://elsewhere.example.com/dog.jpg"],
    ]


def test_max_jobs_is_a_limit_the_command_line_can_raise(tmp_path: Path) -> None:
    values = ", ".join(map(str, range(50)))
    text = "defaults: {prompt: 'a {n}'}\nmatrix:\n  n: [" + values + "]\n"
    assert load(tmp_path, text, max_jobs=50).job_count == 50
    assert Overrides().max_jobs is None


def test_the_complete_example_of_the_docs_loads(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "manifest.md").read_text(encoding="utf-8")
    example = doc.split("```yaml\n")[2].split("```")[0]
    assert example.startswith("# yaml-language-server:")
    (tmp_path / "styles.txt").write_text("watercolor\nneon\nglitch\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png())
    loaded = load_manifest(write(tmp_path, example), date=dt.date(2024, 5, 1))
    assert loaded.name == "animals-2024-05-01"
    assert loaded.out_dir == tmp_path.parent / "videos" / "2024-05-01"
    # 2 rows x 3 subjects x 3 styles x 2 ratios x 2 images = 72, minus 12 (heron, 9:16)
    # and 16 (fox in neon or glitch), plus 1 include; times 2 variants.
    assert loaded.job_count == (72 - 12 - 16 + 1) * 2
    jobs = list(loaded.jobs())
    assert jobs[0].input == {
        "prompt": "a fox in watercolor, soft light, slow dolly-in",
        "aspect_ratio": "16:9",
        "resolution": "720p",
        "duration": "5",
        "image_urls": ["https://cdn.example.com/batch-images/a.png"],
    }
    assert loaded.settings["budget_usd"] == 25.0


def test_rows_from_a_text_file_and_an_image_urls_axis(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    (tmp_path / "a.png").write_bytes(png())
    loaded = load(
        tmp_path,
        """
        rows: prompts.txt
        matrix:
          image_urls: [[a.png, "https://x.example/b.png"]]
        """,
    )
    jobs = list(loaded.jobs())
    assert [j.input["prompt"] for j in jobs] == ["a cat", "a dog"]
    urls = jobs[0].input["image_urls"]
    assert urls[0].startswith("file:a.png#sha256=") and urls[1] == "https://x.example/b.png"
    assert jobs[0].axes == {"prompt": "a cat", "image_urls": "a.png+https://x.example/b.png"}


def test_a_rows_column_nothing_reads_is_flagged_as_a_probable_typo(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("prompt,aspect_ration,take\na cat,9:16,1\n")
    loaded = load(tmp_path, 'rows: rows.csv\nfilename: "{take}"\n')
    assert loaded.warnings == [
        "rows column 'aspect_ration' is no model input, no prompt uses it and the file "
        "name does not show it (did you mean 'aspect_ratio'?)"
    ]
    assert next(iter(loaded.jobs())).input["aspect_ratio"] == "16:9"


def test_an_exclude_sees_the_default_where_a_csv_cell_is_empty(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("prompt, aspect_ratio\na cat, 9:16\na dog,\n")
    loaded = load(
        tmp_path,
        """
        rows: rows.csv
        matrix: {resolution: [720p, 1080p]}
        exclude:
          - {aspect_ratio: "16:9", resolution: 720p}
        """,
    )
    got = [
        (j.input["prompt"], j.input["aspect_ratio"], j.input["resolution"]) for j in loaded.jobs()
    ]
    assert got == [
        ("a cat", "9:16", "720p"),
        ("a cat", "9:16", "1080p"),
        ("a dog", "16:9", "1080p"),
    ]


def test_yaml_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """
        defaults: &base {prompt: a cat, resolution: 720p}
        include:
          - <<: *base
            resolution: 1080p
        """,
    )
    assert [j.input["resolution"] for j in loaded.jobs()] == ["720p", "1080p"]


def test_an_exclude_that_matches_nothing_and_an_empty_batch_are_warned_about(
    tmp_path: Path,
) -> None:
    loaded = load(
        tmp_path,
        """
        defaults: {prompt: "a {style}"}
        matrix: {style: [ink, oil]}
        exclude:
          - {style: [ink, oil]}
          - {style: watercolour}
        """,
    )
    assert loaded.job_count == 0
    assert loaded.warnings == [
        "exclude[1] matches no combination (a misspelt value?)",
        "the manifest makes no jobs: every combination is excluded",
    ]


def test_csv_columns_feed_the_variables_of_a_defaults_template(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text("subject,style\ncat,ink\ndog,oil\n")
    loaded = load(
        tmp_path,
        """
        defaults: {prompt: "a {subject} in {style}"}
        rows: pairs.csv
        matrix: {duration: [5, 10]}
        """,
    )
    got = [(j.input["prompt"], j.input["duration"]) for j in loaded.jobs()]
    assert got == [
        ("a cat in ink", "5"),
        ("a cat in ink", "10"),
        ("a dog in oil", "5"),
        ("a dog in oil", "10"),
    ]
    assert loaded.axes == {
        "subject": ["cat", "dog"],
        "style": ["ink", "oil"],
        "duration": ["5", "10"],
    }


def test_the_readme_manifest_loads(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = readme.split("## A manifest\n", 1)[1].split("```yaml\n")[1].split("```")[0]
    (tmp_path / "styles.txt").write_text("watercolor\nneon\nglitch\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png())
    loaded = load_manifest(write(tmp_path, example), date=dt.date(2024, 5, 1))
    assert loaded.name == "animals-2024-05-01"
    # 3 subjects x 3 styles x 2 ratios x 2 images = 36, minus 6 (heron, 9:16), plus 1
    # include; times 2 variants
    assert loaded.job_count == (36 - 6 + 1) * 2
    assert loaded.warnings == []
    assert loaded.settings["concurrency"] == 100
