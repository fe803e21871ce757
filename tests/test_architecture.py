"""The import contracts hold, and each one breaks when the import it forbids is added (so none is vacuous)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package found first under ``tree`` (ahead of the editable install)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tree, env=env,
                          capture_output=True, text=True)


def test_every_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("stream/protocol.py", "from ..ptycho import metrics", "The streaming framework knows nothing of ptychography"),
        ("ptycho/stxm.py", "from ..io import cxi", "Layers"),
        ("stages/frame.py", "from ..sim import faults", "The real-data path never imports the simulator"),
        ("ptycho/metrics.py", "import h5py", "Numerics are pure"),
        ("io/cxi.py", "import qtpy", "The core imports without Qt"),
        ("plans/adaptive.py", "from ..callbacks import feedback", "Plans reach the pipeline only through"),
        ("plans/stubs.py", "from ..stream import protocol", "Plans reach the pipeline only through"),
        ("ophyd_devices/shutter.py", "from ..sim import faults", "Only the simulated devices"),
        ("ophyd_devices/epics/fccd.py", "from ...sim import faults", "The real-data path never imports the simulator"),
        ("ophyd_devices/detector_settings.py", "from ..sim import faults", "The real-data path never imports"),
        ("instrument/units.py", "from . import optics", "No import cycles"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, broken):
    # a copy of the package as it installs (the links to the design-card folders followed)
    pkg = shutil.copytree(ROOT / "ns_bluesky", tmp_path / "ns_bluesky", ignore=shutil.ignore_patterns("__pycache__"))
    path = pkg / module
    path.write_text(path.read_text() + f"\n{line}  # injected by the test\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    report = result.stdout.replace("\n", " ")
    assert f"{broken}" in report and "BROKEN" in report, result.stdout
