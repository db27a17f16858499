"""The ray engine's cost on one machine, and what the design predicts on a cluster.

Measured (this machine, one run each, fresh caches, same images, backbone and batch size):

    local   ``extract(..., engine="local")``: the local pipeline (one replica per core)
    ray     ``extract(..., engine="ray")``: a Ray started on this machine for the run (all its
            cores), decoders and forward actors as on a cluster, parts written by the actors

For each: wall seconds, images/s, the engine's own time split, and whether the ray engine's
rows equal the local path's bit for bit. The difference is the engine's overhead here: Ray's
start, each actor's start (a process importing torch and building the network), moving
crops between processes through Ray's object store, and one part file per batch per actor.

Modelled, not measured (no cluster was available): the throughput of W forward workers, from
this machine's measured per-image costs (the local run's decode and forward seconds) and the
fixed costs of the ray run, and what 100 million images take at that rate. The model's
assumptions are printed with it.

    python benchmarks/ray_engine.py --backbone efficientnet_lite0 --images 398

Prints the machine, two Markdown tables and the model's inputs. Not a test. Needs the ray
extra (``pip install "featurestore[ray]"``).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import bench_dir, machine, photo_variants, print_machine, print_table

from featurestore.engines.ray import BATCHES_PER_PART
from featurestore.extraction import extract
from featurestore.store import FeatureStore

N_MODEL_IMAGES = 100_000_000


def run(engine: str, folder: Path, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One extraction into a fresh cache: its result and wall seconds."""
    t = time.perf_counter()
    r = extract(
        folder,
        backbone=args.backbone,
        weights=args.weights,
        batch_size=args.batch_size,
        cache_dir=cache,
        engine=engine,
    )
    wall = time.perf_counter() - t
    return {"result": r, "wall": wall}


def measured_row(name: str, out: dict[str, Any], same: str) -> dict[str, Any]:
    r = out["result"]
    t = r.timings
    return {
        "engine": name,
        "workers": r.workers,
        "images": r.n_extracted,
        "wall s": out["wall"],
        "img/s": r.n_extracted / out["wall"],
        "ray start s": t.get("connect", 0.0),
        "run s": t.get("run", 0.0) or (out["wall"] - t.get("compact", 0.0)),
        "compact s": t.get("compact", 0.0),
        "rows = local": same,
    }


def model_rows(per_image_s: float, fixed_s: float, batch_size: int) -> list[dict[str, Any]]:
    """Throughput of W workers that each take ``per_image_s`` CPU (or GPU) seconds an image,
    after ``fixed_s`` seconds of start-up, for 100M images."""
    rows = []
    for workers in (1, 2, 8, 64, 256):
        rate = workers / per_image_s
        seconds = fixed_s + N_MODEL_IMAGES / rate
        rows.append(
            {
                "workers": workers,
                "img/s (model)": rate,
                "100M images (model)": f"{seconds / 3600:.1f} h",
                "parts/s written": rate / (batch_size * BATCHES_PER_PART),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="default")
    p.add_argument("--images", type=int, default=398)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    info = machine()
    print_machine(info)
    folder = photo_variants(args.images, bench_dir() / f"photos-{args.images}")
    print(f"images: {args.images} JPEGs from {folder}")
    print(f"backbone {args.backbone}, batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        local = run("local", folder, Path(tmp) / "local", args)
        load_before_ray = os.getloadavg()[0]
        ray = run("ray", folder, Path(tmp) / "ray", args)
        keys_l, rows_l = FeatureStore(local["result"].store).read_all()
        keys_r, rows_r = FeatureStore(ray["result"].store).read_all()
        same = "yes" if keys_l == keys_r and np.array_equal(rows_l, rows_r) else "NO"
    print(
        f"\n1-minute load average: {info['loadavg_1m_at_start']:.1f} at the start, "
        f"{load_before_ray:.1f} before the ray run, {os.getloadavg()[0]:.1f} at the end\n"
    )
    print_table([measured_row("local", local, "-"), measured_row("ray", ray, same)])

    lt = local["result"].timings
    n = local["result"].n_extracted
    workers = max(1, local["result"].workers)
    # seconds of one replica per image: decoding + forward pass (per replica, as timed)
    per_image = (lt.get("decode", 0.0) + lt.get("forward", 0.0)) * workers / max(1, n)
    fixed = ray["result"].timings.get("connect", 0.0) + max(
        0.0, ray["result"].timings.get("run", 0.0) - n * per_image / workers
    )
    print(
        f"\nModel inputs (measured here): {per_image * 1000:.1f} ms of one core per image "
        f"(decode {lt.get('decode', 0.0) * workers / max(1, n) * 1000:.1f} ms + forward "
        f"{lt.get('forward', 0.0) * workers / max(1, n) * 1000:.1f} ms, local run); fixed "
        f"cost of a ray run here {fixed:.1f} s (Ray start + actor start + what the ray run "
        "took beyond the local per-image cost). Not measured on a cluster: the table assumes "
        "each worker is a CPU core of this speed, decoders keep up, and the shared filesystem "
        "takes the parts as fast as they come (see README 'Scale on paper').\n"
    )
    print_table(model_rows(per_image, fixed, args.batch_size))
    print(
        f"\nA GPU worker: divide the per-image cost by the GPU's speed-up over one core "
        f"(e.g. a GPU at 2,000 img/s is {2000 * per_image:.0f} of these cores)."
    )


if __name__ == "__main__":
    main()
