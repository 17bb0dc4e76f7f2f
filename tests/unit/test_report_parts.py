"""The report's parts on their own: posters from real video files, SVG charts, layout."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from batchgen.report import charts
from batchgen.report.posters import extract_jpeg, poster_for, poster_path
from batchgen.sim.video import TINY_FPS, frame_size, render


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    size = frame_size("9:16", "720p", tiny=True)
    path.write_bytes(render("a red fox", *size, 2.0, TINY_FPS).data)
    return path


def test_a_poster_is_a_small_jpeg_of_the_first_frame(video: Path) -> None:
    data = extract_jpeg(video, max_width=16)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    # the SOF0 marker holds height and width: scaled to 16 wide, the aspect kept
    sof = data.index(b"\xff\xc0")
    height, width = int.from_bytes(data[sof + 5 : sof + 7]), int.from_bytes(data[sof + 7 : sof + 9])
    assert width == 16 and abs(height - 16 * 16 / 9) <= 2


def test_posters_are_cached_by_checksum(video: Path) -> None:
    first = poster_for(video, "ab" * 32)
    assert first == poster_path(video, "ab" * 32) and isinstance(first, Path)
    assert first.parent == video.parent / ".posters"
    first.write_bytes(b"cached")  # a second call must not extract again
    assert poster_for(video, "ab" * 32) == first and first.read_bytes() == b"cached"
    other = poster_for(video, "cd" * 32)  # a new checksum (a replaced video): a new poster
    assert isinstance(other, Path) and other != first and other.read_bytes()[:2] == b"\xff\xd8"
    computed = poster_for(video, None)  # no checksum recorded: the file's own sha256
    assert isinstance(computed, Path) and computed.is_file()


def test_inline_posters_and_files_that_cannot_be_posters(video: Path, tmp_path: Path) -> None:
    inline = poster_for(video, "ab" * 32, mode="inline")
    assert isinstance(inline, str) and inline.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(inline.split(",", 1)[1])[:2] == b"\xff\xd8"
    assert not (video.parent / ".posters").exists()
    assert poster_for(video, "ab" * 32, mode="none") is None
    assert poster_for(tmp_path / "gone.mp4", None) is None
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    assert poster_for(broken, None) is None
    # where .posters cannot be made (a file is in the way), the poster is inlined
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "clip.mp4").write_bytes(video.read_bytes())
    (blocked / ".posters").write_text("not a folder")
    found = poster_for(blocked / "clip.mp4", "ef" * 32)
    assert isinstance(found, str) and found.startswith("data:image/jpeg;base64,")


def test_charts_escape_their_labels_and_handle_no_data() -> None:
    svg = charts.spend_bars([("<script>x</script>", 484_000), ("16:9", 968_000)], title="a&b")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "a&amp;b" in svg
    assert "$0.97" in svg and "$0.48" in svg and svg.count("<rect") == 2
    many = charts.spend_bars([(str(i), i) for i in range(30)], title="t", limit=5)
    assert many.count("<rect") == 5 and "26 others" in many
    assert "nothing spent yet" in charts.spend_bars([], title="t")
    hist = charts.histogram([1.0, 2.0, 2.5, 10.0], title="gen", bins=3)
    assert hist.count("<rect") == 3 and "n = 4" in hist
    assert "no finished runs yet" in charts.histogram([], title="gen")
    assert charts.histogram([5.0, 5.0], title="same").count("<rect") == 2


def test_chart_labels_are_cut_to_fit_and_keep_the_whole_text_as_a_tooltip() -> None:
    wide = "日本語の狐が雪の中を歩く"  # 12 wide characters: 24 narrow ones
    long = "an extremely long prompt about a misty harbour"
    svg = charts.spend_bars([(wide, 1), (long, 2), ("16:9", 3)], title="t")
    # the text shown is cut (wide characters count twice); the tooltip holds it all
    assert f"<title>{wide}</title>日本語の狐が雪の中…</text>" in svg
    assert f"<title>{long}</title>an extremely long p…</text>" in svg
    assert "<title>16:9</title>16:9</text>" in svg
