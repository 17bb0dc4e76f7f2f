"""Where the repository's own files are, whatever tier folder a test lives in."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
