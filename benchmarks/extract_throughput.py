"""Extraction throughput side by side, on the same images, backbone and batch size, in one run.

    a   the forward pass alone on already-decoded uint8 batches (the ceiling): the extractor's
        network (BatchNorm folded) in channels-last, with the allocator setting ``extract`` uses
        (``featurestore.pipeline.heap_allocations``), measured as
        a1  one model, torch's default threads (what ``model(x)`` on a batch gives), and
        a*  the arrangement ``extract`` uses on CPU, minus decoding: one forked single-threaded
            replica per core (``featurestore.runtime.cpu_replica_workers``), the fastest found;
        the default (NCHW) layout of a1 is shown too;
    b   ``featurestore extract`` end to end, files -> rows in a fresh store (scan, hash, decode,
        forward, write, compact);
    c   the tutorials' naive loop: open one image, transform, ``model(x[None])``, to numpy (the
        library's own network as built, fp32, default layout);
    d   img2vec_pytorch ``get_vec`` on batches of the same images (its model built with
        ``weights=None``: nothing downloads here; for EfficientNet-Lite its efficientnet_b0 slot
        gets the Lite network, the hook on the last 1280x7x7 activation);
    e   ``extract`` again on the same images (every row a cache hit);
    b'  ``extract`` of the same photos stored pre-resized (short side = the extractor's resize
        size, JPEG quality 95): what b is once decoding and resizing shrink to a small decode
        (skip with ``--skip presized``).

Images: ``--images N`` distinct JPEGs made from the real photos of ``--photos`` (default the
398 hymenoptera JPEGs, ~500x375): the originals first, then mirrored/trimmed copies re-encoded
with the originals' quantisation tables (see ``benchmarks/_common.py``). With ``--precision
bf16`` (or ``fp16``) the script also extracts in fp32 and reports the speed-up, the mean cosine
similarity of the rows to the fp32 rows and a logistic-regression head's validation accuracy
on the real hymenoptera split in both precisions.

    python benchmarks/extract_throughput.py --backbone efficientnet_lite0 --precision fp32
    python benchmarks/extract_throughput.py --backbone resnet50 --precision bf16 --images 600

Prints the machine, a Markdown table, the ratios and the time split of b. Not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    HYMENOPTERA,
    bench_dir,
    children_cpu_s,
    machine,
    photo_variants,
    presized_copies,
    print_machine,
    print_table,
    real_jpegs,
    self_cpu_s,
)

from featurestore.extraction import extract
from featurestore.extractor import resolve
from featurestore.pipeline import _Collate, _ImageDataset, heap_allocations
from featurestore.runtime import cpu_replica_workers
from featurestore.sources import Source, open_source
from featurestore.store import FeatureStore


# ---------------------------------------------------------------------------- a: forward only
def decoded_batches(ex: Any, folder: Path, batch_size: int, n_batches: int) -> list[torch.Tensor]:
    src = open_source(folder)
    records = src.records[: batch_size * n_batches]
    ds = _ImageDataset(records, src.loader, ex.preprocess)
    collate = _Collate(batch_size)
    out = []
    for s in range(0, len(records) - batch_size + 1, batch_size):
        _, batch, _ = collate([ds[i] for i in range(s, s + batch_size)])
        out.append(batch)
    return out


def forward_rate(model: Any, batches: list[torch.Tensor], seconds: float, device: str) -> float:
    """Images/s of ``model`` over ``batches`` (cycled) for about ``seconds``, after a warm-up."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        for b in batches[:2]:
            model(b.to(device))
        sync()
        n, t = 0, time.perf_counter()
        while True:
            for b in batches:
                model(b.to(device, non_blocking=True))
                n += b.shape[0]
                if time.perf_counter() - t > seconds and n >= 3 * b.shape[0]:
                    sync()
                    return n / (time.perf_counter() - t)


