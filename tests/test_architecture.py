"""The import contracts hold, and each one breaks when the import it forbids is added (so none is vacuous)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lint_imports", ROOT / "tools" / "lint_imports.py")
lint_imports = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lint_imports)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    tree = tmp_path_factory.mktemp("staged")
    lint_imports.stage(tree)
    return tree


def test_every_contract_is_kept(staged):
    result = lint_imports.check(staged)
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
    tree = tmp_path / "tree"
    pkg = lint_imports.stage(tree)
    path = pkg / module
    path.write_text(path.read_text() + f"\n{line}  # injected by the test\n")
    result = lint_imports.check(tree)
    assert result.returncode != 0
    report = result.stdout.replace("\n", " ")
    assert f"{broken}" in report and "BROKEN" in report, result.stdout
