"""The report at 5,000 jobs: time to write it (cold: posters extracted; warm: cached),
its size, and in headless Chromium the time to load, to scroll to the end and to filter.

    .venv/bin/python -m bench.bench_report [--jobs 5000] [--files 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from batchgen.report.page import write_report
from tests.support.reports import big_batch

CHROMIUM = Path("/usr/bin/chromium")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--files", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db, batch = big_batch(root / "s.db", root / "out", jobs=args.jobs, files=args.files)
        assert batch.id is not None
        out = root / "out" / "report.html"
        for label in ("cold (posters extracted)", "warm (posters cached)"):
            started = time.perf_counter()
            write_report(db, batch.id, out)
            print(f"write_report {args.jobs} jobs, {label}: {time.perf_counter() - started:.2f} s")
        print(f"HTML size: {out.stat().st_size / 1e6:.1f} MB")
        if CHROMIUM.exists():
            _browser(out)
        else:
            print("chromium missing: browser figures skipped")
    return 0


def _browser(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        started = time.perf_counter()
        page.goto(out.as_uri(), wait_until="load")
        print(f"chromium: page loaded in {time.perf_counter() - started:.2f} s")
        made = page.evaluate("document.querySelectorAll('video').length")
        print(f"chromium: <video> elements made after load (lazy, near the view): {made}")
        started = time.perf_counter()
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(200)
        print(f"chromium: scrolled to the end in {time.perf_counter() - started:.2f} s")
        started = time.perf_counter()
        page.fill("#filter", "prompt 999:")
        page.wait_for_function(
            "() => document.getElementById('shown').textContent.startsWith('5 of')"
        )
        took = time.perf_counter() - started
        print(f"chromium: filter applied in {took:.2f} s (with its 0.12 s debounce)")
        browser.close()


if __name__ == "__main__":
    raise SystemExit(main())
