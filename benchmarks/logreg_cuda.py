"""Logistic regression with its regularisation search at a million rows: issue 11's CUDA check.

The target (issue 11): ``LinearHeadCV(loss="log_loss")`` (the sweep's ``logreg`` head: C over
1e-6..1e6, a coarse pass and a refinement, every fold solved as one batched problem, then the
refit at the chosen C) on 1,000,000 x 2,048 rows of 1,000 classes in at most 60 s on a CUDA
device. Rows: ``heads_scale.hard``'s recipe (overlapping class centres in 64 latent
dimensions, a random map to the width plus noise, ReLU, 5% of labels flipped), drawn with torch
on the device, then a stratified 80/20 split; the head is fitted on the 80% and scored once on
the 20%.

Each run is ``ROWS:FOLDS:PRECISION``: ``FOLDS`` 5 is the head's default (5 stratified folds;
the search's products then cover 5 x 1,000 outputs); 1 is one stratified 80/20 validation
split of the training rows (the CLIP linear-probe protocol's single validation split). The
precision ``fp32`` is the library's default; ``tf32`` lets CUDA's matrix products use
TensorFloat-32 (``torch.backends.cuda.matmul.allow_tf32``), which the library does not set
itself. Each run is a fresh child process (its own CUDA context and memory), stopped when the
``--budget`` left runs out (reported as "stopped"). Per run it prints the fit's seconds (search
and refit; the rows already in host memory, as a user's would be), the refit's share, the
chosen C, the CV and test accuracy, the solver's objective evaluations, an estimate of the
matrix-product work (2 products of rows x width x outputs per evaluation, each over the rows
its fits train on) and the peak device memory.

    PYTHONPATH=. python3 benchmarks/logreg_cuda.py --out $OUT/logreg.jsonl   # on a GPU machine
    python benchmarks/logreg_cuda.py --device cpu --runs 20000:5:fp32 --width 256 --classes 100

Not a test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from typing import Any

import numpy as np
from _common import machine, print_machine, print_table
from heads_scale import COLUMN_NOISE, FLIPPED, LATENT, SPREAD


def hard_rows(n: int, d: int, k: int, seed: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """``heads_scale.hard``'s recipe (its constants) drawn with torch on ``device``: a million
    rows take seconds there, where ``hard``'s numpy draw takes minutes and 16 GB temporaries;
    float32 rows and int64 labels, in host memory."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(k, LATENT, generator=gen, device=device) * SPREAD
    y = torch.arange(n, device=device) % k
    y = y[torch.randperm(n, generator=gen, device=device)]
    A = torch.randn(LATENT, d, generator=gen, device=device) / LATENT**0.5
    X = torch.empty(n, d, dtype=torch.float32)
    chunk = 1 << 17
    for start in range(0, n, chunk):
        part = y[start : start + chunk]
        z = centres[part] + torch.randn(len(part), LATENT, generator=gen, device=device)
        noise = torch.randn(len(part), d, generator=gen, device=device)
        X[start : start + len(part)] = torch.relu(z @ A + COLUMN_NOISE * noise).cpu()
    flipped = torch.rand(n, generator=gen, device=device) < FLIPPED
    y[flipped] = torch.randint(0, k, (int(flipped.sum()),), generator=gen, device=device)
    return X.numpy(), y.cpu().numpy()


def _counting() -> list[Any]:
    """Record every batched problem the solver builds (for its evaluation counters)."""
    from classifiers import _torch_linear

    built: list[Any] = []
    init = _torch_linear.Batch.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        built.append(self)

    _torch_linear.Batch.__init__ = recording  # type: ignore[method-assign]
    return built


def _timed_refit() -> dict[str, float]:
    """Time the refit (``classifiers.linear._fit_one``) inside the head's ``fit``."""
    from classifiers import linear

    spent = {"s": 0.0}
    fit_one = linear._fit_one

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fit_one(*args, **kwargs)
        finally:
            spent["s"] += time.perf_counter() - start

    linear._fit_one = timed
    return spent


