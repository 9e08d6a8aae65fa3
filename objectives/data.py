"""MNIST as device-resident tensors: found, checksummed, split 50k/10k, normalised once.

The four standard IDX files are read with torchvision's MNIST parser, from a flat folder
(``train-images-idx3-ubyte.gz`` …, as in ``../shared/data/mnist``) or from torchvision's
``MNIST/raw/`` layout, gzip-compressed or not. Their decompressed content is checked against
the published SHA-256 sums before use. The 60k training images are split 50k train / 10k
validation with a fixed seed; the 10k test images are kept apart and nothing in the search
touches them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import textwrap
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from objectives.checks import check_int
from objectives.device import as_out_of_memory, resolve_device

__all__ = [
    "MNIST_FILES",
    "MnistData",
    "MnistDataError",
    "check_mnist",
    "default_data_dir",
    "describe_mnist",
    "find_mnist_files",
    "load_mnist",
    "read_verified",
]

#: SHA-256 of each file's decompressed content (the published MNIST bytes).
MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

TRAIN_SIZE = 50_000  # images of the 60k training file used for training
VAL_SIZE = 10_000  # images of the 60k training file held out for validation (selection)
SPLIT_SEED = 0  # fixed: every trial, run and machine sees the same split
MEAN, STD = 0.1307, 0.3081  # the usual MNIST pixel statistics, after scaling to [0, 1]

_FIX = "set STUDY_DATA_DIR (or data_dir / --data-dir) to a folder with the four standard MNIST IDX files"


class MnistDataError(RuntimeError):
    """MNIST is missing, incomplete or corrupt; the message is one line that says how to fix it."""


@dataclass(frozen=True, eq=False)
class MnistData:
    """The splits as tensors on one device: images ``[N, 784]`` normalised, labels int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    source: str = ""  # the folder the files were read from

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    @property
    def dtype(self) -> torch.dtype:
        return self.train_x.dtype

    def for_final_training(self) -> MnistData:
        """Train on all 60k training images and "validate" on the test set: for the final word on
        configurations already chosen on validation, never for choosing (needs the full data)."""
        if self.train_x.shape[0] != TRAIN_SIZE:
            raise ValueError(f"the final training needs all {TRAIN_SIZE} training images, but got {self.train_x.shape[0]}")
        return MnistData(
            train_x=torch.cat([self.train_x, self.val_x]),
            train_y=torch.cat([self.train_y, self.val_y]),
            val_x=self.test_x,
            val_y=self.test_y,
            test_x=self.test_x,
            test_y=self.test_y,
            source=self.source,
        )

    def describe(self) -> dict[str, object]:
        """What identifies this data, for a study's user attrs."""
        return describe_mnist(self.source, int(self.train_x.shape[0]), int(self.val_x.shape[0]))


def describe_mnist(source: str, train_samples: int | None = None, val_samples: int = VAL_SIZE) -> dict[str, object]:
    """What identifies the data of a run on ``train_samples`` images (None: all) of the MNIST in
    ``source`` (the folder :func:`check_mnist` returns), for a study's user attrs, without loading it."""
    return {
        "dataset": "MNIST",
        "source": source,
        "train_samples": train_samples or TRAIN_SIZE,
        "val_samples": val_samples,
        "split_seed": SPLIT_SEED,
        "normalisation": f"(x/255 - {MEAN}) / {STD}",
    }


