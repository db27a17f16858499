"""What a result ran on: package versions and machine facts, collected in one place.

Stores, saved heads, reports and benchmarks all record where their numbers came from through
these functions. Versions come from the installed distributions' metadata, so collecting them
never imports torch.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "CORE_PACKAGES",
    "HEAD_PACKAGES",
    "VERSION",
    "cores",
    "cpu_flags",
    "cpu_model",
    "machine",
    "now",
    "package_versions",
]

#: featurestore's own version (``featurestore.__version__``).
VERSION = "0.1.0"

#: Packages whose versions a report or a benchmark records.
CORE_PACKAGES = (
    "featurestore",
    "numpy",
    "scikit-learn",
    "scipy",
    "joblib",
    "h5py",
    "torch",
    "torchvision",
    "timm",
    "pillow",
    "matplotlib",
)
#: Packages a saved head's unpickling depends on.
HEAD_PACKAGES = ("numpy", "scikit-learn", "joblib")


#: Import names of the distributions whose names differ.
_MODULES = {"scikit-learn": "sklearn", "pillow": "PIL"}


@cache
def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _version(name: str) -> str | None:
    if name == "featurestore":
        return VERSION
    module = sys.modules.get(_MODULES.get(name, name))
    found = getattr(module, "__version__", None)  # an imported module knows its build tag
    return found if isinstance(found, str) else _installed_version(name)


def package_versions(names: tuple[str, ...] = CORE_PACKAGES) -> dict[str, str | None]:
    """``{name: version or None}`` plus ``python``; never imports a package to ask (an
    already imported one gives its own ``__version__``, e.g. torch's ``2.14.1+cu130``)."""
    return {"python": platform.python_version(), **{n: _version(n) for n in names}}


def now() -> str:
    """Local time, ISO 8601 with the UTC offset (``2026-12-01T15:04:21+0000``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def cores() -> int:
    """CPU cores this process may run on."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, n or 1)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector-instruction flags that change the speed of this project's work."""
    text = _cpuinfo()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    return [f for f in wanted if f" {f}" in text]


def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS and Python: what a measurement or a report ran on."""
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError, AttributeError):
        memory = None
    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "cpu_flags": " ".join(cpu_flags()),
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }
