"""Run a whole table of sweeps (sources x backbones x heads) from a small config.

Writes one combined leaderboard (Markdown, CSV, JSON) with a row per source x feature set x
head, ranked within each source by the sweep's selection rule (CV on the training split; the
held-out split only reports), plus each source's own report folder. Features come through the
cache, so a second run only trains heads.

    python benchmarks/sweep.py                        # the default config below
    python benchmarks/sweep.py --config my.json --out out/sweeps

A config is JSON: {"sources": [{"name": ..., "path": ..., "anchors": {"label": 0.95},
"test_fraction": null, "seed": 0}], "backbones": [...], "combos": [...], "heads": null | [...],
"cv": 5, "grid": true, "scoring": "accuracy", "class_weight": null}. A backbone is a name or
an object of extractor options, e.g. {"backbone": "efficientnet_lite0", "precision": "bf16"}
(two variants of one backbone are labelled by the options that differ).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from featurestore.experiment import Anchor, run_experiment
from featurestore.options import ExtractorOptions
from featurestore.report.rows import accuracy_interval

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DEFAULT_CONFIG: dict[str, Any] = {
    "sources": [
        {
            "name": "hymenoptera",
            "path": str(SHARED / "hymenoptera_data"),
            "anchors": {"ResNet-18 frozen features, published best": 0.9477},
        },
        {
            "name": "catvnoncat",
            "path": str(SHARED / "catvnoncat"),
            "anchors": {
                "raw-pixel logistic regression, published": 0.70,
                "raw-pixel 4-layer network, published": 0.80,
            },
        },
    ],
    "backbones": ["efficientnet_lite0", "efficientnet_lite1"],
    "combos": ["efficientnet_lite0+efficientnet_lite1"],
    "heads": None,
    "cv": 5,
    "grid": True,
}


def _backbone(item: str | dict[str, Any]) -> str | ExtractorOptions:
    return item if isinstance(item, str) else ExtractorOptions.from_json(item)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=None, help="JSON config (default: built in)")
    ap.add_argument("--out", type=Path, default=Path("out/sweeps"))
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args()
    config = json.loads(args.config.read_text()) if args.config else DEFAULT_CONFIG
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for source in config["sources"]:
        path = source["path"]
        if not path.startswith("builtin:") and not Path(path).exists():
            print(f"skip {source['name']}: {path} not found")
            continue
        outcome = run_experiment(
            path,
            out_dir=args.out / source["name"],
            backbones=[_backbone(b) for b in config["backbones"]],
            combos=config["combos"],
            heads=config["heads"],
            cv=config["cv"],
            use_grid=config["grid"],
            scoring=config.get("scoring", "accuracy"),
            class_weight=config.get("class_weight"),
            test_fraction=source.get("test_fraction"),
            seed=source.get("seed", 0),
            anchors=[Anchor(k, v) for k, v in source.get("anchors", {}).items()],
            save_best=False,
            cache_dir=args.cache_dir,
            progress=lambda m, s=source["name"]: print(f"[{s}] {m}"),
            title=f"sweep: {source['name']}",
            extra_provenance={"config": config},
        )
        print(
            f"[{source['name']}] features (extract or cache hit) "
            f"{outcome.seconds['features']:.1f} s, heads {outcome.seconds['heads']:.1f} s"
        )
        for rank, r in enumerate(outcome.results, start=1):
            low, high = accuracy_interval(r) or (None, None)
            rows.append(
                {
                    "source": source["name"],
                    "rank": rank,
                    "chosen": rank == 1,
                    "feature_set": r.feature_set,
                    "head": r.head,
                    "cv_score": round(r.cv_score, 4),
                    "accuracy": round(r.accuracy, 4),
                    "accuracy_ci95": None if low is None else [round(low, 4), round(high, 4)],
                    "balanced_accuracy": round(r.evaluation.summary["balanced_accuracy"], 4),
                    "macro_f1": round(r.macro_f1, 4),
                    "roc_auc": None
                    if r.evaluation.summary.get("roc_auc") is None
                    else round(r.evaluation.summary["roc_auc"], 4),
                    "fit_seconds": round(r.fit_seconds, 2),
                    "n_train": r.n_train,
                    "n_test": r.n_test,
                    "n_features": r.n_features,
                    "params": {k: repr(v) for k, v in r.best_params.items()},
                    "error": None,
                }
            )
        for f in outcome.failures:
            rows.append(
                {
                    "source": source["name"],
                    "rank": None,
                    "chosen": False,
                    "feature_set": f.feature_set,
                    "head": f.head,
                    "error": f.error,
                }
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "combined.json").write_text(json.dumps({"config": config, "rows": rows}, indent=2))
    with open(args.out / "combined.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["source"])
        w.writeheader()
        w.writerows(rows)
    lines = [
        "| source | rank | feature set | head | CV | test acc | 95% CI | macro-F1 | ROC-AUC "
        "| fit s |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["error"]:
            lines.append(
                f"| {r['source']} | failed | {r['feature_set']} | {r['head']} | "
                f"{r['error']} |  |  |  |  |  |"
            )
            continue
        auc = "" if r["roc_auc"] is None else f"{r['roc_auc']:.4f}"
        ci = "" if r["accuracy_ci95"] is None else "{:.4f}-{:.4f}".format(*r["accuracy_ci95"])
        rank = f"**{r['rank']}**" if r["chosen"] else str(r["rank"])
        lines.append(
            f"| {r['source']} | {rank} | {r['feature_set']} | {r['head']} | "
            f"{r['cv_score']:.4f} | {r['accuracy']:.4f} | {ci} | {r['macro_f1']:.4f} | {auc} | "
            f"{r['fit_seconds']:.2f} |"
        )
    table = "\n".join(lines)
    rule = "Ranked within each source by CV on the training split; rank 1 (bold) is chosen."
    (args.out / "combined.md").write_text(f"# Combined leaderboard\n\n{rule}\n\n{table}\n")
    print(table)
    print(
        f"\ntotal {time.perf_counter() - started:.1f} s; wrote {args.out}/combined.{{md,csv,json}}"
    )


if __name__ == "__main__":
    main()
