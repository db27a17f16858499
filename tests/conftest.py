"""Shared fixtures: tiny generated images, a tiny fast backbone, the CLI in a subprocess.

Keep this file small and additive: fixtures used by several test modules only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: The real public datasets (``../shared/datasets``); tests that need them skip when absent.
SHARED = REPO.parent / "shared" / "datasets"

# Random weights and a 32 px input: a forward pass of 4 images takes a few milliseconds on CPU.
TINY_BACKBONE = {"backbone": "mobilenet_v3_small", "weights": "none", "input_size": 32}


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches Python in every test process, as in a terminal. A suite started as a
    background job of a shell without job control inherits SIGINT ignored (POSIX), and every
    process it starts keeps it ignored, a multiprocessing fork server included: the Ctrl-C
    tests of ``tests/extraction/test_signals.py`` then lost their signal (exit 0, expected
    130) whenever another module had started the fork server first."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_backbone() -> dict[str, object]:
    """Keyword arguments of ``extract()`` for a tiny, fast extractor (random weights)."""
    return dict(TINY_BACKBONE)


@pytest.fixture(scope="session")
def tiny_cli_args() -> list[str]:
    """The same tiny extractor as ``featurestore extract`` options."""
    b = TINY_BACKBONE
    return [
        "--backbone",
        str(b["backbone"]),
        "--weights",
        str(b["weights"]),
        "--input-size",
        str(b["input_size"]),
    ]


def _make_images(
    root: Path,
    n: int = 12,
    classes: Sequence[str] = ("cat", "dog"),
    *,
    size: tuple[int, int] = (24, 20),
    seed: int = 0,
    ext: str = ".png",
) -> list[Path]:
    """``n`` distinct random RGB images spread round-robin over ``root/<class>/``."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        folder = root / classes[i % len(classes)] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"img_{seed}_{i:04d}{ext}"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def make_images() -> Callable[..., list[Path]]:
    """``make_images(root, n=12, classes=("cat", "dog"), size=(24, 20), seed=0, ext=".png")``."""
    return _make_images


def _cli_env(**extra: str) -> dict[str, str]:
    """Environment for a featurestore subprocess: this checkout first, one thread, no cache."""
    env = {k: v for k, v in os.environ.items() if k != "FEATURESTORE_CACHE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"  # tests share 2 cores; oversubscribed OpenMP crawls
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def cli_env() -> Callable[..., dict[str, str]]:
    """``cli_env(**extra)``: environment for a featurestore subprocess (this checkout first on
    PYTHONPATH, OMP_NUM_THREADS=1, FEATURESTORE_CACHE unset)."""
    return _cli_env


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """``run_cli(*args, cwd=None, timeout=120, env=None, prefix=())``: ``[*prefix]
    python -m featurestore.cli ARGS`` in a subprocess; stdout/stderr are bytes (file names need
    not be UTF-8)."""

    def run(
        *args: str | os.PathLike[str],
        cwd: Path | None = None,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[bytes]:
        cmd = [*prefix, sys.executable, "-m", "featurestore.cli", *map(os.fsencode, args)]
        return subprocess.run(
            cmd, cwd=cwd, env=env or _cli_env(), capture_output=True, timeout=timeout, check=False
        )

    return run


@pytest.fixture(scope="session")
def fork_ctx() -> Any:
    """A multiprocessing context whose children fork from a server that has torch imported:
    a child that runs an extraction starts in a fraction of a second. Targets must be
    module-level functions (the child imports their module)."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["featurestore.pipeline", "torchvision.models"])
    return ctx


def _folder_bytes(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def folder_bytes() -> Callable[[Path], dict[Path, bytes]]:
    """``folder_bytes(root)``: every file under ``root`` and its bytes, to show that an
    operation changed nothing there."""
    return _folder_bytes
