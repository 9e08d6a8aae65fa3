"""The built package: a real wheel of this project carries its modules and the PEP 561 markers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from cli_helpers import ROOT


def test_the_wheel_ships_py_typed_for_each_package(tmp_path: Path) -> None:
    # built from a copy (setuptools writes build/ and egg-info beside the sources) with the venv's
    # setuptools: no download, no isolated build environment
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build",
                                                             "studies", "reports", "artifacts", "data", ".*"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    wheel, = tmp_path.glob("lr_study-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("objectives", "study", "storage"):
        assert f"{package}/py.typed" in names and f"{package}/__init__.py" in names
