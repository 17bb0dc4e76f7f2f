"""Keys and URLs never shown: masking, header checks, in-process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from batchgen.errors import UsageError
from batchgen.redact import mask_url, mask_urls_in, notify_url_shown, redact_text
from batchgen.run.options import RunOptions, check_api_key, check_base_url, is_loopback_host
from batchgen.sim import SimConfig
from tests.support.nightly import EXAMPLES, parse_crontab
from tests.support.processes import KEY
from tests.support.secrets import PASSWORD, TOKEN


@pytest.mark.parametrize(
    ("key", "said"),
    [
        (KEY + "\r", "ends with a carriage return"),
        (KEY + "\r\n", "ends with a carriage return"),
        (KEY + "\n", "ends with a line break"),
        ("sk-abc\x1bdef0123456", "control characters"),
        ("sk-abc\tdef0123456", "control characters"),
        ("sk-abc def0123456", "contains spaces"),
        (" " + KEY, "contains spaces"),
        ("sk-abc\u2013def0123456", "not ASCII"),
        ("sk-abc\u00a0def0123456", "contains spaces"),
    ],
)
def test_a_key_no_header_can_carry_is_refused_without_quoting_it(key: str, said: str) -> None:
    with pytest.raises(UsageError) as info:
        check_api_key(key)
    message = str(info.value)
    assert said in message and "$RUNBASE_API_KEY" in message and "fix:" in message
    assert key.strip() not in message and "sk-abc" not in message
    assert check_api_key(KEY) == KEY


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{PASSWORD}@127.0.0.1:9",
        f"https://user:{PASSWORD}@runbase.net",
        f"https://{PASSWORD}@runbase.net",
        f"https://user:{PASSWORD}@runbase.net:notaport",
        f"https://user:{PASSWORD}@runbase.net/?q=1",
    ],
)
def test_credentials_in_the_base_url_are_refused_and_never_shown(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError) as by_flag:
        check_base_url(RunOptions(base_url=url))
    monkeypatch.setenv("RUNBASE_BASE_URL", url)
    with pytest.raises(UsageError) as by_env:
        check_base_url(RunOptions())
    assert "--base-url" in str(by_flag.value) and "$RUNBASE_BASE_URL" in str(by_env.value)
    for info in (by_flag, by_env):
        assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:0",
        "http://127.0.0.1:65536",
        "http://[::1",
        "http://exa\x00mple.com",
        "http://example.com\t/x",
        "https://runbase.net#frag",
        "https://",
        "https://runbase.net:-1",
    ],
)
def test_a_base_url_aiohttp_would_refuse_is_refused_up_front(url: str) -> None:
    with pytest.raises(UsageError, match="is not an API base URL"):
        check_base_url(RunOptions(base_url=url, allow_insecure=True))


def test_a_base_url_from_a_windows_file_names_the_carriage_return() -> None:
    for url in ("https://runbase.net\r", "https://runbase.net/\r\n", "https://u:p@h.example\r"):
        with pytest.raises(UsageError, match="carriage return") as info:
            check_base_url(RunOptions(base_url=url))
        assert "dos2unix" in str(info.value) and ":p@" not in str(info.value)


def test_plain_http_is_refused_unless_loopback_or_allow_insecure() -> None:
    for url in (
        "http://runbase.net",
        "http://10.0.0.5:8787",
        "http://[2001:db8::1]/",
        "http://localhost.evil.com",
    ):
        with pytest.raises(UsageError, match="--allow-insecure"):
            check_base_url(RunOptions(base_url=url))
        assert check_base_url(RunOptions(base_url=url, allow_insecure=True)) == url
    for url in (
        "http://127.0.0.1:8787",
        "http://127.9.8.7",
        "http://[::1]:8",
        "http://localhost:1",
        "http://LOCALHOST.",
    ):
        assert check_base_url(RunOptions(base_url=url)) == url
    assert is_loopback_host("::1") and not is_loopback_host("128.0.0.1")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("localhost.example.com")


def test_mask_url_keeps_everything_but_the_password() -> None:
    assert mask_url(f"https://me:{PASSWORD}@cdn.example/a.png?x=1") == (
        "https://me:***@cdn.example/a.png?x=1"
    )
    assert mask_url(f"https://{TOKEN}@host/x") == "https://***@host/x"
    assert mask_url(f"https://me:p@ss@w{PASSWORD}@host/x") == "https://me:***@host/x"
    assert mask_url("https://host/x?token=abc") == "https://host/x?token=abc"
    text = f"Cannot connect to http://a:{PASSWORD}@h:1/x and to ftp://{TOKEN}@h/y; mail a@b.c"
    assert (
        mask_urls_in(text)
        == "Cannot connect to http://a:***@h:1/x and to ftp://***@h/y; mail a@b.c"
    )
    assert (
        redact_text(f"key {KEY} at https://u:{PASSWORD}@h") == "key [redacted] at https://u:***@h"
    )


def test_a_notification_url_shows_only_its_scheme_and_host() -> None:
    assert notify_url_shown(f"https://u:{PASSWORD}@hooks.example.com/T/B/{TOKEN}?t=1") == (
        "https://hooks.example.com/…"
    )
    assert notify_url_shown(f"http://127.0.0.1:8080/{TOKEN}") == "http://127.0.0.1:8080/…"
    assert notify_url_shown(f"https://u:{PASSWORD}@h:badport/{TOKEN}") == "https://h/…"
    assert PASSWORD not in notify_url_shown(f"{PASSWORD}") and TOKEN not in notify_url_shown(TOKEN)


def test_the_example_crontab_loads_a_key_file_with_windows_line_endings(tmp_path: Path) -> None:

    (tmp_path / ".config" / "batchgen").mkdir(parents=True)
    (tmp_path / ".config" / "batchgen" / "key.env").write_bytes(
        f"RUNBASE_API_KEY={KEY}\r\n".encode()
    )
    _, jobs = parse_crontab((EXAMPLES / "crontab").read_text())
    assert len(jobs) == 2
    for job in jobs:
        loads_key = job.split("&& batchgen", 1)[0].replace("cd /srv/batchgen &&", "")
        proc = subprocess.run(
            ["/bin/sh", "-c", loads_key + ' && printf %s "$RUNBASE_API_KEY"'],
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == KEY  # the carriage return is gone: check_api_key takes it


def test_the_simulator_refuses_a_key_no_header_can_carry() -> None:
    for bad in ("sk-abc\x1bdefgh", "sk-abcdef\u2013gh", "sk-abcdefgh\r"):
        with pytest.raises(ValueError, match="printable ASCII"):
            SimConfig(keys=[bad])
