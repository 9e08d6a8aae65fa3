"""Shared fixtures: the real MNIST files, found through STUDY_DATA_DIR."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import optuna
import pytest

from objectives import load_mnist


def pytest_configure(config: pytest.Config) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder with the four standard MNIST files; the tests need the real data."""
    value = os.environ.get("STUDY_DATA_DIR")
    if not value:
        pytest.fail("STUDY_DATA_DIR is not set: point it at a folder with the four MNIST IDX files "
                    "(e.g. STUDY_DATA_DIR=../shared/data/mnist)", pytrace=False)
    return Path(value)


@pytest.fixture(scope="session")
def mnist_5k(mnist_dir: Path):
    """5,000 training images, the full 10k validation set, on the CPU."""
    return load_mnist(mnist_dir, device="cpu", train_samples=5000)


@pytest.fixture(scope="session")
def mnist_2k(mnist_dir: Path):
    return load_mnist(mnist_dir, device="cpu", train_samples=2000)


@pytest.fixture
def mnist_copy(mnist_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the four files (gzip, flat), for tests that damage or move them."""
    out = tmp_path / "mnist"
    out.mkdir()
    for path in mnist_dir.glob("*-ubyte.gz"):
        shutil.copy(path, out / path.name)
    assert len(list(out.iterdir())) == 4, f"expected the four MNIST .gz files in {mnist_dir}"
    return out
