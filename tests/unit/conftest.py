"""The unit tier's promise, enforced: no sockets, no subprocesses, no real waiting.

A unit test that connects a socket, spawns a process or sleeps for real time fails here
with the reason, instead of passing slowly (or flakily) and hiding in the fast tier.
Time moves through the injected clock (`batchgen.clock.FakeClock`); a test that needs
the simulator over loopback or the `batchgen` command belongs in tests/integration or
tests/acceptance. `asyncio.sleep(0)` (a yield to the loop, as `FakeClock.sleep` does)
stays allowed.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest


class TierViolation(AssertionError):
    """A unit test reached for the network, a process or the wall clock."""


def _refuse(what: str) -> NoReturn:
    raise TierViolation(
        f"unit tier: {what}; move the test to tests/integration or tests/acceptance"
    )


def _no_connect(self: socket.socket, *args: Any, **kwargs: Any) -> NoReturn:
    _refuse(f"socket connect to {args[0] if args else kwargs}")


def _no_popen(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> NoReturn:
    _refuse(f"subprocess {args[0] if args else kwargs.get('args')!r}")


_real_sleep = time.sleep
_real_asleep = asyncio.sleep


def _no_sleep(seconds: float) -> None:
    if seconds > 0:
        _refuse(f"time.sleep({seconds}); use batchgen.clock.FakeClock")
    _real_sleep(0)


async def _no_asleep(seconds: float, result: Any = None) -> Any:
    if seconds > 0:
        _refuse(f"asyncio.sleep({seconds}); use batchgen.clock.FakeClock")
    return await _real_asleep(0, result)


@pytest.fixture(autouse=True)
def unit_tier_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the calls a unit test must not make fail loudly, for the test's duration."""
    monkeypatch.setattr(socket.socket, "connect", _no_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _no_connect)
    monkeypatch.setattr(subprocess.Popen, "__init__", _no_popen)
    monkeypatch.setattr(time, "sleep", _no_sleep)
    monkeypatch.setattr(asyncio, "sleep", _no_asleep)
    yield
