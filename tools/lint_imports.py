"""Check the import contracts of pyproject.toml ([tool.importlinter]) on a staged copy of the package.

grimp, under import-linter, reads a package from disk; four of ns_bluesky's folders live
outside ns_bluesky/ (setuptools package-dir: ophyd_devices/, callbacks/, pydm_screens/,
profiles/), so the contracts run on a copy laid out as installed. The profile's startup
scripts are IPython input, not modules, and stay out.

    python tools/lint_imports.py [--tree DIR]      # exit status: lint-imports'
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("ophyd_devices", "callbacks", "pydm_screens")


def stage(tree: Path) -> Path:
    """Copy the package into ``tree`` as it installs; returns the staged ``ns_bluesky`` directory."""
    shutil.rmtree(tree, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    pkg = tree / "ns_bluesky"
    shutil.copytree(ROOT / "ns_bluesky", pkg, ignore=ignore)
    for folder in MAPPED:
        shutil.copytree(ROOT / folder, pkg / folder, ignore=ignore)
    (pkg / "profiles").mkdir()
    shutil.copy2(ROOT / "profiles" / "__init__.py", pkg / "profiles" / "__init__.py")
    return pkg


def check(tree: Path, config: Path = ROOT / "pyproject.toml") -> subprocess.CompletedProcess:
    """Run lint-imports on a staged tree (the staged package first on the path, before the editable install)."""
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(lint), "--no-cache", str(config)], cwd=tree, env=env, capture_output=True, text=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", type=Path, default=ROOT / ".lint-imports")
    args = p.parse_args()
    stage(args.tree)
    result = check(args.tree)
    print(result.stdout[result.stdout.find("Contracts"):] if "Contracts" in result.stdout else result.stdout, end="")
    print(result.stderr, end="", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
