"""One training epoch: the seed's DataLoader loop against `objectives.train`, same process and device.

The seed's way, as in the seed article: ``torchvision.datasets.MNIST`` with
``transforms.ToTensor()``, a shuffling ``DataLoader``, each batch moved to the device and
flattened, and the running loss read with ``loss.item()`` every batch. Ours: ``train`` on the
device-resident tensors (which also runs its per-epoch validation pass on 10k images, so the
comparison is conservative), once in fp32, the seed's arithmetic, and once in bf16 mixed
precision (``precision="bf16"``); on CUDA also in tf32, and in fp32 with the CUDA graphs off
(``cuda_graphs=False``: every kernel launched from Python, what the graphs save). All train the same MLP with SGD (lr 0.05, momentum 0.9) on
the same 50k training images at the same batch size; each is warmed up with one epoch, then
the median of ``--repeats`` epochs is reported.

    python -m benchmarks.epoch_speed [--device auto] [--batch-size 128] [--repeats 3] [--train-samples N]

Measured figures are in the README ("Measured").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._common import device_and_data, device_label, sync
from objectives import PRECISIONS, TrainConfig, build_model, train
from objectives.data import MNIST_FILES, SPLIT_SEED, TRAIN_SIZE, VAL_SIZE, default_data_dir, find_mnist_files, read_verified
from study.cli import add_device_arguments, set_threads


def seed_way_epoch_seconds(loader, device: torch.device, lr: float) -> float:
    """One epoch of the seed's loop over ``loader``; returns seconds."""
    model = build_model(0, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sync(device)
    t0 = time.perf_counter()
    running_loss = 0.0
    for images, labels in loader:
        images, labels = images.to(device).view(-1, 784), labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    sync(device)
    return time.perf_counter() - t0


def loader_only_seconds(loader) -> float:
    """One pass over ``loader`` with no training: the seed's data cost alone."""
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


def ours_epoch_seconds(data, config: TrainConfig, precision: str, cuda_graphs: bool = True) -> float:
    """One epoch of ``train`` (with its validation pass, and on CUDA its graphs' capture) at
    ``precision``; returns seconds."""
    sync(data.device)
    t0 = time.perf_counter()
    train(config, data, epochs=1, precision=precision, cuda_graphs=cuda_graphs)
    sync(data.device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each, after one warm-up")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="time epochs of the first N of the 50k training images (default: all; for a smoke run)")
    args = parser.parse_args(argv)
    set_threads(1, args.threads)

    from torchvision import datasets, transforms
    from torch.utils.data import DataLoader, Subset

    if (loaded := device_and_data(args)) is None:
        return 2
    device, data = loaded
    root = Path(args.data_dir) if args.data_dir else default_data_dir()
    config = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=args.batch_size)

    with tempfile.TemporaryDirectory(prefix="lr-study-bench-") as tmp:
        # torchvision's MNIST dataset wants uncompressed files in MNIST/raw/.
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name, path in find_mnist_files(root).items():
            assert name in MNIST_FILES
            (raw / name).write_bytes(read_verified(path, name))
        dataset = datasets.MNIST(tmp, train=True, transform=transforms.ToTensor())
        order = np.random.default_rng(SPLIT_SEED).permutation(TRAIN_SIZE + VAL_SIZE)
        n = data.train_x.shape[0]
        subset = Subset(dataset, order[:n].tolist())  # the same training images as ours
        loader = DataLoader(subset, batch_size=args.batch_size, shuffle=True)

        seed_times, loader_times = [], []
        # (precision, CUDA graphs): tf32 and the eager comparison exist on CUDA only
        variants = ([("fp32", False), ("fp32", True), ("bf16", True), ("tf32", True)] if device.type == "cuda"
                    else [(p, False) for p in PRECISIONS if p != "tf32"])
        our_times: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}
        for i in range(args.repeats + 1):  # the first round of each is the warm-up
            s = seed_way_epoch_seconds(loader, device, config.lr)
            ours = {(p, g): ours_epoch_seconds(data, config, p, g) for p, g in variants}
            if i > 0:
                seed_times.append(s)
                for p, seconds in ours.items():
                    our_times[p].append(seconds)
                loader_times.append(loader_only_seconds(loader))

    seed_s, loader_s = statistics.median(seed_times), statistics.median(loader_times)
    print(f"device: {device_label(device)}; torch {torch.__version__}; batch size {args.batch_size}; "
          f"{data.train_x.shape[0]} training images; median of {args.repeats} epochs after 1 warm-up")
    print(f"seed's way (DataLoader + ToTensor + .item() per batch, fp32): {seed_s:8.3f} s/epoch")
    print(f"  of which the seed's data pipeline alone (no training):        {loader_s:8.3f} s/epoch")
    for (p, graphs), times in our_times.items():
        our_s = statistics.median(times)
        how = ("CUDA graphs" if graphs else "eager") if device.type == "cuda" else "tensor-resident"
        print(f"objectives.train, {p} ({how}, incl. validation):".ljust(62) + f"{our_s:8.3f} s/epoch   "
              f"speed-up {seed_s / our_s:.1f}x")
    # In fp32 both loops do the same matrix arithmetic; only the seed's data cost can be removed,
    # so seed / (seed - loader) bounds any fp32 speed-up. bf16 changes the arithmetic itself.
    print(f"fp32 bound, same arithmetic: seed / (seed - data pipeline) = {seed_s / max(seed_s - loader_s, 1e-9):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
