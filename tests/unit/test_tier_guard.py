"""The unit tier's guard (tests/unit/conftest.py) refuses what a unit test must not do."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import pytest

from batchgen.clock import FakeClock
from tests.unit.conftest import TierViolation


def test_a_socket_connect_is_refused_before_it_leaves() -> None:
    with socket.socket() as sock, pytest.raises(TierViolation, match="socket connect"):
        sock.connect(("127.0.0.1", 9))


def test_a_subprocess_is_refused() -> None:
    with pytest.raises(TierViolation, match="subprocess"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


def test_real_sleeping_is_refused_and_a_yield_is_not() -> None:
    with pytest.raises(TierViolation, match=r"time\.sleep\(0\.01\)"):
        time.sleep(0.01)
    time.sleep(0)


async def test_asyncio_sleep_is_refused_and_the_fake_clock_moves_instead() -> None:
    with pytest.raises(TierViolation, match=r"asyncio\.sleep\(1\)"):
        await asyncio.sleep(1)
    clock = FakeClock(start=0.0)
    await clock.sleep(3600)  # an hour of virtual time, at once
    assert clock.monotonic() == 3600.0
