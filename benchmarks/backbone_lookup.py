"""Cost of naming backbones: the ``backbones`` listing and a timm model's fingerprint.

Each case runs in a fresh interpreter (imports included, as a user's command pays them),
``--repeat`` times; the table gives the median and fastest wall time and the heavy modules loaded.
``--baseline PATH`` also times ``featurestore backbones`` of another checkout (the listing before
timm models existed) for comparison.

    .venv/bin/python benchmarks/backbone_lookup.py --repeat 5 --baseline ../main
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, machine, print_machine, print_table

_CLI = """
import json, sys
from featurestore.cli import main
sys.argv = ["featurestore", *sys.argv[1:]]
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(prog_name="featurestore")  # the group: the entry point would end the process
    except SystemExit:
        pass
heavy = [m for m in ("torch", "timm") if m in sys.modules]
print("PROBE " + json.dumps({"lines": len(out.getvalue().splitlines()), "heavy": heavy}))
"""

_RESOLVE = """
import json, sys
from featurestore.extractor import resolve
fp = resolve(sys.argv[1], weights="none").fingerprint
heavy = [m for m in ("torch", "timm") if m in sys.modules]
print("PROBE " + json.dumps({"lines": 1, "heavy": heavy}))
"""

_LIVE = """
import json, sys
from featurestore.backbones.timm_table import describe_architecture
row = describe_architecture(sys.argv[1].partition(":")[2].partition(".")[0])
heavy = [m for m in ("torch", "timm") if m in sys.modules]
print("PROBE " + json.dumps({"lines": 1, "heavy": heavy}))
"""


def _time(code: str, args: list[str], root: Path, repeat: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    walls, probe = [], {}
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        walls.append(time.perf_counter() - start)
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith("PROBE "))
        probe = json.loads(line[len("PROBE ") :])
    return {
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "lines": probe["lines"],
        "heavy imports": ",".join(probe["heavy"]) or "none",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout")
    args = parser.parse_args()
    print_machine(machine(torch_too=False))
    timm_name = "timm:convnext_tiny.fb_in22k"
    cases = [
        ("featurestore backbones", _CLI, ["backbones"], REPO),
        ("featurestore backbones 'resnet*'", _CLI, ["backbones", "resnet*"], REPO),
        ("featurestore backbones 'timm:*dinov2*'", _CLI, ["backbones", "timm:*dinov2*"], REPO),
        ("featurestore backbones 'timm:*' (every tag)", _CLI, ["backbones", "timm:*"], REPO),
        (f"fingerprint of {timm_name} (table)", _RESOLVE, [timm_name], REPO),
        (f"describe {timm_name} live (import timm)", _LIVE, [timm_name], REPO),
    ]
    if args.baseline is not None:
        base = args.baseline.resolve()
        cases.insert(1, (f"featurestore backbones ({base.name})", _CLI, ["backbones"], base))
    rows = []
    for label, code, argv, root in cases:
        rows.append({"case": label, **_time(code, argv, root, args.repeat)})
        print(f"  {label}: {rows[-1]['median_s']:.2f} s", file=sys.stderr)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    print_table(rows)


if __name__ == "__main__":
    main()
