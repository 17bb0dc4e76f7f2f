"""Shared fixtures. Everything talks to 127.0.0.1 only."""

from __future__ import annotations

import os

import pytest

# Tests must never reach the real service, whatever the caller's shell exports.
os.environ.pop("RUNBASE_API_KEY", None)
os.environ.pop("RUNBASE_BASE_URL", None)
os.environ.pop("BATCHGEN_DB", None)


@pytest.fixture
def api_key() -> str:
    return "sk-test-0123456789abcdef"
