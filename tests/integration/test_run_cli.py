"""Parsing the run command's options, in-process."""

from __future__ import annotations

import pytest

from batchgen.cli._app import parse_rate
from batchgen.errors import UsageError
from batchgen.run.options import RunOptions, check_base_url


def test_rate_parsing():
    assert parse_rate("20/10s") == (20, 10.0)
    assert parse_rate("20/10") == (20, 10.0)
    assert parse_rate(" 2 / 0.5s ") == (2, 0.5)
    assert parse_rate("100/1m") == (100, 60.0)
    assert parse_rate(None) is None
    for bad in ("fast", "0/10s", "20/0s", "20:10"):
        with pytest.raises(UsageError):
            parse_rate(bad)


def test_only_http_base_urls_with_a_host_are_accepted():
    for bad in (
        "notaurl",
        "ftp://host",
        "http://",
        "http://h:port",
        "https://h/?q=1",
        "http://a b",
    ):
        with pytest.raises(UsageError, match="is not an API base URL"):
            check_base_url(RunOptions(base_url=bad))
    for good in ("https://runbase.net", "http://127.0.0.1:8787", "https://proxy.example/runbase/"):
        assert check_base_url(RunOptions(base_url=good)) == good
