"""Several keys in what a run tells the outside: the summary, the notification, the
metrics file (each key by its fingerprint); one key: nothing new."""

from __future__ import annotations

from typing import Any

from batchgen.events import RunSummary
from batchgen.observe.metrics import render, samples_for
from batchgen.observe.notify import payload


def summary(keys: list[dict[str, Any]]) -> RunSummary:
    return RunSummary(
        batch="pooled", exit_code=1, reason="1 job(s) ... (its key 0123456789ab was refused)",
        counts={"succeeded": 3, "running": 1}, in_doubt=0, requests={}, spend_micro_usd=968_000,
        wall_s=2.0, out_dir="videos", started_at=1.0, finished_at=3.0, keys=keys,
    )  # fmt: skip


KEYS = [
    {"key": "0123456789ab", "requests": 5, "refused": "401 invalid_api_key", "runs": 1,
     "spend_usd": 0.242, "spend_micro_usd": 242_000,
     "unfollowed": [{"key": "k1", "idx": 1, "run_id": "run_1", "why": "its key ..."}]},
    {"key": "ba9876543210", "requests": 7, "refused": None, "runs": 3,
     "spend_usd": 0.726, "spend_micro_usd": 726_000, "unfollowed": []},
]  # fmt: skip


def test_the_summary_and_the_notification_carry_each_key() -> None:
    assert summary(KEYS).to_json()["keys"] == KEYS
    assert payload(summary(KEYS))["keys"] == KEYS


def test_the_metrics_file_labels_each_key_by_its_fingerprint() -> None:
    text = render(samples_for(summary(KEYS), []))
    assert 'batchgen_key_runs{batch="pooled",key="0123456789ab"} 1.0' in text
    assert 'batchgen_key_requests_total{batch="pooled",key="ba9876543210"} 7.0' in text
    assert 'batchgen_key_spend_usd{batch="pooled",key="ba9876543210"} 0.726' in text


def test_one_key_adds_nothing() -> None:
    assert "keys" not in summary([]).to_json() and "keys" not in payload(summary([]))
    assert "batchgen_key_" not in render(samples_for(summary([]), []))
