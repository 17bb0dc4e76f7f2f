"""Bad manifests: every problem reported at once, with file, line, column and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.errors import ExitCode, Problem, UsageError
from batchgen.manifest.loader import load_manifest
from tests.support.manifests import JPEG, problems, write


def one(found: list[Problem]) -> Problem:
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def test_a_missing_manifest_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        load_manifest(tmp_path / "nope.yaml")
    assert info.value.exit_code == ExitCode.USAGE
    assert int(info.value.exit_code) == 2
    assert "does not exist" in str(info.value)


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    p = one(problems(tmp_path, "name: x\nmatrix:\n  prompt: [a cat, a dog\n  style: x\n"))
    assert p.file == str(tmp_path / "m.yaml")
    assert "malformed YAML" in p.message
    assert (p.line, p.column) == (4, 8)
    assert p.fix


def test_an_empty_manifest_and_a_non_mapping_are_reported(tmp_path: Path) -> None:
    assert "empty" in one(problems(tmp_path, "# nothing\n")).message
    assert "mapping" in one(problems(tmp_path, "- a\n- b\n")).message


def test_unknown_keys_suggest_the_closest_known_one(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        nmae: x
        defaults: {prompt: a cat}
        limits:
          concurency: 3
        matrix:
          prompt: {fil: p.txt}
        """,
    )
    by_line = {p.line: p for p in found}
    assert by_line[1].message == "unknown key 'nmae' (did you mean 'name'?)"
    assert by_line[1].column == 1
    assert "did you mean 'concurrency'?" in by_line[4].message
    assert by_line[4].column == 3
    assert "did you mean 'file'?" in by_line[6].message
    assert "known keys here:" in (by_line[6].fix or "")


def test_wrong_types_say_what_was_expected(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        defaults: {prompt: a cat}
        repeat: two
        matrix:
          aspect_ratio: "16:9"
        limits:
          concurrency: 0
          budget_usd: lots
        """,
    )
    text = {p.line: p.message for p in found}
    assert text[2] == 'repeat: expected a whole number from 1 to 1000, got "two"'
    assert text[4].startswith("matrix.aspect_ratio: expected a list of values")
    assert "greater than or equal to 1" in text[6]
    assert text[7].startswith("limits.budget_usd: expected a number of dollars")
    assert len(found) == 4


def test_a_yes_where_text_is_wanted_says_to_quote_it(tmp_path: Path) -> None:
    p = one(problems(tmp_path, "defaults: {prompt: yes}\n"))
    assert "got true" in p.message
    assert "quote" in (p.fix or "")


def test_invalid_enum_values_list_the_allowed_ones(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        defaults: {prompt: a cat, resolution: 4k}
        matrix:
          aspect_ratio: ["16:9", "2:1"]
          duration: [5, 7]
        """,
    )
    text = [p.message for p in found]
    assert "defaults.resolution: '4k' is not a valid resolution; allowed: 720p, 1080p" in text
    assert any(t.startswith("matrix.aspect_ratio[1]: '2:1'") and "16:9, 9:16" in t for t in text)
    assert "matrix.duration[1]: '7' is not a valid duration; allowed: 5, 10" in text
    assert [(p.line, p.column) for p in found] == [(1, 39), (3, 26), (4, 17)]


