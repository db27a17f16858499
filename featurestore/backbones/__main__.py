"""``python -m featurestore.backbones [torchvision|timm]``: regenerate the backbone tables after
a torchvision or timm upgrade (both without an argument)."""

from __future__ import annotations

import logging
import sys

from featurestore.backbones import timm_table, torchvision


def main(argv: list[str]) -> int:
    which = set(argv) or {"torchvision", "timm"}
    unknown = which - {"torchvision", "timm"}
    if unknown:
        print(f"usage: python -m featurestore.backbones [torchvision] [timm]; not {unknown}")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if "torchvision" in which:
        rows = torchvision.regenerate_table()
        print(f"wrote {len(rows)} rows to {torchvision.TABLE}")
    if "timm" in which:
        table = timm_table.regenerate_table()
        print(
            f"wrote {len(table['architectures'])} architectures to {timm_table.TABLE} "
            f"({len(table['failed'])} could not be described)"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
