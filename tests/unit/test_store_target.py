"""Which database a --db names: a postgresql:// URL is recognised (as typed, or after
``Path`` collapsed its ``//``); a file path is a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.store.target import postgres_url

URL = "postgresql://bob:s3cret@db.example:5432/batches"


@pytest.mark.parametrize("given", [URL, Path(URL), str(Path(URL))])
def test_a_postgres_url_is_recognised_with_its_slashes_back(given: Path | str) -> None:
    assert postgres_url(given) == URL


def test_the_short_scheme_is_recognised_too() -> None:
    assert postgres_url(Path("postgres://h/db")) == "postgres://h/db"


@pytest.mark.parametrize(
    "given", ["state.db", "./postgresql.db", "/tmp/postgres/x.db", "postgresql"]
)
def test_a_file_path_is_a_file(given: str) -> None:
    assert postgres_url(Path(given)) is None