def test_empty_axes_and_empty_rows(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    found = problems(
        tmp_path,
        """
        defaults: {prompt: "a {style}"}
        matrix:
          style: []
          aspect_ratio: {file: empty.txt}
        rows: []
        """,
    )
    text = [p.message for p in found]
    assert "matrix.style has no values" in text
    assert "matrix.aspect_ratio has no values" in text
    assert "rows has no rows" in text


def test_missing_files_and_images(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        defaults: {prompt: move}
        rows: nope.csv
        matrix:
          image: [gone.png, "https://example.com/fine.png"]
          resolution: {file: nope.txt}
        """,
    )
    by_line = {p.line: p for p in found}
    assert "nope.csv does not exist" in by_line[2].message
    assert "gone.png does not exist" in by_line[4].message
    assert by_line[4].column == 11
    assert "nope.txt does not exist" in by_line[5].message
    assert all(p.fix for p in found)


def test_images_that_are_not_images_or_too_big(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image at all")
    (tmp_path / "huge.jpg").write_bytes(JPEG + b"\x00" * (10 * 1024 * 1024))
    found = problems(tmp_path, "defaults: {prompt: move}\nmatrix: {image: [notes.png, huge.jpg]}\n")
    text = " ".join(p.message for p in found)
    assert "not a JPEG, PNG or WebP" in text
    assert "over the 10 MB limit" in text


def test_problems_in_values_files_name_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("prompt,aspect_ratio\na cat,16:9\na dog,2:1\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    p = one(problems(tmp_path, "rows: rows.csv\n"))
    assert (p.file, p.line) == (str(tmp_path / "rows.csv"), 3)
    assert "'2:1' is not a valid aspect_ratio" in p.message
    p = one(problems(tmp_path, "rows: bad.jsonl\n"))
    assert (p.file, p.line) == (str(tmp_path / "bad.jsonl"), 2)
    assert "malformed JSON" in p.message


def test_a_template_variable_without_values(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        defaults: {prompt: "a {subject} in {style}"}
        matrix:
          subject: [cat]
        include:
          - {prompt: "an {animal}"}
        """,
    )
    text = [(p.line, p.message) for p in found]
    assert (1, "prompt template variable {style} has no values") in text
    assert (5, "prompt template variable {animal} has no values") in text
    assert len(found) == 2


def test_an_unused_variable_is_probably_a_typo(tmp_path: Path) -> None:
    p = one(problems(tmp_path, "defaults: {prompt: a cat}\nmatrix:\n  aspect_ration: ['16:9']\n"))
    assert p.message == (
        "'aspect_ration' is not a model input and no prompt template uses it "
        "(did you mean 'aspect_ratio'?)"
    )
    assert (p.line, p.column) == (3, 3)


def test_no_prompt_anywhere(tmp_path: Path) -> None:
    found = problems(tmp_path, "matrix:\n  aspect_ratio: ['16:9']\ninclude:\n  - {duration: '5'}\n")
    text = [p.message for p in found]
    assert "no prompt: every job needs one" in text
    assert "include[0] has no prompt" in text


def test_a_prompt_that_can_render_empty(tmp_path: Path) -> None:
    p = one(problems(tmp_path, "defaults: {prompt: '{x}'}\nmatrix:\n  x: [a, ' ']\n"))
    assert "renders empty" in p.message


def test_a_malformed_template_and_a_bad_file_name_field(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        filename: "{index}-{colour}"
        defaults: {prompt: "a {subject"}
        """,
    )
    text = " ".join(p.message for p in found)
    assert "prompt template 'a {subject'" in text
    assert "unknown field {colour}" in text


def test_unknown_model_and_bad_date_template(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        name: "run-{day}"
        model: bytedance/seedance-1-pr0
        defaults: {prompt: a cat}
        """,
    )
    text = [p.message for p in found]
    assert any("unknown field {day}" in t for t in text)
    assert any("did you mean 'bytedance/seedance-1-pro'?" in t for t in text)


def test_a_key_written_twice_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    found = problems(
        tmp_path, "defaults: {prompt: a}\nrepeat: 2\nrepeat: 3\nlimits: {rate: fast}\n"
    )
    assert [(p.line, p.message) for p in found] == [
        (3, "key 'repeat' is written twice in this mapping (first on line 2)"),
        (4, 'limits.rate: expected a rate such as 20/10s, got "fast"'),
    ]


def test_exclude_naming_something_unknown(tmp_path: Path) -> None:
    p = one(
        problems(
            tmp_path,
            "defaults: {prompt: 'a {subject}'}\nmatrix: {subject: [a]}\n"
            "exclude:\n  - {subjet: a}\n",
        )
    )
    assert "did you mean 'subject'?" in p.message
    assert (p.line, p.column) == (4, 6)


def test_a_matrix_over_max_jobs_says_how_to_raise_the_limit(tmp_path: Path) -> None:
    a_values = ", ".join(f"a{i}" for i in range(300))
    b_values = ", ".join(f"b{i}" for i in range(200))
    text = f"""
    defaults: {{prompt: "{{a}} {{b}}"}}
    matrix:
      a: [{a_values}]
      b: [{b_values}]
    repeat: 3
    """
    p = one(problems(tmp_path, text))
    assert p.message == (
        "the manifest makes up to 180,000 jobs (300 a x 200 b, x 3 repeats), "
        "over the limit of 100,000"
    )
    assert "--max-jobs 180000" in (p.fix or "")
    assert "over the limit of 1,000" in one(problems(tmp_path, text, max_jobs=1000)).message


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        nmae: x
        defaults: {prompt: "a {subject} in {style}", resolution: 4k}
        matrix:
          subject: [cat]
          image: [missing.png]
          empty: []
        repeat: 0
        """,
    )
    assert len(found) >= 6
    lines = [p.line or 0 for p in found]
    assert lines == sorted(lines)
    assert all(p.file == str(tmp_path / "m.yaml") for p in found)


def test_loading_a_bad_manifest_writes_nothing(tmp_path: Path) -> None:
    write(tmp_path, "out_dir: out\ndefaults: {prompt: a, resolution: 4k}\n")
    with pytest.raises(UsageError):
        load_manifest(tmp_path / "m.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]


def test_reserved_or_odd_variable_names_and_names_set_twice(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        defaults: {prompt: "a {index}"}
        matrix:
          index: ["1"]
          prompt: [a cat]
          "my style": [x]
        rows:
          - {prompt: a dog}
        """,
    )
    text = " ".join(p.message for p in found)
    assert "'index' cannot be a template variable (a reserved name)" in text
    assert "'my style' cannot be a template variable (use letters, digits and _)" in text
    assert "'prompt' is set by more than one axis (rows, prompt)" in text


