"""Local images: checks, references, public URLs and materialize()."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from batchgen.errors import UsageError
from batchgen.manifest.images import (
    ImageError,
    check_image,
    key_form,
    materialize,
    parse_reference,
    public_url,
    reference,
    sniff,
)
from tests.support.manifests import JPEG, WEBP, png


def test_sniff_knows_jpeg_png_and_webp_by_their_bytes() -> None:
    assert sniff(JPEG[:16]) == "image/jpeg"
    assert sniff(png()[:16]) == "image/png"
    assert sniff(WEBP[:16]) == "image/webp"
    assert sniff(b"GIF89a\x01\x00") is None
    assert sniff(b"RIFF\x00\x00\x00\x00WAVE") is None
    assert sniff(b"") is None


def test_check_image_hashes_a_good_image_and_explains_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "photo.txt"  # the suffix does not matter, the bytes do
    good.write_bytes(WEBP)
    found = check_image(good)
    assert (found.mime, found.size, found.sha256) == (
        "image/webp",
        len(WEBP),
        hashlib.sha256(WEBP).hexdigest(),
    )
    with pytest.raises(ImageError, match="does not exist"):
        check_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not a file"):
        check_image(tmp_path)
    (tmp_path / "a.gif").write_bytes(b"GIF89a" + b"\x00" * 20)
    with pytest.raises(ImageError, match="not a JPEG, PNG or WebP") as info:
        check_image(tmp_path / "a.gif")
    assert "convert" in info.value.fix
    with pytest.raises(ImageError, match="over the 0 MB limit"):
        check_image(good, max_bytes=10)


def test_references_round_trip_and_key_by_hash() -> None:
    ref = reference("pics/a#b.png", "ab" * 32)
    assert parse_reference(ref) == ("pics/a#b.png", "ab" * 32)
    assert key_form(ref) == "sha256:" + "ab" * 32
    assert parse_reference("https://x.example/a.png") is None
    assert key_form("https://x.example/a.png") == "https://x.example/a.png"


def test_public_url_uses_the_deepest_mapped_folder(tmp_path: Path) -> None:
    mapping = {"pics": "https://cdn.example.com/all/", "pics/hi": "https://hi.example.com"}
    assert public_url("pics/a.png", tmp_path, mapping) == "https://cdn.example.com/all/a.png"
    assert public_url("pics/hi/b c.png", tmp_path, mapping) == "https://hi.example.com/b c.png"
    assert public_url("other/a.png", tmp_path, mapping) is None


def test_materialize_inlines_local_images_as_data_uris(tmp_path: Path) -> None:
    data = png()
    (tmp_path / "a.png").write_bytes(data)
    ref = reference("a.png", hashlib.sha256(data).hexdigest())
    stored = {"prompt": "move", "image_urls": [ref, "https://x.example/b.png"]}
    sent = materialize(stored, tmp_path)
    head, _, body = sent["image_urls"][0].partition(",")
    assert head == "data:image/png;base64"
    assert base64.b64decode(body) == data
    assert sent["image_urls"][1] == "https://x.example/b.png"
    assert stored["image_urls"][0] == ref  # the stored input is left alone
    plain = {"prompt": "no image"}
    assert materialize(plain, tmp_path) is plain


def test_materialize_refuses_an_image_that_changed_or_vanished(tmp_path: Path) -> None:
    data = png()
    path = tmp_path / "a.png"
    path.write_bytes(data)
    stored = {"prompt": "m", "image_urls": [reference("a.png", hashlib.sha256(data).hexdigest())]}
    path.write_bytes(png(color=(0, 0, 0)))
    with pytest.raises(UsageError, match="changed since the batch was planned"):
        materialize(stored, tmp_path)
    path.unlink()
    with pytest.raises(UsageError, match="vanished"):
        materialize(stored, tmp_path)
    path.write_bytes(data)
    assert materialize(stored, tmp_path)["image_urls"][0].startswith("data:image/png;base64,")


def test_materialize_resolves_against_the_manifest_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.jpg").write_bytes(JPEG)
    stored = {"prompt": "m", "image_urls": [reference("a.jpg", hashlib.sha256(JPEG).hexdigest())]}
    monkeypatch.chdir(tmp_path)
    assert materialize(stored, tmp_path / "m")["image_urls"][0].startswith("data:image/jpeg;")
