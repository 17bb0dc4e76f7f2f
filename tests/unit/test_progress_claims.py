"""What the progress line claims: a rate and an ETA only from real answers."""

from __future__ import annotations

import io

from batchgen.events import RequestEvent
from batchgen.observe.progress import PlainProgress, RequestTally
from tests.support.observe import snap


def test_only_an_http_answer_counts_as_an_answer() -> None:
    tally = RequestTally()
    tally.request(RequestEvent(at=0, method="POST", route="POST /api/v1/runs", status=None))
    assert tally.total == 1 and tally.answered == 0
    tally.request(RequestEvent(at=0, method="POST", route="POST /api/v1/runs", status=500))
    assert tally.answered == 1


def test_a_snapshot_without_an_answer_claims_no_rate_and_no_eta() -> None:
    line = snap(requests_per_s=None, eta_s=None).line()
    assert "req/s" not in line and "no answer from the API yet" in line and "eta ?" in line


def test_the_last_line_is_not_printed_twice() -> None:
    out = io.StringIO()
    progress = PlainProgress(out, every_s=0)
    progress.update(snap(counts={"succeeded": 3}))
    progress.close(snap(counts={"succeeded": 3}))
    progress = PlainProgress(out, every_s=0)
    progress.close(snap(counts={"succeeded": 3}))  # nothing printed before: print it
    assert len(out.getvalue().splitlines()) == 2
