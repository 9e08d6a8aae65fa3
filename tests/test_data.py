"""MNIST loading: layouts, checksums, the split, the errors a user sees."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from objectives import MnistDataError, default_data_dir, load_mnist
from objectives.data import MNIST_FILES


def test_full_data_is_split_50k_10k_with_test_apart(mnist_dir: Path) -> None:
    data = load_mnist(mnist_dir, device="cpu")
    assert data.train_x.shape == (50_000, 784) and data.val_x.shape == (10_000, 784)
    assert data.test_x.shape == (10_000, 784) and data.test_y.shape == (10_000,)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    # train + val is the whole 60k training file: together they hold its label counts
    # (the published MNIST training set has 6,742 ones and 5,421 fives)
    counts = torch.bincount(torch.cat([data.train_y, data.val_y]), minlength=10)
    assert counts.sum() == 60_000 and counts[1] == 6742 and counts[5] == 5421
    assert torch.bincount(data.test_y, minlength=10)[1] == 1135
    # normalised once: zero mean, unit variance over the training images
    assert abs(data.train_x.mean().item()) < 0.01 and abs(data.train_x.std().item() - 1) < 0.01
    # no training image appears in validation (compare exact rows by a cheap hash)
    weights = torch.randn(784, dtype=torch.float64)
    train_keys = set((data.train_x.double() @ weights).tolist())
    overlap = sum(k in train_keys for k in (data.val_x.double() @ weights).tolist())
    assert overlap <= 5  # MNIST has a handful of exact duplicate images across the file


def test_loaded_once_and_split_is_fixed(mnist_dir: Path) -> None:
    full = load_mnist(mnist_dir, device="cpu")
    assert load_mnist(mnist_dir, device="cpu") is full  # cached per process
    subset = load_mnist(mnist_dir, device="cpu", train_samples=1000)
    assert subset.train_x.shape == (1000, 784)
    assert torch.equal(subset.train_x, full.train_x[:1000])  # a prefix of the fixed permutation
    assert torch.equal(subset.val_x, full.val_x)  # validation stays the full 10k
    # a fresh process draws the very same split
    code = (
        "from objectives import load_mnist; import sys; "
        f"d = load_mnist({str(mnist_dir)!r}, train_samples=3); print(d.train_y.tolist(), d.val_y[:5].tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{full.train_y[:3].tolist()} {full.val_y[:5].tolist()}"


def test_torchvision_raw_layout_and_uncompressed_files(mnist_dir: Path, mnist_copy: Path, tmp_path: Path) -> None:
    root = tmp_path / "tv"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).write_bytes(gzip.decompress((mnist_copy / f"{name}.gz").read_bytes()))
    data = load_mnist(root, device="cpu", train_samples=500)
    reference = load_mnist(mnist_dir, device="cpu", train_samples=500)
    assert data.source == str(raw.resolve())
    assert torch.equal(data.train_x, reference.train_x) and torch.equal(data.val_y, reference.val_y)


def test_data_dir_defaults_to_env_then_dot_data(monkeypatch: pytest.MonkeyPatch, mnist_dir: Path) -> None:
    monkeypatch.setenv("STUDY_DATA_DIR", str(mnist_dir))
    assert default_data_dir() == mnist_dir
    assert load_mnist(device="cpu", train_samples=10).source == str(mnist_dir.resolve())
    monkeypatch.delenv("STUDY_DATA_DIR")
    assert default_data_dir() == Path("data")


def _one_line_error(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_corrupt_content_fails_checksum_with_path_and_fix(mnist_copy: Path) -> None:
    path = mnist_copy / "train-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[100] = (content[100] + 1) % 10  # one label changed: still a valid IDX file
    path.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(MnistDataError) as excinfo:
        load_mnist(mnist_copy, device="cpu")
    message = _one_line_error(excinfo)
    assert str(path) in message and "corrupt" in message and "SHA-256" in message
    assert "STUDY_DATA_DIR" in message  # says how to fix it


def test_truncated_gzip_is_a_clear_error(mnist_copy: Path) -> None:
    path = mnist_copy / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(MnistDataError) as excinfo:
        load_mnist(mnist_copy, device="cpu")
    message = _one_line_error(excinfo)
    assert str(path) in message and "cannot be read" in message


def test_missing_file_is_named(mnist_copy: Path) -> None:
    (mnist_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MnistDataError) as excinfo:
        load_mnist(mnist_copy, device="cpu")
    message = _one_line_error(excinfo)
    assert "missing t10k-labels-idx1-ubyte" in message and str(mnist_copy) in message
    assert "train-images" not in message


@pytest.fixture
def mirror(mnist_dir: Path, monkeypatch):
    """torchvision's MNIST download pointed at a mirror on loopback that serves the four files;
    returns a function that takes the mirror down (a closed port, as offline)."""
    import functools
    import hashlib
    import http.server
    import threading

    import torchvision.datasets

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(mnist_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
    # torchvision checks the .gz files' MD5; these gzip files are the standard content (our SHA-256
    # checks it after the download) compressed anew, so their MD5 is theirs
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", [
        (name, hashlib.md5((mnist_dir / name).read_bytes()).hexdigest()) for name, _ in torchvision.datasets.MNIST.resources])

    def take_down() -> None:
        server.shutdown()
        server.server_close()

    yield take_down
    if server.socket.fileno() != -1:
        take_down()


@pytest.mark.slow
def test_nothing_found_downloads_once_and_checks_what_came(tmp_path: Path, mirror) -> None:
    root = tmp_path / "fresh"
    data = load_mnist(root, device="cpu", train_samples=10)
    assert data.train_x.shape == (10, 784) and data.test_x.shape == (10_000, 784)
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir() if not p.name.endswith(".gz")) == sorted(MNIST_FILES)
    assert data.source == str((root / "MNIST" / "raw").resolve())


@pytest.mark.slow
def test_a_failed_download_is_one_line_and_leaves_no_folder(tmp_path: Path, mirror) -> None:
    mirror()  # the mirror is down: the download is tried and fails, as offline
    root = tmp_path / "nowhere"
    with pytest.raises(MnistDataError) as excinfo:
        load_mnist(root, device="cpu", train_samples=10)
    message = str(excinfo.value)
    assert "\n" not in message and "download failed" in message and str(root) in message
    assert not root.exists()  # no empty folders left behind
    with pytest.raises(MnistDataError, match="missing train-images-idx3-ubyte"):
        load_mnist(tmp_path / "also-nowhere", device="cpu", download=False)


def test_a_long_download_error_is_cut_at_a_word_boundary(tmp_path: Path, monkeypatch) -> None:
    # torchvision's error names every mirror it tried, with the reason of each: far too long for
    # one line, so it is shortened, but on whole words
    import torchvision.datasets

    mirrors = ["https://mirror-one.example/mnist/", "https://mirror-two.example/mnist/"]
    error = "Error downloading train-images-idx3-ubyte.gz:\n" + "".join(
        f"Tried {m}, got:\n<urlopen error [Errno -3] Temporary failure in name resolution>\n" for m in mirrors) * 3

    def failing_mnist(*args, **kwargs):
        raise RuntimeError(error)

    monkeypatch.setattr(torchvision.datasets, "MNIST", failing_mnist)
    with pytest.raises(MnistDataError) as excinfo:
        load_mnist(tmp_path / "nowhere", device="cpu")
    message = _one_line_error(excinfo)
    reason = message.split("download failed (", 1)[1].split("); set STUDY_DATA_DIR", 1)[0]
    assert reason.endswith(" …") and len(reason) <= 240
    words = error.split()
    kept = reason.removesuffix(" …").split()
    assert kept == words[:len(kept)]  # whole words of the error, from its start


@pytest.mark.parametrize(
    "kwargs, name",
    [({"train_samples": 0}, "train_samples"), ({"train_samples": 50_001}, "train_samples"),
     ({"device": "tpu"}, "device"), ({"dtype": torch.int64}, "dtype")],
)
def test_bad_arguments_name_the_value(mnist_dir: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        load_mnist(mnist_dir, **kwargs)


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    code = (
        "import objectives, objectives.data as d; "
        "assert not d._raw_cache and not d._data_cache; "
        "import torch; assert not torch.cuda.is_initialized()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert list(tmp_path.iterdir()) == []  # wrote nothing either


@pytest.mark.parametrize("module", ["study.run", "study.lr_range"])
def test_out_of_memory_while_loading_is_one_line(mnist_copy, tmp_path, monkeypatch, module) -> None:
    """Out of memory while the images became tensors (``ulimit -v 3500000``): a MemoryError
    traceback from study.run and study.lr_range. Now one line naming it, exit 2, nothing stored."""
    import objectives.data as data_module
    from cli_helpers import run_here

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(data_module, "_to_tensors", no_memory)
    args = ["--device", "cpu", "--data-dir", str(mnist_copy), "--train-samples", "2000"]
    if module == "study.run":
        args += ["--trials", "1", "--epochs", "1", "--storage", f"sqlite:///{tmp_path / 's.db'}"]
    done = run_here(*args, cwd=tmp_path, module=module)
    errors = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "not enough memory to load MNIST" in errors[0]
    # nothing trained: at most the new study's queued start, waiting for a rerun
    assert all(t.state.name == "WAITING" for t in optuna_trials(tmp_path / "s.db"))


def optuna_trials(path):
    import optuna

    if not path.exists():
        return []
    try:
        return optuna.load_study(study_name="mnist-mlp-lr", storage=f"sqlite:///{path}").trials
    except KeyError:
        return []
