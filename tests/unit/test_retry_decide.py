"""``decide()`` from a table: every error the API documents, every transport failure, per stage.

Each API error is built by the real answer mapping (``error_for``) from the status and
body ``runbase-api.md`` documents, so the table tests what the engine will really meet.
The policy waits without jitter (base 1 s, cap 60 s), so a delay is ``min(60, 2**(n-1))``
for the n-th failure counted. Unless a row says otherwise the failure met is the second
one (``failures=1``) of a job on its first paid attempt.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable

import pytest

from batchgen.errors import (
    BatchgenError,
    LinkExpired,
    TransferCorrupt,
    TransferCut,
    TransportError,
)
from batchgen.files.download import DownloadError
from batchgen.retry import Action, Attempt, Decision, RetryPolicy, Stage, decide
from batchgen.runbase.answers import error_for

POLICY = RetryPolicy(max_attempts=5, base_s=1.0, cap_s=60.0, jitter=False)
SECOND = Attempt(failures=1, attempts=1)

S, P, D, N = Stage.SUBMIT, Stage.POLL, Stage.DOWNLOAD, Stage.NOTIFY
RETRY, REFRESH, RESUBMIT, HOLD = Action.RETRY, Action.REFRESH, Action.RESUBMIT, Action.HOLD
FAIL, STOP_SUB, STOP = Action.FAIL_JOB, Action.STOP_SUBMITTING, Action.STOP_BATCH


def api(status: int, code: str | None, *, method: str = "POST") -> Callable[[], BatchgenError]:
    body = json.dumps({"error": {"message": "m", "code": code}}).encode() if code else b""
    return lambda: error_for(status, body, method=method)


def net(sent: bool) -> Callable[[], BatchgenError]:
    return lambda: TransportError("route: x", sent=sent)


# decisions written short: (action, delay_s, counted, maybe_charged)
def d(action: Action, delay: float = 0.0, counted: bool = False, charged: bool = False) -> Decision:
    return Decision(action, delay, counted, charged)


FAIL_C = d(FAIL, counted=True)
AGAIN = d(RETRY, 2.0, True)  # the second failure of a poll, a download, a notification
STOP_SUB_LATER = d(STOP_SUB, 2.0, True)  # paid runs go on; this request again later

# error, then its decision at submit, poll, download, notify. An API answer is met on
# the request of its stage (POST at submit, GET at poll and at a download's refresh).
# fmt: off
API_TABLE: list[tuple[str, Callable[[], BatchgenError], Decision, Decision, Decision, Decision]] = [
    ("400 invalid_json", api(400, "invalid_json"), FAIL_C, AGAIN, AGAIN, FAIL_C),
    ("400 missing_model", api(400, "missing_model"), FAIL_C, AGAIN, AGAIN, FAIL_C),
    ("400 missing_input", api(400, "missing_input"), FAIL_C, AGAIN, AGAIN, FAIL_C),
    ("400 invalid_input", api(400, "invalid_input"), FAIL_C, AGAIN, AGAIN, FAIL_C),
    ("400 model_not_found", api(400, "model_not_found"), FAIL_C, AGAIN, AGAIN, FAIL_C),
    ("413 too large", api(413, None), FAIL_C, AGAIN, AGAIN, FAIL_C),
    ("404 on a POST (base URL)", api(404, None), FAIL_C, AGAIN, AGAIN, FAIL_C),
    ("401 missing_api_key", api(401, "missing_api_key"), d(STOP), d(STOP), d(STOP), FAIL_C),
    ("401 invalid_api_key", api(401, "invalid_api_key"), d(STOP), d(STOP), d(STOP), FAIL_C),
    ("402 insufficient_balance", api(402, "insufficient_balance"),
     d(STOP_SUB), STOP_SUB_LATER, STOP_SUB_LATER, FAIL_C),
    # one answer to a 403 everywhere (poll and download used to stop the batch)
    ("403 api_key_spend_limit_exceeded", api(403, "api_key_spend_limit_exceeded"),
     d(STOP_SUB), STOP_SUB_LATER, STOP_SUB_LATER, FAIL_C),
    ("403 ip_not_allowed", api(403, "ip_not_allowed"),
     d(STOP_SUB), STOP_SUB_LATER, STOP_SUB_LATER, FAIL_C),
    # a POST never meets it (its 404 is the missing endpoint above)
    ("404 run_not_found", api(404, "run_not_found", method="GET"),
     FAIL_C, d(FAIL), d(FAIL), FAIL_C),
    # a 429 storm the client gave up on: not the job's fault, the first step again
    ("429 RATE_LIMITED", api(429, "RATE_LIMITED"), d(RETRY, 1.0), AGAIN, AGAIN, AGAIN),
    ("429 USAGE_EXCEEDED", api(429, "USAGE_EXCEEDED"),
     d(STOP_SUB), STOP_SUB_LATER, STOP_SUB_LATER, FAIL_C),
    ("500", api(500, None), AGAIN, AGAIN, AGAIN, AGAIN),
    ("502 from a proxy", api(502, None), AGAIN, AGAIN, AGAIN, AGAIN),
    # nothing left: costs the job nothing; the first refusal in a row waits 1 s
    ("refused / DNS / TLS / connect timeout", net(sent=False), d(RETRY, 1.0), AGAIN, AGAIN, AGAIN),
    # sent, no answer: a POST may have charged a run; --in-doubt resubmit resends it
    ("timeout / reset / cut answer after sending", net(sent=True),
     d(RETRY, 2.0, True, True), AGAIN, AGAIN, AGAIN),
]
# fmt: on

CASES = [
    pytest.param(make, stage, want, id=f"{name} @ {stage}")
    for name, make, *wants in API_TABLE
    for stage, want in zip((S, P, D, N), wants, strict=True)
]


@pytest.mark.parametrize(("make", "stage", "want"), CASES)
def test_every_documented_error_at_every_stage(
    make: Callable[[], BatchgenError], stage: Stage, want: Decision
) -> None:
    assert decide(make(), SECOND, stage, POLICY) == want


# What the file host does to a download (never the API): one file's tries.
# fmt: off
FILE_TABLE: list[tuple[str, BaseException, Attempt, Decision]] = [
    ("403 expired link", LinkExpired(403), SECOND, d(REFRESH, counted=True)),
    ("404 expired link", LinkExpired(404), SECOND, d(REFRESH, counted=True)),
    ("410 expired link", LinkExpired(410), SECOND, d(REFRESH, counted=True)),
    # max_attempts refreshes are allowed; the one after fails
    ("expired, 5 refreshes done", LinkExpired(410), Attempt(failures=5), FAIL_C),
    ("expired, 4 refreshes done", LinkExpired(410), Attempt(failures=4), d(REFRESH, counted=True)),
    ("cut short", TransferCut("cut short at 10 of 20 bytes"), SECOND, AGAIN),
    ("5xx from the host", TransferCut("HTTP 503", status=503), SECOND, AGAIN),
    ("416 range not satisfiable", TransferCut("range", status=416), SECOND, AGAIN),
    ("not an MP4", TransferCorrupt("not an MP4"), SECOND, AGAIN),
    ("payload error / reset", TransportError("x", sent=True), SECOND, AGAIN),
    ("refused by the host", TransportError("x", sent=False), SECOND, AGAIN),
    ("the fifth failure", TransferCut("cut"), Attempt(failures=4), FAIL_C),
    # a try that brought new bytes costs nothing: the first step again
    ("cut after progress", TransferCut("cut"), Attempt(failures=0, progressed=True), d(RETRY, 1.0)),
    # the engine's view of one job's download
    ("every try spent", DownloadError("gave up", index=0), SECOND, AGAIN),
    ("disk full", OSError(28, "No space left on device"), SECOND, AGAIN),
    ("disk full, fifth time", OSError(28, "No space left"), Attempt(failures=4), FAIL_C),
    ("run gone on refresh", api(404, "run_not_found", method="GET")(), SECOND, d(FAIL)),
]
# fmt: on


@pytest.mark.parametrize("stage", [P, D])
@pytest.mark.parametrize("code", [(402, "insufficient_balance"), (403, "ip_not_allowed")])
def test_a_refusal_that_lasts_on_gets_stops_the_batch(stage: Stage, code: tuple[int, str]) -> None:
    error = api(*code, method="GET")()
    assert decide(error, Attempt(failures=3), stage, POLICY).action is STOP_SUB
    assert decide(error, Attempt(failures=4), stage, POLICY) == d(STOP, counted=True)
    assert decide(error, Attempt(failures=4), S, POLICY) == d(STOP_SUB)


@pytest.mark.parametrize(
    ("error", "attempt", "want"),
    [pytest.param(e, a, w, id=name) for name, e, a, w in FILE_TABLE],
)
def test_every_file_host_failure(error: BaseException, attempt: Attempt, want: Decision) -> None:
    assert decide(error, attempt, D, POLICY) == want


# Counters and the user's choices.
HOLD_POLICY = dataclasses.replace(POLICY, in_doubt="hold")
RESUBMIT_LOST = dataclasses.replace(POLICY, on_lost="resubmit")
POOL = dataclasses.replace(POLICY, key_pool=True)
PolicyRow = tuple[str, Callable[[], BatchgenError], Stage, Attempt, RetryPolicy, Decision]
# fmt: off
POLICY_TABLE: list[PolicyRow] = [
    ("500, fifth failure", api(500, None), S, Attempt(failures=4), POLICY, FAIL_C),
    ("500, fourth failure", api(500, None), S, Attempt(failures=3), POLICY, d(RETRY, 8.0, True)),
    ("429 storm, 4 failures before", api(429, "RATE_LIMITED"), S, Attempt(failures=4), POLICY,
     d(RETRY, 1.0)),
    ("429 storm, 5 failures before", api(429, "RATE_LIMITED"), S, Attempt(failures=5), POLICY,
     d(FAIL)),
    ("in doubt, fifth time: held", net(sent=True), S, Attempt(failures=4), POLICY,
     d(HOLD, counted=True, charged=True)),
    ("in doubt, --in-doubt hold", net(sent=True), S, Attempt(failures=0), HOLD_POLICY,
     d(HOLD, counted=True, charged=True)),
    ("refused, 5th in a row for 30 s", net(sent=False), S,
     Attempt(refused_in_a_row=4, refused_for_s=30.0), POLICY, d(STOP)),
    ("refused, 5th in a row for 29 s", net(sent=False), S,
     Attempt(refused_in_a_row=4, refused_for_s=29.0), POLICY, d(RETRY, 16.0)),
    ("refused, 2nd for 60 s", net(sent=False), S,
     Attempt(refused_in_a_row=1, refused_for_s=60.0), POLICY, d(RETRY, 2.0)),
    ("lost, --on-lost resubmit", api(404, "run_not_found", method="GET"), P,
     Attempt(attempts=4), RESUBMIT_LOST, d(RESUBMIT)),
    ("lost, --on-lost resubmit, attempts spent", api(404, "run_not_found", method="GET"), P,
     Attempt(attempts=5), RESUBMIT_LOST, d(FAIL)),
    ("poll never gives up", api(500, None), P, Attempt(failures=99), POLICY, d(RETRY, 60.0, True)),
    ("401 with a key pool @ submit", api(401, "invalid_api_key"), S, SECOND, POOL,
     d(Action.SET_KEY_ASIDE)),
    ("401 with a key pool @ poll", api(401, "invalid_api_key"), P, SECOND, POOL,
     d(Action.SET_KEY_ASIDE)),
    ("notify: third 5xx of 3 tries", api(503, None), N, Attempt(failures=2),
     RetryPolicy(max_attempts=3, base_s=0.5, cap_s=10.0, jitter=False), FAIL_C),
    ("notify: second 429", api(429, None), N, Attempt(failures=1),
     RetryPolicy(max_attempts=3, base_s=0.5, cap_s=10.0, jitter=False), d(RETRY, 1.0, True)),
]
# fmt: on


@pytest.mark.parametrize(
    ("make", "stage", "attempt", "policy", "want"),
    [pytest.param(*row[1:], id=row[0]) for row in POLICY_TABLE],
)
def test_counters_and_choices(
    make: Callable[[], BatchgenError],
    stage: Stage,
    attempt: Attempt,
    policy: RetryPolicy,
    want: Decision,
) -> None:
    assert decide(make(), attempt, stage, policy) == want


def test_an_input_gone_at_submit_fails_the_job() -> None:
    assert decide(OSError(2, "gone"), SECOND, S, POLICY) == FAIL_C


def test_a_foreign_error_is_not_decided_but_a_notification_gives_up() -> None:
    for stage in (S, P, D):
        with pytest.raises(ValueError, match="KeyError"):
            decide(KeyError("x"), SECOND, stage, POLICY)
    assert decide(KeyError("x"), SECOND, N, POLICY) == FAIL_C


def test_the_wait_is_jittered_below_the_ceiling_and_seedable() -> None:
    error = api(500, None)()
    one, two = RetryPolicy(rng=random.Random(3)), RetryPolicy(rng=random.Random(3))
    a = [decide(error, Attempt(failures=n), P, one).delay_s for n in range(8)]
    b = [decide(error, Attempt(failures=n), P, two).delay_s for n in range(8)]
    assert a == b
    assert all(0.0 <= s <= min(60.0, 2.0**n) for n, s in enumerate(a))
    assert a != [min(60.0, 2.0**n) for n in range(8)]  # not the ceiling: jittered
