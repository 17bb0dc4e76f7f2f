"""``resolve_settings``: one rule per layer of command line > environment > stored batch >
manifest > defaults, and the checks of the amounts a command line may give. Pure: dicts
and dataclasses in, a frozen ``Settings`` out; no file, no database, no network."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import pytest

from batchgen.errors import UsageError
from batchgen.settings import (
    DEFAULT_BASE_URL,
    CommandLine,
    Settings,
    StoredBatch,
    command_line_problems,
    resolve_settings,
    stored_settings,
)

MANIFEST = {"rate": [2, 60.0], "concurrency": 3, "budget_usd": 7.0, "max_attempts": 2}
STORED = {"rate": [5, 1.0], "concurrency": 9, "budget_usd": 1.5, "max_attempts": 4}
ENV = {"RUNBASE_BASE_URL": "http://127.0.0.1:8000"}


def stored(settings: Mapping[str, object], name: str = "nightly") -> StoredBatch:
    return StoredBatch(name, settings)


def test_with_nothing_given_the_settings_are_the_documented_defaults() -> None:
    assert resolve_settings() == Settings(
        rate=(20, 10.0),
        concurrency=100,
        budget_usd=None,
        max_attempts=5,
        max_runtime_s=None,
        in_doubt="resubmit",
        on_lost="fail",
        base_url="https://runbase.net",
    )
    assert resolve_settings().to_batch() == {
        "rate": [20, 10.0],
        "concurrency": 100,
        "budget_usd": None,
        "max_attempts": 5,
    }


def test_the_manifest_beats_the_defaults() -> None:
    got = resolve_settings(manifest=MANIFEST)
    assert (got.rate, got.concurrency, got.budget_usd, got.max_attempts) == ((2, 60.0), 3, 7.0, 2)
    # what it does not write stays the default
    only_rate = resolve_settings(manifest={"rate": [2, 60.0]})
    assert only_rate == dataclasses.replace(Settings(), rate=(2, 60.0))


def test_the_stored_batch_beats_the_manifest() -> None:
    got = resolve_settings(stored=stored(STORED), manifest=MANIFEST)
    assert got.to_batch() == STORED
    # a setting the batch does not hold comes from the manifest
    got = resolve_settings(stored=stored({"concurrency": 9}), manifest=MANIFEST)
    assert got.to_batch() == {**MANIFEST, "concurrency": 9}


def test_the_environment_gives_the_base_url_and_nothing_else() -> None:
    got = resolve_settings(environ=ENV, stored=stored(STORED))
    assert got.base_url == "http://127.0.0.1:8000"
    assert got.to_batch() == STORED
    assert resolve_settings(environ={"RUNBASE_BASE_URL": ""}).base_url == DEFAULT_BASE_URL
    # neither a stored batch nor a manifest names the API
    assert resolve_settings(stored=stored({"base_url": "http://x"})).base_url == DEFAULT_BASE_URL
    # the key is no setting: it is never in a Settings, which may be printed
    assert "key" not in {f.name for f in dataclasses.fields(Settings)}


def test_the_command_line_beats_the_environment_the_batch_and_the_manifest() -> None:
    given = CommandLine(
        rate=(7, 2.0),
        concurrency=11,
        budget_usd=3.0,
        max_attempts=9,
        base_url="http://127.0.0.1:9000",
    )
    got = resolve_settings(given, ENV, stored(STORED), MANIFEST)
    assert got.base_url == "http://127.0.0.1:9000"
    assert got.to_batch() == {
        "rate": [7, 2.0],
        "concurrency": 11,
        "budget_usd": 3.0,
        "max_attempts": 9,
    }


def test_policies_and_the_runtime_come_from_the_command_line_only() -> None:
    given = CommandLine(in_doubt="hold", on_lost="resubmit", max_runtime_s=60.0)
    got = resolve_settings(given, stored=stored({**STORED, "in_doubt": "hold"}))
    assert (got.in_doubt, got.on_lost, got.max_runtime_s) == ("hold", "resubmit", 60.0)
    plain = resolve_settings(stored=stored({"in_doubt": "hold", "max_runtime_s": 5}))
    assert (plain.in_doubt, plain.on_lost, plain.max_runtime_s) == ("resubmit", "fail", None)


def test_a_missing_null_or_zero_stored_value_falls_back_but_a_zero_budget_is_a_budget() -> None:
    empty = {"rate": None, "concurrency": 0, "max_attempts": None, "budget_usd": None}
    assert resolve_settings(stored=stored(empty)) == Settings()
    assert resolve_settings(stored=stored(empty), manifest=MANIFEST).to_batch() == MANIFEST
    assert resolve_settings(stored=stored({"budget_usd": 0})).budget_usd == 0
    # a rate that does not parse is no rate
    assert resolve_settings(stored=stored({"rate": "fast"})).rate == (20, 10.0)


def test_a_rate_stored_by_an_older_batchgen_as_a_mapping_is_read() -> None:
    got = resolve_settings(stored=stored({"rate": {"requests": 4, "seconds": 2}}))
    assert got.rate == (4, 2.0)
    assert isinstance(got.rate[0], int) and isinstance(got.rate[1], float)


def test_a_stored_budget_that_is_not_finite_is_refused_unless_the_command_line_gives_one() -> None:
    bad = stored({"budget_usd": math.inf}, name="nightly-2024")
    with pytest.raises(UsageError) as caught:
        resolve_settings(stored=bad)
    message = str(caught.value)
    assert "batch nightly-2024 was stored with budget_usd inf" in message
    assert "--budget-usd" in message
    assert resolve_settings(CommandLine(budget_usd=5.0), stored=bad).budget_usd == 5.0


def test_command_line_values_are_kept_as_given() -> None:
    # what `run` stores is what it was given: an int budget stays an int in settings_json
    got = resolve_settings(CommandLine(budget_usd=7), manifest=MANIFEST)
    assert got.to_batch()["budget_usd"] == 7 and isinstance(got.budget_usd, int)


def test_what_a_batch_stores_resolves_back_to_the_same_settings() -> None:
    first = resolve_settings(CommandLine(rate=(3, 1.5), concurrency=8), manifest=MANIFEST)
    again = resolve_settings(stored=stored(first.to_batch()))
    assert again == first


def test_settings_cannot_be_changed_after_they_are_resolved() -> None:
    settings = resolve_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.concurrency = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("given", "option"),
    [
        (CommandLine(budget_usd=math.inf), "--budget-usd"),
        (CommandLine(budget_usd=-1.0), "--budget-usd"),
        (CommandLine(budget_usd=2e9), "--budget-usd"),
        (CommandLine(max_runtime_s=math.nan), "--max-runtime"),
        (CommandLine(wait_lock_s=math.inf), "--wait-lock"),
        (CommandLine(concurrency=0), "--concurrency"),
        (CommandLine(max_attempts=0), "--max-attempts"),
        (CommandLine(rate=(0, 10.0)), "--rate"),
        (CommandLine(rate=(20, math.inf)), "--rate"),
        (CommandLine(rate=(20, 0.0)), "--rate"),
    ],
)
def test_every_amount_of_the_command_line_is_finite_and_in_range(
    given: CommandLine, option: str
) -> None:
    problems = command_line_problems(given)
    assert len(problems) == 1
    assert problems[0].file == "<command line>" and problems[0].message.startswith(option)


def test_a_command_line_in_range_has_no_problem() -> None:
    given = CommandLine(
        rate=(20, 10.0),
        concurrency=1,
        budget_usd=0.0,
        max_attempts=1,
        max_runtime_s=3600.0,
        wait_lock_s=0.0,
    )
    assert command_line_problems(given) == []
    assert command_line_problems(CommandLine()) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, {}),
        ("", {}),
        ("not json", {}),
        ("[1, 2]", {}),
        ('{"concurrency": 3}', {"concurrency": 3}),
    ],
)
def test_a_batch_settings_json_is_read_as_a_mapping_or_nothing(
    text: str | None, expected: dict[str, object]
) -> None:
    assert stored_settings(text) == expected