def default_data_dir() -> Path:
    """``STUDY_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get("STUDY_DATA_DIR") or "data")


def find_mnist_files(root: str | os.PathLike[str]) -> dict[str, Path]:
    """The files present under ``root``, by standard name (missing names are left out).

    For each name, ``root/NAME``, ``root/NAME.gz``, ``root/MNIST/raw/NAME`` and
    ``root/MNIST/raw/NAME.gz`` are tried in that order.
    """
    root = Path(root)
    found: dict[str, Path] = {}
    for name in MNIST_FILES:
        for folder in (root, root / "MNIST" / "raw"):
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
            if name in found:
                break
    return found


def read_verified(path: Path, name: str) -> bytes:
    """The decompressed content of ``path``, after checking its SHA-256."""
    try:
        content = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise MnistDataError(
            f"MNIST file {path} cannot be read ({type(e).__name__}: {e}); replace it with a fresh "
            f"copy of the standard file, or {_FIX}"
        ) from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != MNIST_FILES[name]:
        raise MnistDataError(
            f"MNIST file {path} is corrupt: SHA-256 of its content is {digest[:16]}…, expected "
            f"{MNIST_FILES[name][:16]}…; replace it with a fresh copy of the standard file, or {_FIX}"
        )
    return content


def _parse_idx(content: bytes, name: str) -> torch.Tensor:
    # torchvision's parser reads only from a path to an uncompressed file, so the verified
    # bytes go through a temporary file rather than a second hand-written IDX reader.
    from torchvision.datasets.mnist import read_image_file, read_label_file

    with tempfile.TemporaryDirectory(prefix="lr-study-mnist-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        reader = read_image_file if "images" in name else read_label_file
        return reader(str(path))


def _download(root: Path) -> None:
    """One try at torchvision's download into ``root/MNIST/raw`` (works where the internet does)."""
    from torchvision.datasets import MNIST

    existed = root.exists()
    try:
        MNIST(str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - any failure becomes the one-line error below
        if not existed:  # leave no empty folders behind a failed download
            for folder in (root / "MNIST" / "raw", root / "MNIST", root):
                try:
                    folder.rmdir()
                except OSError:
                    break
        # one line, cut at a word boundary: torchvision lists every mirror it tried
        reason = textwrap.shorten(str(e), width=240, placeholder=" …")
        raise MnistDataError(
            f"MNIST not found in {root} (looked for the four IDX files, .gz or raw, there and in "
            f"{root / 'MNIST' / 'raw'}) and the download failed ({reason}); {_FIX}"
        ) from None


_raw_cache: dict[str, dict[str, torch.Tensor]] = {}
_data_cache: dict[tuple[object, ...], MnistData] = {}
_lock = threading.Lock()


def _load_raw(root: Path, download: bool) -> tuple[str, dict[str, torch.Tensor]]:
    found = find_mnist_files(root)
    if not found and download:
        _download(root)
        found = find_mnist_files(root)
    missing = [name for name in MNIST_FILES if name not in found]
    if missing:
        raise MnistDataError(
            f"MNIST incomplete in {root}: missing {', '.join(missing)} (.gz or raw, in the folder "
            f"or in {root / 'MNIST' / 'raw'}); {_FIX}"
        )
    source = str(found["train-images-idx3-ubyte"].parent.resolve())
    if source not in _raw_cache:
        _raw_cache[source] = {
            name: _parse_idx(read_verified(path, name), name) for name, path in found.items()
        }
    return source, _raw_cache[source]


def check_train_samples(train_samples: int | None) -> None:
    """``ValueError`` unless ``train_samples`` is None or an int in [1, 50000]."""
    if train_samples is not None:
        check_int(train_samples=train_samples, high=TRAIN_SIZE)


def check_mnist(data_dir: str | os.PathLike[str] | None = None, *, download: bool = True) -> str:
    """Find, checksum and parse the four files (once per process); returns their folder.

    Raises :class:`MnistDataError` with a one-line message, exactly as :func:`load_mnist` would,
    without building any device tensors.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    with _lock:
        return _load_raw(root, download)[0]


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    train_samples: int | None = None,
    download: bool = True,
) -> MnistData:
    """MNIST on ``device``, loaded once per process and shared by every caller.

    Args:
        data_dir: folder with the four IDX files (flat or ``MNIST/raw/``); default
            ``STUDY_DATA_DIR``, else ``./data``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: floating dtype of the images (float64 for exactness tests).
        train_samples: train on the first ``train_samples`` of the 50k (a random subset, fixed by
            the split seed); the validation set stays the full 10k.
        download: when no file is found at all, try torchvision's download once.

    Raises:
        MnistDataError: a file is missing, unreadable or fails its checksum.
        ValueError: a bad argument.
    """
    check_train_samples(train_samples)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, but got {dtype=}")
    resolved = resolve_device(device)
    root = Path(data_dir) if data_dir is not None else default_data_dir()

    with _lock:
        try:
            source, raw = _load_raw(root, download)
            key = (source, str(resolved), dtype, train_samples)
            if key not in _data_cache:
                _data_cache[key] = _to_tensors(raw, source, resolved, dtype, train_samples)
        except MemoryError:  # the host's allocator (a ulimit, a full machine): one line for the caller
            raise MnistDataError(f"not enough memory to load MNIST from {root} into {resolved} as {dtype} (about "
                                 f"{_bytes_needed(dtype, train_samples) / 2**20:.0f} MiB); free memory or raise "
                                 "the process's limit") from None
        except RuntimeError as e:
            if as_out_of_memory(e) is None:
                raise
            raise MnistDataError(f"not enough memory to load MNIST from {root} into {resolved} as {dtype} "
                                 f"({str(e).splitlines()[0][:160]})") from None
        return _data_cache[key]


def _bytes_needed(dtype: torch.dtype, train_samples: int | None) -> int:
    images = (train_samples or TRAIN_SIZE) + VAL_SIZE + 10_000
    return images * 784 * torch.tensor([], dtype=dtype).element_size() + 70_000 * 784  # and the raw bytes


def _to_tensors(
    raw: dict[str, torch.Tensor],
    source: str,
    device: torch.device,
    dtype: torch.dtype,
    train_samples: int | None,
) -> MnistData:
    def images(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1).to(device=device, dtype=dtype)
        return x.sub_(255 * MEAN).div_(255 * STD)  # in place: one pass, no temporaries

    # numpy's Generator streams are stable across versions, so the split is too.
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(TRAIN_SIZE + VAL_SIZE))
    train_idx, val_idx = order[:TRAIN_SIZE], order[TRAIN_SIZE:]
    if train_samples is not None:
        train_idx = train_idx[:train_samples]
    x, y = raw["train-images-idx3-ubyte"], raw["train-labels-idx1-ubyte"]
    return MnistData(
        train_x=images(x[train_idx]),
        train_y=y[train_idx].to(device),
        val_x=images(x[val_idx]),
        val_y=y[val_idx].to(device),
        test_x=images(raw["t10k-images-idx3-ubyte"]),
        test_y=raw["t10k-labels-idx1-ubyte"].to(device),
        source=source,
    )
