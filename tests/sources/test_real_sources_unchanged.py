"""The real datasets read as before the hostile-input work: caltech101's records, keys, labels
and skip reason (checked against its checksums), and a digest of every record (key, path,
label, split) with the skipped files and warnings of hymenoptera, catvnoncat (a folder and one
file) and builtin:digits, pinned from the reader as it was before that work."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest
from conftest import SHARED

from featurestore.sources import open_source

CALTECH = SHARED / "caltech101"

# sha256 of json.dumps([[key, path relative to the dataset, label, split], ...]) per source
# (with the skipped files and warnings), computed with the reader before this work
PINNED = {
    "hymenoptera_data": (398, "351cb6e3aba389840022eb1f2071167dcbe79b72d20a960bcc3898761bc675c7"),
    "catvnoncat": (259, "3a183e1c23fdb54d25ada5ad9f9a5a588f76c4fc72b9f1dd706136a5fda0cf6c"),
    "catvnoncat/train_catvnoncat.h5": (
        209,
        "af579fa8a959581ebbab6f01fa3e74550b06ded2aa3e4861461ec4794d509263",
    ),
    "builtin:digits": (1797, "199903346e5ba996901dd74937abee77a863365dde44f6f44475bfacf35d518e"),
}


@pytest.mark.skipif(not CALTECH.is_dir(), reason=f"real dataset not found at {CALTECH}")
def test_caltech101_records_match_its_checksums_and_the_extensionless_file_is_skipped() -> None:
    src = open_source(CALTECH)
    assert len(src.records) == 9144 and src.warnings == []
    assert len(src.class_names) == 102 and src.splits == []
    counts = Counter(r.label for r in src.records)
    assert (counts["airplanes"], counts["BACKGROUND_Google"], counts["inline_skate"]) == (
        800,
        467,
        31,
    )
    assert [(s.path, s.reason) for s in src.skipped] == [
        (str(CALTECH / "BACKGROUND_Google" / "tmp"), "not an image file (extension '')")
    ]
    sums = {}
    for line in (SHARED / "caltech101.SHA256SUMS").read_text().splitlines():
        digest, rel = line.split(maxsplit=1)
        sums[str(CALTECH / rel.removeprefix("./"))] = digest
    del sums[str(CALTECH / "BACKGROUND_Google" / "tmp")]
    assert {r.path: r.key for r in src.records} == sums


def _digest(source: str) -> tuple[int, str]:
    src = open_source(source if source.startswith("builtin:") else SHARED / source)
    root = str(SHARED) + "/"
    rows = [[r.key, r.path.removeprefix(root), r.label, r.split] for r in src.records]
    extra = [[s.path.removeprefix(root), s.reason] for s in src.skipped] + [src.warnings]
    return len(rows), hashlib.sha256(json.dumps([rows, extra]).encode()).hexdigest()


@pytest.mark.parametrize("source", sorted(PINNED))
def test_good_sources_give_the_records_they_gave_before(source: str) -> None:
    if not source.startswith("builtin:") and not (SHARED / source).exists():
        pytest.skip(f"real dataset not found at {SHARED / source}")
    assert _digest(source) == PINNED[source]
