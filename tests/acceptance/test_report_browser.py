"""The report of a demo batch in real headless Chromium, with the network cut off.

Debian's ``chromium`` (installed by tests/ensure_chromium.sh) plays H.264 MP4, so every
video is checked for real: it loads lazily, plays on hover, and its duration is the
one asked for.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from batchgen.report.page import write_report
from tests.support.reports import BAD_PROMPT, INJECTION, LONG, UNICODE, demo

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium missing: run tests/ensure_chromium.sh"
)


PLAY_EACH = """async () => {
  const out = [];
  for (const v of document.querySelectorAll("video")) {
    v.currentTime = 0;
    await v.play();
    const start = performance.now();
    while (v.currentTime === 0 && performance.now() - start < 5000) {
      await new Promise((r) => setTimeout(r, 20));
    }
    v.pause();
    out.push({ready: v.readyState, time: v.currentTime, error: v.error && v.error.code});
  }
  return out;
}"""


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_report_plays_every_video_and_shows_injected_text_as_text(tmp_path: Path) -> None:
    from playwright.sync_api import Dialog, Request, Route, sync_playwright

    d = demo(tmp_path)
    report = write_report(d.db, d.batch_id, d.out_dir / "report.html")
    asked = {j["idx"]: float(j["duration"]) for j in _durations(d)}
    outside: list[str] = []
    dialogs: list[str] = []
    errors: list[str] = []

    def only_files(route: Route, request: Request) -> None:
        if request.url.startswith("file://"):
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            # no network: page requests other than file:// are aborted (route below),
            # and anything the browser itself might fetch goes to a closed port
            args=[
                *CHROMIUM_ARGS,
                "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=<-loopback>",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 480})
            page.route("**/*", only_files)
            page.on("dialog", on_dialog)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(report.as_uri())

            # injected markup is text: shown literally, no dialog, no extra script
            text = page.inner_text("body")
            for prompt in (INJECTION, UNICODE, LONG[:200]):
                assert prompt in text
            assert page.evaluate("document.scripts.length") == 2
            assert page.evaluate("document.querySelectorAll('table.grid').length") == 1

            # lazy: a box gets its <video> only when it comes near the view
            boxes = page.locator(".vid")
            assert boxes.count() == 9
            assert page.evaluate("document.querySelectorAll('.vid video').length") < 9
            for i in range(boxes.count()):
                boxes.nth(i).scroll_into_view_if_needed()
                boxes.nth(i).hover()  # plays on hover
            page.wait_for_function(
                "() => document.querySelectorAll('.vid video').length === 9 &&"
                " Array.from(document.querySelectorAll('video'))"
                ".every(v => v.readyState >= 1 && v.duration > 0)",
                timeout=15_000,
            )
            states: list[dict[str, Any]] = page.evaluate(
                """Array.from(document.querySelectorAll('video')).map(v => ({
                    idx: Number(v.closest('figure').dataset.idx), ready: v.readyState,
                    duration: v.duration, error: v.error && v.error.code,
                    src: v.currentSrc, poster: v.poster, muted: v.muted, loop: v.loop,
                    inline: v.hasAttribute('playsinline'), preload: v.preload}))"""
            )
            assert len(states) == 9
            for st in states:
                assert st["error"] is None and st["ready"] >= 1, st
                assert st["src"].startswith("file://"), st
                assert st["poster"].endswith(".jpg") and st["preload"] == "none", st
                assert st["muted"] and st["loop"] and st["inline"], st
                assert abs(st["duration"] - asked[st["idx"]]) < 0.5, st
            # the last one hovered is playing
            page.wait_for_function(
                "() => { const v = document.querySelector('video:hover');"
                " return v && !v.paused && v.currentTime > 0; }",
                timeout=10_000,
            )
            # and every one of them plays: a frame decoded (readyState >= 2) and the
            # clock moving, each in turn
            played: list[dict[str, Any]] = page.evaluate(PLAY_EACH)
            assert len(played) == 9
            for st in played:
                assert st["ready"] >= 2 and st["time"] > 0 and st["error"] is None, st

            # the failed job's cell says so, with the API's error, as text
            failed = page.locator("figure.s-failed")
            assert failed.count() == 1 and failed.locator("video").count() == 0
            assert "failed" in failed.locator(".ph").inner_text()
            assert "invalid_input" in failed.inner_text() and BAD_PROMPT in text

            # the filter narrows the grid (debounced)
            page.fill("#filter", "日本語")
            page.wait_for_function(
                "() => document.querySelectorAll('figure.clip:not([hidden])').length === 2"
            )
            assert "2 of 10 jobs shown" in page.inner_text("#shown")
            page.fill("#filter", "")
            page.wait_for_function(
                "() => document.querySelectorAll('figure.clip:not([hidden])').length === 10"
            )

            page.evaluate("window.scrollTo(0, 0)")
            # kept where $BATCHGEN_SCREENSHOT says (pytest's own folders are pruned)
            shot = Path(os.environ.get("BATCHGEN_SCREENSHOT") or tmp_path / "report.png")
            page.screenshot(path=str(shot), full_page=True)

            # prompts as columns: a long prompt's header stays a few lines high (it
            # sticks to the top of the view) and the columns keep the clips' width
            by_aspect = write_report(
                d.db, d.batch_id, d.out_dir / "by-aspect.html", rows="aspect_ratio"
            )
            page.goto(by_aspect.as_uri())
            box = page.evaluate(
                "(() => { const r = document.querySelector('table.grid thead')"
                ".getBoundingClientRect(); return {h: r.height, w: r.width}; })()"
            )
            assert box["h"] < 120 and box["w"] < 1800, box
            assert LONG[:100] in page.inner_text("body")
        finally:
            browser.close()

    data = shot.read_bytes()
    width, height = _png_size(data)
    assert width >= 1280 and height > 480 and len(data) > 20_000
    assert outside == [] and dialogs == [] and errors == []


def _durations(d: Any) -> list[dict[str, Any]]:
    from batchgen.report.export import iter_records

    return [
        {"idx": r["idx"], "duration": r["input"]["duration"]}
        for r in iter_records(d.db, d.batch_id)
    ]
