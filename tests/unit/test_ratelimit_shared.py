"""The key's window file shared by processes: on virtual time, with real files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.runbase.shared_window import (
    STATE_DIR_ENV,
    SharedWindow,
    Taken,
    Window,
    key_fingerprint,
    state_dir,
)
from tests.support.ratelimit import ManualClock, grant_times, max_in_any_window

KEY = "sk-test-0123456789abcdef"
T = TypeVar("T")


class Wall:
    """A wall clock the test moves by hand."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------- where the file is


def test_the_file_is_named_by_the_keys_fingerprint_never_the_key(tmp_path: Path) -> None:
    fingerprint = key_fingerprint(KEY)
    assert len(fingerprint) == 12 and int(fingerprint, 16) >= 0
    window = SharedWindow.for_key(KEY, tmp_path / "state")
    assert window.path == tmp_path / "state" / f"{fingerprint}.window"
    assert not window.path.parent.exists()  # nothing on disk until first used
    window.take(Wall(), slots=20, span=10.0, keep=20)
    assert stat.S_IMODE(window.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(window.path.stat().st_mode) == 0o600
    assert KEY not in window.path.read_text() and "0123456789" not in str(window.path)


def test_state_dir_env_then_xdg_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert state_dir({STATE_DIR_ENV: str(tmp_path / "s"), "XDG_STATE_HOME": "/x"}) == tmp_path / "s"
    assert state_dir({"XDG_STATE_HOME": "/x"}) == Path("/x/batchgen")
    monkeypatch.setenv("HOME", str(tmp_path))
    # the XDG specification: a relative path is invalid and ignored
    assert state_dir({"XDG_STATE_HOME": "relative"}) == tmp_path / ".local/state/batchgen"
    assert state_dir({}) == tmp_path / ".local/state/batchgen"


def test_tests_never_write_to_the_real_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    # tests/conftest.py points every test (and the children that keep XDG_STATE_HOME)
    # at a folder of its own
    base = tmp_path_factory.getbasetemp()
    assert base in state_dir().parents
    assert base in state_dir({"XDG_STATE_HOME": os.environ["XDG_STATE_HOME"]}).parents


# ---------------------------------------------------------------- take and pause


def test_take_gives_n_slots_per_span_then_the_wait_for_the_oldest(tmp_path: Path) -> None:
    wall = Wall()
    window = SharedWindow(tmp_path / "k.window")
    for i in range(3):
        taken = window.take(wall, slots=3, span=1.0, keep=3)
        assert taken.wait == 0.0 and taken.at == wall.t
        wall.t += 0.1 * (i + 1)
    start = wall.t - 0.6
    taken = window.take(wall, slots=3, span=1.0, keep=3)
    assert taken.wait == pytest.approx(start + 1.0 - wall.t)
    assert len(window.peek().sends) == 3  # a refusal records nothing
    wall.t = start + 1.0 + 1e-3
    assert window.take(wall, slots=3, span=1.0, keep=3).wait == 0.0
    assert window.peek().sends[0] == pytest.approx(start + 0.1)  # the oldest one left


def test_a_halved_limit_takes_fewer_but_keeps_the_full_log(tmp_path: Path) -> None:
    wall = Wall()
    window = SharedWindow(tmp_path / "k.window")
    for _ in range(2):
        assert window.take(wall, slots=4, span=1.0, keep=4).wait == 0.0
    assert window.take(wall, slots=2, span=1.0, keep=4).wait > 0  # the cut process waits
    assert window.take(wall, slots=4, span=1.0, keep=4).wait == 0.0
    assert len(window.peek().sends) == 3


def test_a_pause_holds_every_taker_until_it_ends(tmp_path: Path) -> None:
    wall = Wall()
    window = SharedWindow(tmp_path / "k.window")
    window.pause(wall.t + 5.0)
    window.pause(wall.t + 2.0)  # never shortened
    assert window.take(wall, slots=20, span=10.0, keep=20).wait == pytest.approx(5.0)
    wall.t += 5.0
    assert window.take(wall, slots=20, span=10.0, keep=20).wait == 0.0


def test_a_damaged_or_foreign_file_counts_as_empty(tmp_path: Path) -> None:
    wall = Wall()
    path = tmp_path / "k.window"
    window = SharedWindow(path)
    for junk in (b"\x00\xff garbage", b"[1, 2]", b'{"sends": ["x"]}', b'{"sends": [1e999]}'):
        path.write_bytes(junk)
        assert window.take(wall, slots=1, span=1.0, keep=1).wait == 0.0
        assert json.loads(path.read_text())["sends"] == [wall.t]
        wall.t += 2.0


def test_bytes_left_by_a_kill_between_write_and_truncate_are_ignored(tmp_path: Path) -> None:
    wall = Wall()
    path = tmp_path / "k.window"
    body = json.dumps({"sends": [wall.t - 0.5], "pause_until": None})
    path.write_text(body + 'e": [1.0, 2.0], "pause_until": null}')
    assert SharedWindow(path).peek() == Window((wall.t - 0.5,))
    assert SharedWindow(path).take(wall, slots=1, span=1.0, keep=1).wait == pytest.approx(0.5)


def test_sends_from_the_future_count_as_now(tmp_path: Path) -> None:
    # the wall clock was set back an hour: those sends are recent, and bounded
    wall = Wall()
    path = tmp_path / "k.window"
    path.write_text(json.dumps({"sends": [wall.t + 3600.0], "pause_until": None}))
    taken = SharedWindow(path).take(wall, slots=1, span=1.0, keep=1)
    assert taken.wait == pytest.approx(1.0)


def test_a_folder_that_cannot_be_made_is_one_warning_then_this_process_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("a file where the folder should be")
    window = SharedWindow.for_key(KEY, tmp_path / "file" / "state")
    wall = Wall()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert window.take(wall, slots=1, span=1.0, keep=1).wait == 0.0
            window.pause(wall.t + 10)
    assert window.broken
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and STATE_DIR_ENV in warnings[0].getMessage()
    assert KEY not in caplog.text


# ---------------------------------------------------------------- limiters sharing a file


@pytest.fixture
def inline_file_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the limiter's file calls on the loop. Virtual time would otherwise jump to
    the next sleeper while a worker thread is at the file, as real time never does,
    and a grant would come "later" than the slot the file recorded. That the calls
    do run in a worker thread is the last test's point."""

    async def inline(func: Callable[..., T], /, *args: Any, **kw: Any) -> T:
        return func(*args, **kw)

    monkeypatch.setattr(asyncio, "to_thread", inline)


def limiter_on(path: Path, clock: ManualClock, n: int = 5, window_s: float = 1.0) -> RequestLimiter:
    return RequestLimiter(n, window_s, clock=clock, shared=SharedWindow(path))


@pytest.mark.usefixtures("inline_file_calls")
async def test_two_limiters_on_one_file_share_one_budget(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "k.window"
    one, two = limiter_on(path, clock), limiter_on(path, clock)
    times: list[float] = []

    async def send(limiter: RequestLimiter, prio: int) -> None:
        times.append(await limiter.acquire(prio))

    tasks = [asyncio.ensure_future(send(one if i % 2 else two, i % 3)) for i in range(40)]
    await clock.drive(tasks)
    assert len(times) == 40
    assert max_in_any_window(times, 1.0) <= 5  # alone, each would have sent 5 per window
    # and the budget is used: 40 requests at 5 per 1.1 s (the file's window is the
    # window plus two margins) take about 8 windows
    assert max(times) - min(times) < 8 * 1.1 + 0.5
    assert one.stats().sent + two.stats().sent == 40


@pytest.mark.usefixtures("inline_file_calls")
async def test_a_restarted_limiter_knows_the_last_window(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "k.window"
    first = limiter_on(path, clock)
    before = [t for _, t, _ in await grant_times(first, clock, [1] * 5)]
    # the process exits; a new one starts on the same key at once
    clock.t += 0.2
    again = limiter_on(path, clock)
    after = [t for _, t, _ in await grant_times(again, clock, [1] * 5)]
    assert min(after) >= min(before) + 1.0  # not before the first send left the window
    assert max_in_any_window(before + after, 1.0) <= 5


@pytest.mark.usefixtures("inline_file_calls")
async def test_a_429_in_one_process_pauses_the_other(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "k.window"
    one, two = limiter_on(path, clock), limiter_on(path, clock)
    sent = await one.acquire(1)
    pause = one.penalize(3.0, sent_at=sent)
    await clock.settle()
    for _ in range(200):  # the pause is written from a worker thread
        if SharedWindow(path).peek().pause_until > clock.now():
            break
        await asyncio.sleep(0)
    granted = await grant_times(two, clock, [1])
    assert granted[0][1] >= sent + pause


@pytest.mark.usefixtures("inline_file_calls")
async def test_has_slack_counts_the_other_processes_sends(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "k.window"
    one, two = limiter_on(path, clock, n=4), limiter_on(path, clock, n=4)
    await grant_times(one, clock, [1] * 3)
    await grant_times(two, clock, [1])  # two saw the file after one's three sends
    assert two.stats().in_window == 1
    assert not two.has_slack()  # 4 of 4 in the window, though two sent only one
    assert len(SharedWindow(path).peek().sends) == 4


async def test_the_file_is_only_touched_off_the_event_loop(tmp_path: Path) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    class Watched(SharedWindow):
        def take(self, wall: Callable[[], float], *, slots: int, span: float, keep: int) -> Taken:
            seen.append(threading.get_ident())
            return super().take(wall, slots=slots, span=span, keep=keep)

        def pause(self, until: float) -> None:
            seen.append(threading.get_ident())
            super().pause(until)

    clock = ManualClock()
    limiter = RequestLimiter(3, 1.0, clock=clock, shared=Watched(tmp_path / "k.window"))
    await grant_times(limiter, clock, [1] * 6)
    limiter.penalize(None)
    await grant_times(limiter, clock, [1])
    assert seen and loop_thread not in seen


@pytest.mark.usefixtures("inline_file_calls")
async def test_early_polls_leave_a_burst_of_the_shared_window_to_urgent_requests(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    path = tmp_path / "k.window"
    polling = RequestLimiter(8, 1.0, clock=clock, burst=2, shared=SharedWindow(path))
    submitting = RequestLimiter(8, 1.0, clock=clock, burst=8, shared=SharedWindow(path))
    start = clock.t
    early = [t for _, t, _ in await grant_times(polling, clock, [2] * 6)]
    assert len([t for t in early if t < start + 1.0]) == 6  # 6 = 8 minus a burst of 2
    # the other process's submissions still find the last two slots free at once
    urgent = [t for _, t, _ in await grant_times(submitting, clock, [1] * 2)]
    assert max(urgent) < start + 1.0
    assert max_in_any_window(early + urgent, 1.0) <= 8
    # and one more early poll waits for the window, though the process sent only 6
    more = [t for _, t, _ in await grant_times(polling, clock, [2])]
    assert more[0] >= start + 1.0
