"""One provenance collector: versions without importing packages, machine facts."""

from __future__ import annotations

import subprocess
import sys

import featurestore
from featurestore import provenance


def test_versions_are_read_without_importing_torch() -> None:
    code = (
        "import sys; from featurestore import provenance; v = provenance.package_versions(); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert v['torch'] and v['scikit-learn'] and v['python'], v; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_an_imported_package_reports_its_own_build_tag() -> None:
    import torch

    assert provenance.package_versions(("torch",))["torch"] == torch.__version__
    assert (
        provenance.package_versions(("featurestore",))["featurestore"] == featurestore.__version__
    )


def test_machine_facts() -> None:
    facts = provenance.machine()
    assert facts["cores"] >= 1
    assert facts["cpu"] and facts["platform"] and facts["python"] == sys.version.split()[0]
    assert provenance.now()[:2] == "20"