def test_a_rows_file_with_a_missing_column_value_or_unknown_kind(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a {x}", "x": "1"}\n{"prompt": "b"}\n')
    (tmp_path / "rows.tsv").write_text("prompt\ta\n")
    p = one(problems(tmp_path, "rows: rows.jsonl\n"))
    assert (p.file, p.line) == (str(tmp_path / "rows.jsonl"), 2)
    assert p.message == "rows.jsonl line 2: this row has no value for x"
    p = one(problems(tmp_path, "rows: rows.tsv\n"))
    assert "unknown kind (.tsv)" in p.message and ".csv" in (p.fix or "")


def test_a_csv_with_a_ragged_row_or_a_bad_header(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('prompt,x\n"a, quoted {x}",1\nb,2,3\n')
    (tmp_path / "b.csv").write_text("prompt,prompt\na,b\n")
    p = one(problems(tmp_path, "rows: a.csv\n"))
    assert (p.line, p.message) == (3, "row has 3 cells, the header has 2")
    p = one(problems(tmp_path, "rows: b.csv\n"))
    assert p.line == 1 and "distinct" in p.message


def test_an_images_mapping_needs_a_folder_and_a_url(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    found = problems(
        tmp_path,
        """
        defaults: {prompt: a}
        images:
          pics: cdn.example.com/pics
          nowhere: https://cdn.example.com/x
        """,
    )
    text = [(p.line, p.message) for p in found]
    assert text == [
        (3, "images.pics: 'cdn.example.com/pics' is not an http(s) URL"),
        (4, "images: 'nowhere' is not a folder next to the manifest"),
    ]


def test_a_values_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_bytes(b"a cat\n\xff\xfe oops\n")
    p = one(problems(tmp_path, "matrix: {prompt: {file: p.txt}}\n"))
    assert (p.file, p.line, p.message) == (
        str(tmp_path / "p.txt"),
        2,
        f"file {tmp_path / 'p.txt'} is not UTF-8 text",
    )


def test_a_url_the_api_cannot_fetch_and_a_blank_prompt(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        matrix:
          prompt: ["   ", ok]
          image: ["ftp://files.example.com/a.png", "HTTPS://cdn.example.com/b.png"]
        """,
    )
    assert [(p.message, p.line, p.column) for p in found] == [
        ("matrix.prompt[0]: the prompt is blank", 2, 12),
        (
            "matrix.image[0]: 'ftp://files.example.com/a.png' is a URL the API cannot fetch "
            "(it takes https://, http:// and data: URLs)",
            3,
            11,
        ),
        (
            "matrix.image[1]: 'HTTPS://cdn.example.com/b.png' is a URL the API cannot fetch "
            "(it takes https://, http:// and data: URLs)",
            3,
            44,
        ),
    ]
    assert found[1].fix is not None and "https://" in found[1].fix


def test_an_incomplete_url_is_named_before_it_costs_a_request(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        defaults: {prompt: a cat}
        matrix:
          image: ["http://", "data:", "https://cdn.example.com/a.png"]
        """,
    )
    assert [(p.message, p.line, p.column) for p in found] == [
        (
            f"matrix.image[{i}]: {url!r} is not a complete URL (an https:// URL needs a "
            "host; a data: URI needs its comma and data)",
            3,
            col,
        )
        for i, url, col in ((0, "http://", 11), (1, "data:", 22))
    ]
    assert found[0].fix is not None and "https://cdn.example.com" in found[0].fix


def test_an_empty_prompt_axis_is_one_problem_not_also_a_missing_prompt(tmp_path: Path) -> None:
    found = one(problems(tmp_path, "matrix:\n  prompt: []\n  aspect_ratio: ['16:9']\n"))
    assert (found.message, found.line, found.column) == ("matrix.prompt has no values", 2, 11)


def test_a_values_file_that_fails_still_lets_the_other_checks_run(tmp_path: Path) -> None:
    """A matrix file's axis name is known without its values: templates, excludes and
    file names are still checked, and nothing is reported about the axis itself."""
    found = problems(
        tmp_path,
        """
        defaults: {prompt: "a {subject} in {style}"}
        matrix:
          subject: {file: missing.txt}
        exclude:
          - {subject: fox}
        filename: "{subject}-{idx}"
        """,
    )
    assert [(p.line, p.message.split(":")[0]) for p in found] == [
        (1, "prompt template variable {style} has no values"),
        (3, "matrix.subject.file"),
        (6, "file name template '{subject}-{idx}'"),
    ]


def test_a_rows_file_that_fails_does_not_make_its_columns_unknown_names(tmp_path: Path) -> None:
    found = one(
        problems(
            tmp_path,
            """
            defaults: {prompt: "a {subject}"}
            rows: missing.csv
            exclude:
              - {subject: fox}
            """,
        )
    )
    assert found.line == 2 and "missing.csv does not exist" in found.message