def replica_rate(model: Any, batches: list[torch.Tensor], seconds: float, replicas: int) -> float:
    """Images/s of ``replicas`` forked processes, each running the model single-threaded.

    The arrangement ``extract`` uses on CPU (``featurestore.runtime.cpu_replica_workers``), minus
    the decoding. Every process starts together after a warm-up; a batch begun before the
    deadline is counted and waited for.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    ready, go, out = ctx.Barrier(replicas + 1), ctx.Event(), ctx.Queue()

    def work(k: int) -> None:
        torch.set_num_threads(1)
        with torch.inference_mode():
            model(batches[k % len(batches)])  # warm-up
            ready.wait()
            go.wait()
            n, i, t = 0, k, time.perf_counter()
            while time.perf_counter() - t < seconds:
                model(batches[i % len(batches)])
                n += batches[0].shape[0]
                i += replicas
            out.put((n, time.perf_counter() - t))

    procs = [ctx.Process(target=work, args=(k,)) for k in range(replicas)]
    for p in procs:
        p.start()
    ready.wait()
    go.set()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(n for n, _ in results) / max(t for _, t in results)


# ---------------------------------------------------------------------------- c: naive loop
def naive_rate(ex: Any, paths: list[Path], device: str) -> float:
    """The tutorial loop: one image at a time through the network as its library builds it."""
    from PIL import Image
    from torchvision import transforms

    model = ex.build(device, channels_last=False, fold_batchnorm=False).eval()
    pre = ex.preprocess
    tf = transforms.Compose(
        [
            transforms.Resize(
                pre.resize_size, interpolation=transforms.InterpolationMode(pre.interpolation)
            ),
            transforms.CenterCrop(pre.crop_size),
            transforms.PILToTensor(),  # the network normalises: same numbers as ToTensor+Normalize
        ]
    )
    with torch.inference_mode():
        model(tf(Image.open(paths[0]).convert("RGB"))[None].to(device))  # warm-up
        t = time.perf_counter()
        for p in paths:
            x = tf(Image.open(p).convert("RGB"))
            model(x[None].to(device)).cpu().numpy()
        return len(paths) / (time.perf_counter() - t)


# ---------------------------------------------------------------------------- d: img2vec
def img2vec_model(backbone: str, weights: str, device: str) -> Any:
    """An Img2Vec for ``backbone`` whose model is built without downloading anything."""
    import torchvision
    from img2vec_pytorch import img_to_vec

    from featurestore.backbones import build_model, get_backbone

    def offline(name: str) -> Any:
        return lambda weights=None, **kw: getattr(torchvision.models, name)(weights=None, **kw)

    known = set(torchvision.models.list_models())
    for name in dir(img_to_vec):  # every model constructor img2vec imports: weights=None
        if name in known:
            setattr(img_to_vec, name, offline(name))
    cuda = device.startswith("cuda")
    if backbone.startswith("efficientnet_lite"):
        vec = img_to_vec.Img2Vec(cuda=cuda, model="efficientnet_b0")
        lite = build_model(get_backbone(backbone), weights).to(vec.device).eval()
        vec.model = lite
        vec.extraction_layer = lite.bn2  # conv_head -> bn2 (BN + ReLU6): (B, 1280, 7, 7)
        return vec
    return img_to_vec.Img2Vec(cuda=cuda, model=backbone)


def img2vec_rate(vec: Any, paths: list[Path], batch_size: int) -> float:
    from PIL import Image

    vec.get_vec([Image.open(p).convert("RGB") for p in paths[:batch_size]])  # warm-up
    t = time.perf_counter()
    for s in range(0, len(paths), batch_size):
        vec.get_vec([Image.open(p).convert("RGB") for p in paths[s : s + batch_size]])
    return len(paths) / (time.perf_counter() - t)


# ---------------------------------------------------------------------------- b, e: extract
def run_extract(
    folder: Path | Source,
    cache: Path,
    args: argparse.Namespace,
    precision: str,
) -> tuple[Any, float, float, float]:
    """``extract`` of ``folder`` (a path or an opened Source): (result, wall seconds, worker CPU
    seconds, main-process CPU seconds)."""
    c0, s0 = children_cpu_s(), self_cpu_s()
    t = time.perf_counter()
    r = extract(
        folder,
        backbone=args.backbone,
        weights=args.weights,
        precision=precision,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        cache_dir=cache,
    )
    wall = time.perf_counter() - t
    return r, wall, children_cpu_s() - c0, self_cpu_s() - s0


# ---------------------------------------------------------------------------- precision cost
def head_accuracy(store: FeatureStore, records: list[Any]) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = [r for r in records if r.split == "train" and r.label]
    val = [r for r in records if r.split == "val" and r.label]
    xtr, xva = store.read([r.key for r in train]), store.read([r.key for r in val])
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=0.1))
    head.fit(xtr, [r.label for r in train])
    return float(np.mean(head.predict(xva) == np.array([r.label for r in val])))


def precision_cost(args: argparse.Namespace, caches: dict[str, Path]) -> dict[str, float]:
    """Cosine of the rows to fp32 rows and head accuracy in both, on the real photos."""
    src = open_source(args.photos)
    out: dict[str, float] = {}
    stores = {}
    for prec, cache in caches.items():
        run_extract(src, cache, args, prec)  # cache hits for photos the benchmark set holds
        stores[prec] = FeatureStore.for_spec(
            cache, resolve(args.backbone, weights=args.weights, precision=prec).spec
        )
    held = stores["fp32"].keys() & stores[args.precision].keys()
    keys = sorted({r.key for r in src.records} & held)  # decodable photos only
    records = [r for r in src.records if r.key in held]
    ref = stores["fp32"].read(keys)
    low = stores[args.precision].read(keys)
    cos = (ref * low).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(low, axis=1))
    out["rows"] = len(keys)
    out["cosine_mean"] = float(cos.mean())
    out["cosine_min"] = float(cos.min())
    if any(r.split == "val" for r in records):
        out["head_acc_fp32"] = head_accuracy(stores["fp32"], records)
        out[f"head_acc_{args.precision}"] = head_accuracy(stores[args.precision], records)
    return out


# ---------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument(
        "--weights",
        default=None,
        help="default: the packaged weights for EfficientNet-Lite, else 'none'",
    )
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images", type=int, default=2000, help="distinct JPEGs for a, b and e")
    p.add_argument("--naive-images", type=int, default=320, help="images for c and d")
    p.add_argument("--photos", type=Path, default=HYMENOPTERA, help="folder of real photos")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=12.0, help="timing window of each a")
    p.add_argument(
        "--skip", default="", help="comma list of: layout, naive, img2vec, precision, presized"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    if args.weights is None:
        args.weights = "default" if args.backbone.startswith("efficientnet_lite") else "none"
    skip = set(filter(None, args.skip.split(",")))
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)

    info = machine()
    print_machine(info)
    folder = photo_variants(args.images, bench_dir(), args.photos)
    paths = real_jpegs(folder)
    print(
        f"images: {len(paths)} JPEGs in {folder} (from {args.photos}); backbone "
        f"{args.backbone} weights={args.weights} precision={args.precision} "
        f"batch={args.batch_size} device={args.device}"
    )
    ex = resolve(args.backbone, weights=args.weights, precision=args.precision)
    rows: list[dict[str, Any]] = []
    res: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}}

    batches = decoded_batches(ex, folder, args.batch_size, 8)
    replicas = cpu_replica_workers() if args.device == "cpu" else 0
    cpu = args.device == "cpu"
    with heap_allocations(cpu):  # the ceiling gets every advantage extract has
        model = ex.build(args.device)
        rates = {"a1": forward_rate(model, batches, args.seconds, args.device)}
        if "layout" not in skip:
            nchw = ex.build(args.device, channels_last=False)
            rates["a1_nchw"] = forward_rate(nchw, batches, args.seconds / 2, args.device)
            del nchw
        if replicas:
            rates["a_replicas"] = replica_rate(model, batches, args.seconds, replicas)

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        cache = Path(tmp) / args.precision
        r, wall_b, workers_cpu, main_cpu = run_extract(folder, cache, args, args.precision)
        rates["b"] = r.n_extracted / wall_b
        t = time.perf_counter()
        r2 = extract(
            folder,
            backbone=args.backbone,
            weights=args.weights,
            precision=args.precision,
            batch_size=args.batch_size,
            device=args.device,
            cache_dir=cache,
        )
        wall_e = time.perf_counter() - t
        assert r2.n_extracted == 0, "the second run should be all cache hits"
        rates["e"] = r2.n_reused / wall_e
        # a again after b: the machine's speed drifts; the ceiling is the best of both
        with heap_allocations(cpu):
            again = forward_rate(model, batches, args.seconds / 2, args.device)
            rates["a1"] = max(rates["a1"], again)
            if replicas:
                again = replica_rate(model, batches, args.seconds / 2, replicas)
                rates["a_replicas"] = max(rates["a_replicas"], again)
        del model
        if "presized" not in skip:
            pre = ex.spec["preprocess"]
            small = presized_copies(folder, pre["resize"], pre["interpolation"], bench_dir())
            rp, wall_p, _, _ = run_extract(small, Path(tmp) / "presized", args, args.precision)
            rates["b_presized"] = rp.n_extracted / wall_p
            res["presized_timings"] = rp.timings
            res["presized_workers"] = rp.workers
        naive_paths = paths[: args.naive_images]
        if "naive" not in skip:
            ex32 = resolve(args.backbone, weights=args.weights, precision="fp32")
            rates["c"] = naive_rate(ex32, naive_paths, args.device)
            if args.precision != "fp32":
                rates["c_same_precision"] = naive_rate(ex, naive_paths, args.device)
        if "img2vec" not in skip:
            try:
                vec = img2vec_model(args.backbone, args.weights, args.device)
                rates["d"] = img2vec_rate(vec, naive_paths, args.batch_size)
                del vec
            except (KeyError, ImportError) as exc:
                print(f"d: img2vec_pytorch cannot run {args.backbone}: {exc}")
        cost: dict[str, float] = {}
        if args.precision != "fp32" and "precision" not in skip:
            cache32 = Path(tmp) / "fp32"
            r32, wall32, _, _ = run_extract(folder, cache32, args, "fp32")
            rates["b_fp32"] = r32.n_extracted / wall32
            ex32 = resolve(args.backbone, weights=args.weights, precision="fp32")
            b32 = decoded_batches(ex32, folder, args.batch_size, 4)
            with heap_allocations(cpu):
                m32 = ex32.build(args.device)
                rates["a1_fp32"] = forward_rate(m32, b32, args.seconds / 2, args.device)
                del m32
            cost = precision_cost(args, {"fp32": cache32, args.precision: cache})

    ceiling = max(v for k, v in rates.items() if k.startswith("a") and not k.endswith("fp32"))
    labels = {
        "a1": "a  forward only, 1 model, default threads, channels-last",
        "a1_nchw": "a  forward only, 1 model, default threads, NCHW",
        "a_replicas": f"a* forward only, {replicas} processes x 1 thread, channels-last",
        "b": "b  featurestore extract, files -> store",
        "c": "c  naive loop (fp32, library network, NCHW)",
        "c_same_precision": f"c  naive loop ({args.precision})",
        "d": "d  img2vec_pytorch get_vec (fp32, batches)",
        "e": "e  featurestore extract again (cache hit)",
        "b_presized": "b' featurestore extract, the same photos stored pre-resized",
        "b_fp32": "b  featurestore extract in fp32",
        "a1_fp32": "a  forward only in fp32 (1 model, channels-last)",
    }
    for k, label in labels.items():
        if k in rates:
            rows.append({"run": label, "img/s": rates[k], "x ceiling": rates[k] / ceiling})
    print()
    print_table(rows)
    ratios = {"b/a1": rates["b"] / rates["a1"], "b/a_ceiling": rates["b"] / ceiling}
    if "b_presized" in rates:
        ratios["b'/a1"] = rates["b_presized"] / rates["a1"]
        ratios["b'/a_ceiling"] = rates["b_presized"] / ceiling
    for k in ("c", "c_same_precision", "d"):
        if k in rates:
            ratios[f"b/{k}"] = rates["b"] / rates[k]
    if "b_fp32" in rates:
        ratios[f"speed-up b {args.precision}/fp32"] = rates["b"] / rates["b_fp32"]
        ratios[f"speed-up a {args.precision}/fp32"] = rates["a1"] / rates["a1_fp32"]
    print()
    print("ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    if "presized_timings" in res:
        # the timings are averages over the workers: times the workers, per image
        t_pre = res["presized_timings"]
        per = 1e3 * max(1, res["presized_workers"]) / max(1, r.n_extracted)
        print(
            "b' CPU ms per image, all workers: "
            + ", ".join(f"{k} {per * t_pre.get(k, 0.0):.2f}" for k in ("decode", "forward"))
        )
    timings = dict(r.timings)
    split = {
        "wall": wall_b,
        **{
            k: timings.get(k, 0.0)
            for k in (
                "scan",
                "lookup",
                "build",
                "decode",
                "forward",
                "load_wait",
                "write_wait",
                "compact",
            )
        },
        "worker_processes_cpu": workers_cpu,
        "main_process_cpu": main_cpu,
    }
    print()
    print(
        f"time split of b ({r.n_extracted} images, {r.workers} worker processes; with replica "
        "workers each decodes and runs the network: decode and forward are per worker, "
        "load_wait and write_wait are the main process waiting); CPU seconds are summed:"
    )
    print_table(
        [
            {"stage": k, "seconds": v, "ms/image": 1e3 * v / max(1, r.n_extracted)}
            for k, v in split.items()
        ]
    )
    if cost:
        print()
        print(
            f"precision cost ({args.precision} vs fp32, {int(cost['rows'])} real photos): "
            + ", ".join(f"{k} = {v:.4f}" for k, v in cost.items() if k != "rows")
        )
    res.update(
        rates=rates, ratios=ratios, split_b=split, precision_cost=cost, n_images=r.n_extracted
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
