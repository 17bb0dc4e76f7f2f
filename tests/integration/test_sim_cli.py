"""The simulator command's options, checked in-process."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.errors import UsageError


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--rate", "fast"], "--rate"),
        (["--drop-rate", "1.5"], "--drop-rate"),
        (["--port", "65536"], "--port"),
        (["--port", "-1"], "--port"),
        (["--balance-usd", "inf"], "--balance-usd must be a finite number"),
        (["--spend-limit-usd", "inf"], "--spend-limit-usd must be a finite number"),
        (["--url-ttl", "inf"], "--url-ttl must be a finite number"),
        (["--time-scale", "nan"], "--time-scale"),
        (["--key", "sk-dup-12345678", "--key", "sk-dup-12345678"], "only once"),
        (["--price", "4k/5=1"], "--price: no '4k/5' in the price table"),
        (["--price", "1080p/5=cheap"], "--price '1080p/5=cheap': expected RES/DUR=USD"),
        (["--price", "1080p/5=-1"], "--price: 1080p/5 must be a finite number"),
    ],
)
def test_bad_options_are_refused_before_listening(args: list[str], words: str) -> None:
    result = CliRunner().invoke(app, ["sim", "--port", "0", *args])
    if isinstance(result.exception, UsageError):  # main() turns it into exit 2
        assert words in str(result.exception)
    else:
        assert result.exit_code == 2 and words in result.output
    assert "http://" not in result.output


def test_a_port_in_use_is_refused_with_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(app, ["sim", "--port", port])
    assert isinstance(result.exception, UsageError)  # main() turns it into exit 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in str(result.exception)
    assert "http://" not in result.output
