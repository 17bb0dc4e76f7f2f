"""What people and logs see: plain lines without control characters, the request tally."""

from __future__ import annotations

import io
import re

from batchgen.events import RequestEvent
from batchgen.observe.progress import PlainProgress, RequestTally, make_progress
from tests.support.observe import snap


def test_plain_lines_are_timestamped_and_free_of_control_characters():
    out = io.StringIO()
    progress = PlainProgress(out, every_s=0)
    progress.update(snap())
    progress.update(snap())  # same counts: nothing new to say
    progress.close(snap(counts={"succeeded": 10}, note="done"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} batch nightly", lines[0])
    assert "3 queued, 2 running, 5 succeeded" in lines[0]
    assert "1.9/2.0 req/s" in lines[0] and "$2.42 of $10.00" in lines[0] and "eta 2m10s" in lines[0]
    assert not re.search(r"[\x00-\x1f\x7f]", out.getvalue().replace("\n", ""))
    assert lines[1].endswith("| done")


def test_auto_mode_without_a_terminal_is_plain():
    assert isinstance(make_progress("auto", stream=io.StringIO()), PlainProgress)
    assert make_progress("off") is None


def test_the_tally_counts_by_route_and_status():
    tally = RequestTally()
    for status in (200, 200, 429, None):
        tally.request(
            RequestEvent(at=0, method="GET", route="GET /api/v1/runs/{id}", status=status)
        )
    assert tally.by_route == {"GET /api/v1/runs/{id}": {"200": 2, "429": 1, "network": 1}}
    assert tally.total == 4 and tally.per_second() > 0


def test_the_rich_panel_renders_states_rate_spend_and_eta():
    from batchgen.observe.progress import RichProgress

    out = io.StringIO()
    panel = RichProgress(out)
    panel.update(snap(), force=True)
    panel.close(snap(counts={"succeeded": 10}))
    text = out.getvalue()
    for word in ("queued", "running", "succeeded", "requests", "1.9/s of 2.0/s", "$2.42", "eta"):
        assert word in text, word