def _work_tflop(batches: list[Any]) -> float:
    """Two products per objective evaluation, rows x width x outputs each, over the rows a
    fit trains on (held-out blocks are skipped by the solver): an estimate, in TFLOP."""
    total = 0.0
    for b in batches:
        train_rows = float((b.row_w > 0).sum(dim=0).float().mean())
        total += 2 * 2 * b.output_evaluations * train_rows * b.D
    return total / 1e12


def one_run(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """Draw the rows, fit the head, score the test split (in this process)."""
    import torch
    from sklearn.model_selection import StratifiedShuffleSplit, train_test_split

    from classifiers.linear import LinearHeadCV

    rows, folds, precision = spec.split(":")
    n, folds = int(rows), int(folds)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.ones(8, 8, device=args.device) @ torch.ones(8, 8, device=args.device)  # context
    elif precision != "fp32":
        raise SystemExit("tf32 is a CUDA setting; use fp32 on the CPU")
    start = time.perf_counter()
    X, y = hard_rows(n, args.width, args.classes, args.seed, args.device)
    drawn = time.perf_counter() - start
    train, test = train_test_split(np.arange(n), test_size=0.2, stratify=y, random_state=0)
    cv: Any = folds
    if folds == 1:
        cv = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=args.seed)
    batches, refit = _counting(), _timed_refit()
    head = LinearHeadCV("log_loss", cv=cv, device=args.device, random_state=args.seed)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    head.fit(X[train], y[train])
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    accuracy = float((head.predict(X[test]) == y[test]).mean())
    work = _work_tflop(batches)
    return {
        "rows": n,
        "width": args.width,
        "classes": args.classes,
        "folds": folds,
        "precision": precision,
        "fit s": round(seconds, 2),
        "refit s": round(refit["s"], 2),
        "C": f"{head.C_:.3g}",
        "CV acc": round(head.best_score_, 4),
        "test acc": round(accuracy, 4),
        "evaluations": sum(b.evaluations for b in batches),
        "TFLOP (est.)": float(f"{work:.3g}"),
        "TFLOP/s": float(f"{work / seconds:.3g}"),
        "peak GiB": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else "",
        "rows drawn s": round(drawn, 1),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


def _child(conn: Any, spec: str, args: argparse.Namespace) -> None:
    try:
        conn.send(one_run(spec, args))
    except BaseException as error:  # noqa: BLE001 - reported to the parent, one line
        conn.send({"run": spec, "error": f"{type(error).__name__}: {error}"[:300]})
    finally:
        conn.close()


def supervised(spec: str, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """``one_run`` in a fresh process, stopped after ``seconds``."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, spec, args))
    proc.start()
    child.close()
    if parent.poll(seconds):
        result = parent.recv()
    else:
        result = {"run": spec, "error": f"stopped after {seconds:.0f} s (the budget left)"}
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs",
        nargs="*",
        default=["100000:5:fp32", "1000000:5:fp32", "1000000:5:tf32", "1000000:1:fp32"],
        help="ROWS:FOLDS:PRECISION per run, in order (FOLDS 1: one 80/20 validation split)",
    )
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for every run")
    parser.add_argument("--out", help="append each run's result to this file as a JSON line")
    args = parser.parse_args(argv)
    print_machine(machine())
    print(f"target: fit <= 60 s at 1,000,000 x 2,048, 1,000 classes; runs {args.runs}", flush=True)
    deadline = time.perf_counter() + args.budget
    results = []
    for spec in args.runs:
        left = deadline - time.perf_counter()
        if left < 10:
            results.append({"run": spec, "error": "not run: the budget was spent"})
            continue
        result = supervised(spec, args, left)
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(result) + "\n")
    print_table([r for r in results if "error" not in r])
    for r in results:
        if "error" in r:
            print(f"{r['run']}: {r['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
