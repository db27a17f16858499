"""Bad inputs, generated here: every run finishes, stores every good image and lists every bad
file with its reason (summary and --json); the exit code says whether anything was skipped;
--strict stops at the first bad file; an empty source is a clear error, not an empty store.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featurestore.cli import main as cli
from featurestore.decode import DecodeError, decode_bytes, decode_file
from featurestore.extraction import ExtractError, extract
from featurestore.keys import file_key
from featurestore.sources import SourceError, open_source
from featurestore.store import FeatureStore

RED, BLUE = (255, 0, 0), (0, 0, 255)
NON_UTF8 = os.fsdecode(b"latin1-\xe9t\xe9.png")  # a file name that is not valid UTF-8
# Root reads chmod-000 files; dropping the two DAC capabilities makes root obey permissions.
DROP_DAC = [
    "setpriv",
    "--bounding-set",
    "-dac_override,-dac_read_search",
    "--inh-caps",
    "-dac_override,-dac_read_search",
]


# ---------------------------------------------------------------------------- generators
def _encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(size: tuple[int, int] = (20, 16), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def sixteen_bit_png() -> bytes:
    arr = np.array([[0, 257 * 100], [65535, 65535]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    return _encode(Image.fromarray(arr), "PNG")


def grayscale_png() -> bytes:
    return _encode(Image.new("L", (16, 12), 77), "PNG")


def palette_with_transparency_png() -> bytes:
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, *RED] + [0] * (256 * 3 - 6))
    for x in range(8):
        for y in range(16):
            im.putpixel((x, y), 1)  # left half red, right half transparent (index 0)
    return _encode(im, "PNG", transparency=0)


def cmyk_jpeg() -> bytes:
    return _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)


def exif_rotated_jpeg() -> bytes:
    """Stored 32 wide x 16 high, left half red; EXIF orientation 6 (rotate 90 degrees clockwise
    to display): shown 16 wide x 32 high with red on top."""
    im = Image.new("RGB", (32, 16), BLUE)
    im.paste(Image.new("RGB", (16, 16), RED), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(im, "JPEG", quality=95, exif=exif)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, BLUE, (0, 255, 0))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def truncated_jpeg() -> bytes:
    data = _encode(_rgb((64, 64), seed=9), "JPEG", quality=90)
    return data[: len(data) // 2]


def bomb_png(side: int) -> bytes:
    """A tiny PNG whose header claims ``side`` x ``side`` pixels (no pixel data needed: Pillow's
    guard trips when the file is opened)."""
    data = bytearray(_encode(Image.new("1", (8, 8)), "PNG"))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", side, side)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


GOOD = {  # file name -> bytes (all must be stored)
    "rgb.png": lambda: _encode(_rgb(seed=1), "PNG"),
    "photo.jpg": lambda: _encode(_rgb(seed=2), "JPEG", quality=90),
    "deep16.png": sixteen_bit_png,
    "gray.png": grayscale_png,
    "palette.png": palette_with_transparency_png,
    "cmyk.jpg": cmyk_jpeg,
    "rotated.jpg": exif_rotated_jpeg,
    "anim.gif": animated_gif,
    "ñandú-猫.png": lambda: _encode(_rgb(seed=3), "PNG"),
    NON_UTF8: lambda: _encode(_rgb(seed=4), "PNG"),
}

BAD = {  # file name -> (bytes, expected reason); listed but never stored
    "empty.jpg": (b"", "empty file (0 bytes)"),
    "truncated.jpg": (truncated_jpeg(), "cannot decode"),
    "truncated-copy.jpg": (truncated_jpeg(), "cannot decode"),  # same bytes, second path
    "noise.jpg": (np.random.default_rng(7).bytes(3000), "not an image Pillow can identify"),
    "notes.txt": (b"just text\n", "not an image file (extension '.txt')"),
    "text.png": (b"this is text, not a PNG\n" * 20, "not an image Pillow can identify"),
    "bomb.png": (bomb_png(20000), "decompression-bomb"),
    "bomb-warning.png": (bomb_png(10000), "decompression-bomb"),  # warning band: also refused
    os.fsdecode(b"bad-\xff\xfe.jpg"): (b"\x00garbage" * 50, "not an image Pillow can identify"),
}


def make_bad_tree(root: Path, *, unreadable: bool) -> tuple[dict[Path, str], dict[Path, str]]:
    """An image folder with every kind of bad input. Returns (good file -> key, bad path ->
    expected reason). ``unreadable``: also a chmod-000 file and folder (only meaningful when
    the command runs without the DAC capabilities)."""
    good_dir, bad_dir = root / "good", root / "bad"
    good_dir.mkdir(parents=True)
    bad_dir.mkdir()
    good: dict[Path, str] = {}
    for name, make in GOOD.items():
        (good_dir / name).write_bytes(make())
        good[good_dir / name] = file_key(good_dir / name)
    bad: dict[Path, str] = {}
    for name, (data, reason) in BAD.items():
        (bad_dir / name).write_bytes(data)
        bad[bad_dir / name] = reason
    (bad_dir / "loop-a.jpg").symlink_to("loop-b.jpg")
    (bad_dir / "loop-b.jpg").symlink_to("loop-a.jpg")
    bad[bad_dir / "loop-a.jpg"] = bad[bad_dir / "loop-b.jpg"] = "Too many levels of symbolic"
    (bad_dir / "dangling.jpg").symlink_to("no-such-file.jpg")
    bad[bad_dir / "dangling.jpg"] = "cannot read: No such file or directory"
    os.mkfifo(bad_dir / "pipe.jpg")
    bad[bad_dir / "pipe.jpg"] = "not a regular file (a FIFO)"
    (bad_dir / "sub").mkdir()
    (bad_dir / "sub" / "up").symlink_to("../..")  # a folder loop back to the root
    bad[bad_dir / "sub" / "up"] = "symlink loop"
    (root / "empty_class").mkdir()  # warned about, not a file
    (root / "docs").mkdir()  # a class folder with no images
    (root / "docs" / "README.txt").write_text("no images here\n")
    bad[root / "docs" / "README.txt"] = "not an image file"
    if unreadable:
        locked = bad_dir / "locked.jpg"
        locked.write_bytes(GOOD["rgb.png"]())
        locked.chmod(0)
        bad[locked] = "cannot read: Permission denied"
        shut = root / "shut"
        shut.mkdir()
        (shut / "hidden.png").write_bytes(_encode(_rgb(seed=8), "PNG"))
        shut.chmod(0)
        bad[shut] = "cannot list: Permission denied"
    return good, bad


# ---------------------------------------------------------------------------- decoding
def _at(im: Image.Image, fx: float, fy: float) -> np.ndarray:
    """The pixel at fractions (fx, fy) of the width and height (JPEG drafts shrink images)."""
    w, h = im.size
    return np.asarray(im, dtype=int)[int(fy * h), int(fx * w)]


@pytest.mark.parametrize("draft", [None, 8], ids=["full", "draft"])
def test_every_mode_decodes_to_the_right_rgb_pixels(draft: int | None) -> None:
    im = decode_bytes(sixteen_bit_png(), draft_size=draft)  # 16-bit scaled, not clipped
    assert im.mode == "RGB" and list(_at(im, 0.2, 0.2)) == [0] * 3
    assert list(_at(im, 0.7, 0.2)) == [100] * 3 and list(_at(im, 0.2, 0.7)) == [255] * 3
    assert list(_at(decode_bytes(grayscale_png(), draft_size=draft), 0.5, 0.5)) == [77] * 3
    pal = decode_bytes(palette_with_transparency_png(), draft_size=draft)
    assert list(_at(pal, 0.2, 0.5)) == list(RED) and list(_at(pal, 0.8, 0.5)) == [255] * 3
    cmyk = decode_bytes(cmyk_jpeg(), draft_size=draft)
    assert cmyk.mode == "RGB" and np.abs(_at(cmyk, 0.5, 0.5) - RED).max() < 12
    rot = decode_bytes(exif_rotated_jpeg(), draft_size=draft)
    assert rot.size[1] == 2 * rot.size[0], f"EXIF orientation not honoured: {rot.size}"
    assert np.abs(_at(rot, 0.5, 0.2) - RED).max() < 40
    assert np.abs(_at(rot, 0.5, 0.8) - BLUE).max() < 40
    gif = decode_bytes(animated_gif(), draft_size=draft)
    assert gif.mode == "RGB" and list(_at(gif, 0.5, 0.5)) == list(RED)  # the first frame


@pytest.mark.parametrize("name", sorted(k for k in BAD if k.endswith((".jpg", ".png"))))
def test_bad_bytes_raise_decode_error_with_a_reason(name: str) -> None:
    data, reason = BAD[name]
    with pytest.raises(DecodeError) as err:
        decode_bytes(data, draft_size=8)
    assert reason.split(" (")[0] in str(err.value)


def test_unreadable_path_is_a_decode_error(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="cannot read"):
        decode_file(tmp_path / "missing.png")


# ---------------------------------------------------------------------------- the CLI
def _skipped(summary: dict[str, Any]) -> dict[bytes, str]:
    return {os.fsencode(s["path"]): s["reason"] for s in summary["skipped_files"]}


def test_cli_stores_every_good_image_and_lists_every_bad_file(
    tmp_path: Path, run_cli: Any, cli_env: Any, tiny_cli_args: list[str]
) -> None:
    can_drop = shutil.which("setpriv") is not None
    as_root = os.geteuid() == 0
    good, bad = make_bad_tree(tmp_path / "src", unreadable=not as_root or can_drop)
    prefix = DROP_DAC if as_root and can_drop else []
    cache = tmp_path / "cache"
    args = ["extract", tmp_path / "src", *tiny_cli_args, "--batch-size", "4", "--cache-dir", cache]
    try:
        r = run_cli(*args, "--json", prefix=prefix)
        assert r.returncode == 3, r.stderr.decode(errors="replace")
        summary = json.loads(r.stdout)
        listed = _skipped(summary)
        for path, reason in bad.items():
            got = listed.get(os.fsencode(path))
            assert got is not None, f"{path} not listed; listed: {sorted(listed)}"
            assert reason in got, f"{path}: {got!r} does not say {reason!r}"
        assert not {os.fsencode(p) for p in good} & listed.keys()
        assert summary["skipped"] == len(listed) == len(bad)
        assert any("empty_class" in w and "holds no files" in w for w in summary["warnings"])
        store = FeatureStore(summary["store"])
        assert store.keys() == set(good.values())
        assert summary["extracted"] == len(set(good.values()))

        # The human summary, on a terminal that refuses undecodable bytes: every bad file is
        # listed, the exit code still says 3, nothing is extracted twice.
        strict = cli_env(PYTHONIOENCODING="utf-8:strict")
        again = run_cli(*args, env=strict, prefix=prefix)
        text = again.stdout.decode("utf-8")
        assert again.returncode == 3, again.stderr.decode(errors="replace")
        assert "extracted  0" in text and f"reused     {len(set(good.values()))}" in text
        lines = [line for line in text.splitlines() if line.startswith("  - ")]
        assert len(lines) == len(bad)
        for path in bad:
            printable = re.match(r"[ -~]*", path.name).group()  # up to the first odd character
            assert any(printable in line for line in lines), path
    finally:
        for p in (tmp_path / "src" / "shut", tmp_path / "src" / "bad" / "locked.jpg"):
            if p.exists():
                p.chmod(0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="the other test covers this without root")
def test_root_without_setpriv_notes_the_unreadable_case_is_not_tested() -> None:
    if shutil.which("setpriv") is None:
        pytest.skip(
            "root reads chmod-000 files and setpriv is missing: the unreadable-file "
            "case is covered only by FIFO, dangling and looping symlinks"
        )


def test_duplicate_bad_files_are_all_listed(
    tmp_path: Path, make_images: Any, tiny_backbone: dict[str, Any]
) -> None:
    src = tmp_path / "src"
    make_images(src, 3, ("a",))
    data = truncated_jpeg()
    for name in ("a/x.jpg", "a/y.jpg", "b/z.jpg"):
        (src / name).parent.mkdir(exist_ok=True)
        (src / name).write_bytes(data)
    r = extract(src, cache_dir=tmp_path / "c", workers=0, batch_size=2, **tiny_backbone)
    assert sorted(Path(s.path).name for s in r.skipped) == ["x.jpg", "y.jpg", "z.jpg"]
    assert r.n_extracted == 3


# ---------------------------------------------------------------------------- --strict
def test_strict_stops_at_the_first_bad_file_and_keeps_finished_batches(
    tmp_path: Path, make_images: Any, tiny_backbone: dict[str, Any], tiny_cli_args: list[str]
) -> None:
    src = tmp_path / "src"
    make_images(src, 6, ("a",), seed=1)
    (src / "a" / "img_1_0003x.png").write_bytes(b"not a png")  # sorts after the 4th image
    with pytest.raises(ExtractError, match=r"img_1_0003x\.png: not an image .*--strict"):
        extract(
            src, cache_dir=tmp_path / "c", workers=0, batch_size=2, strict=True, **tiny_backbone
        )
    (store,) = (tmp_path / "c").glob("*.h5")
    assert len(FeatureStore(store).keys()) == 4  # the two batches before it are kept

    def cli_extract(*flags: str, cache: str) -> Any:
        args = ["extract", str(src), *tiny_cli_args, "--workers", "0", *flags]
        return CliRunner().invoke(cli, [*args, "--cache-dir", str(tmp_path / cache)])

    r = cli_extract("--strict", cache="c")
    assert r.exit_code == 1 and "img_1_0003x.png" in r.output
    # A file rejected while listing (here by its extension) stops a strict run before any work.
    (src / "a" / "notes.txt").write_text("x")
    r = cli_extract("--strict", cache="c2")
    assert r.exit_code == 1 and "notes.txt" in r.output and not (tmp_path / "c2").exists()
    # Without --strict the same source finishes, with exit code 3.
    r = cli_extract("--json", cache="c")
    assert r.exit_code == 3
    assert json.loads(r.stdout)["skipped"] == 2


# ---------------------------------------------------------------------------- manifests
def test_manifest_naming_missing_files_lists_them_with_their_line(
    tmp_path: Path, make_images: Any, tiny_backbone: dict[str, Any], tiny_cli_args: list[str]
) -> None:
    paths = make_images(tmp_path / "imgs", 3, ("a",))
    manifest = tmp_path / "data.csv"
    manifest.write_text(
        "path,label\n"
        f"{paths[0].relative_to(tmp_path)},a\n"
        "\n"
        "imgs/a/gone.png,a\n"
        f"{paths[1]},a\n"
        "missing/also-gone.jpg,b\n"
        f"{paths[2]},a\n"
    )
    src = open_source(manifest)
    assert {Path(s.path).name: s.reason for s in src.skipped} == {
        "gone.png": "missing file (manifest line 4)",
        "also-gone.jpg": "missing file (manifest line 6)",
    }
    headerless = tmp_path / "plain.csv"
    headerless.write_text(f"{paths[0]},a\nnope.png,a\n")
    assert open_source(headerless).skipped[0].reason == "missing file (manifest line 2)"
    r = CliRunner().invoke(
        cli,
        [
            "extract",
            str(manifest),
            *tiny_cli_args,
            "--workers",
            "0",
            "--json",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert r.exit_code == 3
    summary = json.loads(r.stdout)
    assert summary["extracted"] == 3 and summary["skipped"] == 2
    ok = CliRunner().invoke(
        cli,
        [
            "extract",
            str(tmp_path / "imgs"),
            *tiny_cli_args,
            "--workers",
            "0",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert ok.exit_code == 0  # nothing skipped: exit 0 (and nothing extracted again)


# ---------------------------------------------------------------------------- empty sources
@pytest.mark.parametrize(
    "kind",
    [
        "empty-folder",
        "no-images",
        "only-bad",
        "empty-csv",
        "header-only-csv",
        "csv-all-missing",
        "non-utf8-csv",
    ],
)
def test_an_empty_source_is_a_clear_error_not_an_empty_store(
    kind: str, tmp_path: Path, tiny_cli_args: list[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    if kind == "no-images":
        (src / "docs").mkdir()
        (src / "docs" / "README.txt").write_text("hi")
    elif kind == "only-bad":
        (src / "a").mkdir()
        (src / "a" / "empty.png").write_bytes(b"")
    elif kind.endswith("csv"):
        body = {
            "empty-csv": b"",
            "header-only-csv": b"path,label\n",
            "csv-all-missing": b"gone.png,a\nalso.png,b\n",
            "non-utf8-csv": b"caf\xe9.png,a\n",
        }[kind]
        (src / "m.csv").write_bytes(body)
        src = src / "m.csv"
    with pytest.raises(SourceError) as err:
        open_source(src)
    assert str(src) in str(err.value)
    r = CliRunner().invoke(
        cli, ["extract", str(src), *tiny_cli_args, "--cache-dir", str(tmp_path / "cache")]
    )
    assert r.exit_code == 1 and "error:" in r.output
    assert isinstance(r.exception, SystemExit)  # a message, not a traceback
    assert not list((tmp_path / "cache").glob("*.h5"))
