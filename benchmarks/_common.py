"""Shared helpers of the benchmark scripts: machine description, test images, timing.

Never imported by the library.
"""

from __future__ import annotations

import hashlib
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

from featurestore import provenance  # noqa: E402 - after the checkout is on sys.path

HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera_data"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def machine(torch_too: bool = True) -> dict[str, Any]:
    """What the numbers ran on: CPU, cores, memory, load, library versions."""
    info: dict[str, Any] = {
        **provenance.machine(),
        "loadavg_1m_at_start": os.getloadavg()[0],
        "numpy": np.__version__,
    }
    if torch_too:
        import PIL  # noqa: F401 - imported so that its version is recorded
        import torch
        import torchvision  # noqa: F401 - imported so that its version is recorded

        versions = provenance.package_versions(("torch", "torchvision", "pillow"))
        info.update(
            torch=versions["torch"],
            torchvision=versions["torchvision"],
            pillow=versions["pillow"],
            torch_threads=torch.get_num_threads(),
            gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        )
    return info


def print_machine(info: dict[str, Any]) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def print_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """A Markdown table of ``rows`` (dicts), floats rounded sensibly."""
    if not rows:
        return
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_cpu_s() -> float:
    """CPU seconds of finished child processes (e.g. DataLoader workers that have exited)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    t = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t


def best_of(fn: Callable[[], float], repeats: int) -> float:
    return max(fn() for _ in range(repeats))


# ---------------------------------------------------------------------------- images
def real_jpegs(root: Path = HYMENOPTERA) -> list[Path]:
    """The real photos under ``root``, sorted (hymenoptera: 398 JPEGs, ~500x375)."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def presized_copies(folder: Path, short: int, interpolation: str, out: Path) -> Path:
    """The JPEGs of ``folder`` resized so their short side is ``short`` pixels (the extractor's
    resize size, with its ``interpolation``), saved at quality 95, labels and splits kept: the
    same photos as a user who stores them pre-resized would have them. Built once and reused."""
    from PIL import Image, ImageOps

    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
    target = out / f"{folder.name}-short{short}-{interpolation}"
    done = target / ".complete"
    if done.exists():
        return target
    for src in real_jpegs(folder):
        dst = target / src.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            img = ImageOps.exif_transpose(im).convert("RGB")
        w, h = img.size
        scale = short / min(w, h)
        size = (max(short, round(w * scale)), max(short, round(h * scale)))
        img.resize(size, resample[interpolation]).save(dst, "JPEG", quality=95)
    done.write_text("ok\n")
    return target


def photo_variants(n: int, out: Path, root: Path = HYMENOPTERA) -> Path:
    """A folder of ``n`` distinct JPEGs made from the real photos under ``root``.

    The first copy of each photo is the original file; copy ``k`` > 0 is the photo mirrored
    (odd ``k``) and trimmed by ``k`` pixels on one edge, saved with the original's quantisation
    tables and chroma subsampling (``quality="keep"``), so the pixels, size and decode cost stay
    those of real photos while every file has its own content key. Folders ``<label>/`` keep the
    labels. Built once per (n, root) and reused.
    """
    from PIL import Image, ImageOps

    photos = real_jpegs(root)
    tag = hashlib.sha256(f"{root}:{len(photos)}:{n}".encode()).hexdigest()[:10]
    folder = out / f"photos-{n}-{tag}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for j in range(n):
        k, i = divmod(j, len(photos))
        src = photos[i]
        label = src.parent.name
        split = src.parent.parent.name
        dst = folder / split / label / f"{src.stem}_{k}{src.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if k == 0:
            dst.write_bytes(src.read_bytes())
            continue
        with Image.open(src) as im:
            quant = im.quantization
            img = ImageOps.exif_transpose(im).convert("RGB")
            if k % 2:
                img = ImageOps.mirror(img)
            w, h = img.size
            img = img.crop((0, 0, w - k, h)) if k % 4 < 2 else img.crop((0, k, w, h))
            try:
                img.save(dst, "JPEG", qtables=quant, subsampling=_subsampling(im))
            except (ValueError, OSError):
                img.save(dst, "JPEG", quality=90)
    done.write_text("ok\n")
    return folder


def _subsampling(im: Any) -> int:
    from PIL import JpegImagePlugin

    try:
        return int(JpegImagePlugin.get_sampling(im))
    except Exception:  # noqa: BLE001 - unknown sampling: let Pillow choose
        return -1


def synthetic_jpegs(n: int, out: Path, size: tuple[int, int] = (128, 128), seed: int = 0) -> Path:
    """``n`` distinct generated JPEGs (smooth colour fields plus noise), two class folders."""
    from PIL import Image

    tag = f"synth-{n}-{size[0]}x{size[1]}-{seed}"
    folder = out / tag
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        fx, fy, phase = rng.uniform(0.5, 6, 2), rng.uniform(0.5, 6, 2), rng.uniform(0, 6.3, 3)
        base = np.stack(
            [
                np.sin(xx / w * fx[0] * np.pi + phase[c]) * np.cos(yy / h * fy[c % 2] * np.pi)
                for c in range(3)
            ],
            axis=-1,
        )
        img = (127.5 + 100 * base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / ("a" if i % 2 else "b") / f"img{i:06d}.jpg", quality=90)
    done.write_text("ok\n")
    return folder


def bench_dir() -> Path:
    """Where generated benchmark images live (kept between runs)."""
    root = Path(os.environ.get("FEATURESTORE_BENCH_DATA", "/tmp/featurestore-bench-data"))
    root.mkdir(parents=True, exist_ok=True)
    return root
