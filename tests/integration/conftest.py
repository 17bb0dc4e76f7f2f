"""Integration-tier fixtures: real servers over loopback, real media files."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.files import FileServer, make_mp4


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    """A loopback file server; each test adds its files and their faults."""
    async with FileServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def mp4_16x9() -> bytes:
    """A real 5 s H.264 MP4, 64x36: made once, shared by the download tests."""
    return make_mp4(64, 36, seconds=5.0)
