"""A run whose rows are all cached never imports torch, torchvision or timm.

Resolving an extractor (its fingerprint names the store), scanning the source and looking the
keys up in the store need none of them; importing torch alone costs seconds. Every check runs in
a fresh subprocess, so this test process's own imports do not matter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HEAVY = ("torch", "torchvision", "timm")
N_IMAGES = 6

# Runs the CLI (argv after the script) in this process, then reports the heavy modules loaded.
_CLI_PROBE = """
import json, sys
from featurestore.cli import main
sys.argv = ["featurestore", *sys.argv[1:]]
code = 0
try:
    main(prog_name="featurestore")  # the group itself: the entry point would end the process
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch", "torchvision", "timm") if m in sys.modules]
print("PROBE " + json.dumps({"exit": code, "heavy": heavy}))
"""

_API_PROBE = """
import json, sys
from featurestore.api import load_features
from featurestore.extraction import extract
kw = json.loads(sys.argv[3])
r = extract(sys.argv[1], cache_dir=sys.argv[2], **kw)
f = load_features(sys.argv[1], cache_dir=sys.argv[2], **kw)
heavy = [m for m in ("torch", "torchvision", "timm") if m in sys.modules]
print("PROBE " + json.dumps({"extracted": r.n_extracted, "reused": r.n_reused,
                             "rows": list(f.X.shape), "heavy": heavy}))
"""

_RESOLVE_PROBE = """
import json, sys
from featurestore.backbones import BackboneError, list_backbones
from featurestore.extractor import resolve
fps = {}
for b in list_backbones():
    for weights in ("default", "none"):
        fps[b.name + ":" + weights] = resolve(b.name, weights=weights).fingerprint
try:
    resolve("resnet5")
except BackboneError as exc:
    unknown = str(exc)
heavy = [m for m in ("torch", "torchvision", "timm") if m in sys.modules]
print("PROBE " + json.dumps({"n": len(fps), "unknown": unknown, "heavy": heavy}))
"""


def _probe(code: str, *args: str, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    return json.loads(lines[-1][len("PROBE ") :]), done.stdout


@pytest.fixture(scope="module")
def cached(
    tmp_path_factory: pytest.TempPathFactory,
    make_images: Callable[..., list[Path]],
    tiny_cli_args: list[str],
    cli_env: Callable[..., dict[str, str]],
) -> tuple[Path, Path]:
    """(images, cache): a folder of tiny images whose rows the CLI has extracted once."""
    root = tmp_path_factory.mktemp("cache-hit")
    images, cache = root / "images", root / "cache"
    make_images(images, n=N_IMAGES)
    args = ["extract", str(images), *tiny_cli_args, "--cache-dir", str(cache), "--json"]
    report, out = _probe(_CLI_PROBE, *args, env=cli_env())
    assert report["exit"] == 0, out
    assert json.loads(out.splitlines()[0])["extracted"] == N_IMAGES
    assert "torch" in report["heavy"]  # the probe sees torch when it is imported
    return images, cache


def test_cli_cache_hit_never_imports_torch(
    cached: tuple[Path, Path], tiny_cli_args: list[str], cli_env: Callable[..., dict[str, str]]
) -> None:
    images, cache = cached
    args = ["extract", str(images), *tiny_cli_args, "--cache-dir", str(cache), "--json"]
    report, out = _probe(_CLI_PROBE, *args, env=cli_env())
    assert report == {"exit": 0, "heavy": []}, out
    summary = json.loads(out.splitlines()[0])
    assert summary["extracted"] == 0 and summary["reused"] == N_IMAGES
    assert summary["device"] == "auto" and summary["workers"] == 0  # nothing ran anywhere
    # the same with an explicit CPU device, which is reported as before
    report, out = _probe(_CLI_PROBE, *args, "--device", "cpu", env=cli_env())
    assert report == {"exit": 0, "heavy": []}, out
    assert json.loads(out.splitlines()[0])["device"] == "cpu"


def test_api_cache_hit_never_imports_torch(
    cached: tuple[Path, Path],
    tiny_backbone: dict[str, object],
    cli_env: Callable[..., dict[str, str]],
) -> None:
    images, cache = cached
    report, out = _probe(
        _API_PROBE, str(images), str(cache), json.dumps(tiny_backbone), env=cli_env()
    )
    assert report["heavy"] == [], out
    assert report["extracted"] == 0 and report["reused"] == N_IMAGES
    assert report["rows"][0] == N_IMAGES


def test_new_image_imports_torch_and_extracts_only_it(
    cached: tuple[Path, Path],
    make_images: Callable[..., list[Path]],
    tiny_cli_args: list[str],
    cli_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    _, cache = cached
    more = tmp_path / "more"
    make_images(more, n=N_IMAGES)  # the same images (same seed) ...
    make_images(more, n=1, seed=7)  # ... plus one new one
    args = ["extract", str(more), *tiny_cli_args, "--cache-dir", str(cache), "--json"]
    report, out = _probe(_CLI_PROBE, *args, env=cli_env())
    assert report["exit"] == 0 and "torch" in report["heavy"], out
    summary = json.loads(out.splitlines()[0])
    assert (summary["extracted"], summary["reused"]) == (1, N_IMAGES)
    assert summary["device"] == "cpu" and summary["workers"] >= 1


def test_resolving_every_backbone_imports_no_torch(cli_env: Callable[..., dict[str, str]]) -> None:
    report, out = _probe(_RESOLVE_PROBE, env=cli_env())
    assert report["heavy"] == [], out
    assert report["n"] > 100
    assert "unknown backbone 'resnet5'" in report["unknown"]


def test_fp16_on_cpu_is_still_refused(
    cached: tuple[Path, Path], tiny_cli_args: list[str], run_cli: Any
) -> None:
    images, cache = cached
    done = run_cli(
        "extract",
        images,
        *tiny_cli_args,
        "--cache-dir",
        cache,
        "--device",
        "cpu",
        "--precision",
        "fp16",
    )
    assert done.returncode == 1
    assert b"fp16 needs a CUDA device" in done.stderr


def test_importing_the_extract_module_imports_no_torch(
    cli_env: Callable[..., dict[str, str]],
) -> None:
    code = (
        "import sys, featurestore, featurestore.extraction, featurestore.api, featurestore.cli; "
        f"print('PROBE ' + repr([m for m in {HEAVY!r} if m in sys.modules]).replace(\"'\", '\"'))"
    )
    report, out = _probe(code, env=cli_env())
    assert report == [], out
