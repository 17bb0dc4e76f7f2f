"""The report written in-process from real batches."""

from __future__ import annotations

import json
import re
import urllib.parse
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlmodel import Session, select

from batchgen.report.html import script_json
from batchgen.report.page import LiveReport, write_report
from batchgen.store.schema import Job
from tests.support.reports import (
    BAD_PROMPT,
    INJECTION,
    LONG,
    PROMPTS,
    UNICODE,
    Demo,
    big_batch,
    demo,
    make_demo_batch,
)


class Page(HTMLParser):
    """What a browser would see: elements with attributes, scripts, and the text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[tuple[dict[str, str], str]] = []
        self.text: list[str] = []
        self._in_script: dict[str, str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag == "script":
            self._in_script = a
            self.scripts.append((a, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = None

    def handle_data(self, data: str) -> None:
        if self._in_script is not None:
            attrs, body = self.scripts[-1]
            self.scripts[-1] = (attrs, body + data)
        else:
            self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    d = demo(tmp_path_factory.mktemp("report"))
    assert d.exit_code == 1  # one job fails for good
    return d


def _resolve(report: Path, href: str) -> Path:
    return (report.parent / urllib.parse.unquote(href)).resolve()


def test_the_report_shows_every_job_and_links_only_local_files(ran: Demo) -> None:
    out = write_report(ran.db, ran.batch_id, ran.out_dir / "report.html")
    html = out.read_text(encoding="utf-8")
    page = Page(html)
    text = " ".join(page.text)

    # prompts with markup and unicode are shown as text, never parsed as markup
    for prompt in (INJECTION, UNICODE, LONG, BAD_PROMPT):
        assert prompt in text
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert [a.get("type", "") for a, _ in page.scripts] == ["application/json", ""]
    data = json.loads(page.scripts[0][1])
    assert data == {
        "batch": "demo",
        "jobs": 10,
        "rows": "prompt",
        "cols": "aspect_ratio",
        "counts": {"succeeded": 9, "failed": 1},
    }

    # self-contained: every link is relative (or data:), and resolves to a real file
    for tag, attrs in page.elements:
        for name in ("src", "href", "poster", "data-src", "data-poster"):
            value = attrs.get(name)
            if value is None:
                continue
            assert "://" not in value and not value.startswith("//"), (tag, name, value)
            if not value.startswith("data:"):
                assert _resolve(out, value).is_file(), value
    assert not any(a.get("rel") == "stylesheet" for a in page.all("link"))

    # one lazy video box per succeeded job (the script makes the <video> when it is
    # near the view), with a lazy poster image and a sidecar link
    assert not page.all("video")
    boxes = _boxes(page)
    assert len(boxes) == 9
    for box in boxes:
        assert _resolve(out, box["data-src"]).suffix == ".mp4"
        assert _resolve(out, box["data-poster"]).parent.name == ".posters"
    posters = [a for a in page.all("img") if a.get("loading") == "lazy"]
    assert [a["src"] for a in posters] == [b["data-poster"] for b in boxes]
    sidecars = [a["href"] for a in page.all("a") if a["href"].endswith(".mp4.json")]
    assert len(sidecars) == 9
    assert json.loads(_resolve(out, sidecars[0]).read_text())["run_id"]

    # the grid: rows are the prompts, columns the aspect ratios
    headers = _column_headers(html)
    assert headers == ["prompt \\ aspect_ratio", "16:9", "9:16", "1:1", "7:3"]
    assert len(page.all("tr")) == 1 + len(PROMPTS) + 1
    # the failed job says so, with the API's error
    failed = [a for a in page.all("figure") if "s-failed" in a["class"]]
    assert len(failed) == 1 and "invalid_input" in text and "7:3" in text
    # totals in the header and the two charts
    assert "succeeded 9" in text and "failed 1" in text and "spent $4.84" in text
    assert re.search(r"wall time \d+\.\d s", text), text[:500]
    svgs = re.findall(r"<svg\b.*?</svg>", html, re.S)
    assert len(svgs) == 2 and "n = 9" in svgs[0]  # a generation time per succeeded run
    spend = unescape(svgs[1])
    assert "Spend by aspect_ratio value" in spend and spend.count("<rect") == 4
    for label, usd in (("16:9", "$1.94"), ("9:16", "$1.94"), ("1:1", "$0.97"), ("7:3", "$0.00")):
        assert f"{label}: {usd}" in spend, (label, spend)

    # every clip: index and state; a succeeded one its cost, time to generate and done
    figures = [unescape(f) for f in re.findall(r"<figure\b.*?</figure>", html, re.S)]
    assert len(figures) == 10
    for fig in figures:
        state = re.search(r'class="clip s-(\w+)"', fig)
        assert state is not None
        if state.group(1) == "succeeded":
            assert re.search(r"· \$0\.(48|97) · generated in \d+\.\d s · done in \d", fig), fig
            assert "duration" in fig and ">sidecar<" in fig and "run_" in fig
        else:
            assert '<div class="ph">failed</div>' in fig
            # the API's message, its error code not repeated in front of it
            assert '<div class="error">400 invalid_input Invalid input' in fig


def _boxes(page: Page) -> list[dict[str, str]]:
    return [a for a in page.all("div") if "data-src" in a]


def _column_headers(html: str) -> list[str]:
    head = html[html.index("<thead>") : html.index("</thead>")]
    cells = re.findall(r"<th\b[^>]*>(.*?)</th>", head)
    return [unescape(re.sub(r"<[^>]+>", "", cell)) for cell in cells]


def test_a_report_elsewhere_links_back_to_the_videos(ran: Demo, tmp_path: Path) -> None:
    out = write_report(ran.db, ran.batch_id, tmp_path / "deep" / "sheet.html", posters="inline")
    page = Page(out.read_text(encoding="utf-8"))
    boxes = _boxes(page)
    assert len(boxes) == 9 and all(b["data-src"].startswith("../../") for b in boxes)
    assert all(_resolve(out, b["data-src"]).is_file() for b in boxes)
    assert all(b["data-poster"].startswith("data:image/jpeg;base64,") for b in boxes)


def test_any_axis_can_lay_out_the_grid(ran: Demo, tmp_path: Path) -> None:
    out = write_report(
        ran.db, ran.batch_id, tmp_path / "r.html", rows="aspect_ratio", cols="duration"
    )
    data = json.loads(Page(out.read_text(encoding="utf-8")).scripts[0][1])
    assert (data["rows"], data["cols"]) == ("aspect_ratio", "duration")
    assert _column_headers(out.read_text(encoding="utf-8"))[1:] == ["5", "10"]


def test_a_batch_not_run_yet_shows_pending_cells(tmp_path: Path) -> None:
    db, batch = make_demo_batch(tmp_path / "s.db", tmp_path / "out")
    assert batch.id is not None
    out = write_report(db, batch.id, tmp_path / "r.html")
    page = Page(out.read_text(encoding="utf-8"))
    assert not _boxes(page)
    assert " ".join(page.text).count("queued: not submitted yet") == 10
    assert "wall time -" in " ".join(page.text)


def test_the_live_report_rewrites_at_most_every_interval_and_always_at_the_end(
    tmp_path: Path,
) -> None:
    db, batch = make_demo_batch(tmp_path / "s.db", tmp_path / "out")
    assert batch.id is not None
    path = tmp_path / "live.html"
    live = LiveReport(db, batch.id, path, min_interval_s=60)
    _wait(lambda: live.writes == 1)  # the early page
    assert "queued 10" in " ".join(Page(path.read_text(encoding="utf-8")).text)
    with Session(db) as s:
        job = s.exec(select(Job).where(Job.idx == 9)).one()
        job.state, job.last_error, job.error_code = "failed", "gave up", "boom"
        s.add(job)
        s.commit()
    for _ in range(50):
        live.transition(None)  # type: ignore[arg-type]
    assert live.writes == 1  # the interval holds: no rewrite per transition
    live.finished(None)  # type: ignore[arg-type]
    assert live.writes == 2
    text = " ".join(Page(path.read_text(encoding="utf-8")).text)
    assert "queued 9" in text and "failed 1" in text and "boom: gave up" in text
    assert not list(tmp_path.glob(".live.html.tmp"))


def test_run_with_a_report_keeps_it_up_to_date(tmp_path: Path) -> None:
    d = demo(tmp_path, report_path=tmp_path / "live" / "report.html")
    page = Page((tmp_path / "live" / "report.html").read_text(encoding="utf-8"))
    assert d.exit_code == 1
    assert json.loads(page.scripts[0][1])["counts"] == {"succeeded": 9, "failed": 1}
    assert len(_boxes(page)) == 9


def test_script_json_cannot_close_its_element() -> None:
    text = script_json({"p": "</script><script>alert(1)</script><!-- & \u2028"})
    assert not set("<>&") & set(text) and "\u2028" not in text
    assert json.loads(text) == {"p": "</script><script>alert(1)</script><!-- & \u2028"}


def _wait(predicate, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_five_thousand_jobs_make_one_lazy_page(tmp_path: Path) -> None:
    db, batch = big_batch(tmp_path / "s.db", tmp_path / "out", jobs=5000, files=50)
    assert batch.id is not None
    out = write_report(db, batch.id, tmp_path / "out" / "report.html")
    page = Page(out.read_text(encoding="utf-8"))
    assert len(page.all("figure")) == 5000
    boxes = _boxes(page)
    assert len(boxes) == 5000 - 5000 // 97
    # no <video> until a box is near the view; posters load lazily, one per file
    assert not page.all("video")
    assert len({b["data-poster"] for b in boxes}) == 50
    assert all(a.get("loading") == "lazy" for a in page.all("img"))
    assert len(list((tmp_path / "out" / ".posters").iterdir())) == 50
    data = json.loads(page.scripts[0][1])
    assert data["counts"] == {"succeeded": 4949, "failed": 51}
    assert (data["rows"], data["cols"]) == ("prompt", "aspect_ratio")
    assert len(page.all("tr")) == 1 + 1000
