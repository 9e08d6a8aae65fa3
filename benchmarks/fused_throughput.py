"""Trial-epochs per second: `train_many` with K trials at once against K one-trial `train` runs.

    python -m benchmarks.fused_throughput [--device auto] [--ks 1,8,32,64] [--epochs 2] [--train-samples N]
                                        [--precision fp32|bf16|tf32]

Both engines train the same K configurations (drawn from the default search space with a seeded
random sampler, all with the same batch size) on the same device, in one process; each figure
is measured after a warm-up run of the same size. The one-trial figure is measured once at the
smallest K (it does not depend on K). Prints one row per K and the ratio, and then the number
of ATen operations (views excluded: on a GPU each is a kernel launch) that one training step
dispatches in each engine, counted with a ``TorchDispatchMode`` as the difference between
epochs of 20 and 10 steps: where launches bound a step (small models on a GPU), this is what
fusing divides by K.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable

import optuna
import torch

from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks._common import device_and_data, device_label, sync
from objectives import MnistData, SearchSpace, load_mnist, suggest_config, train, train_many
from study.cli import add_device_arguments, set_threads

_VIEWS = {"view", "_unsafe_view", "_reshape_alias", "reshape", "slice", "select", "unsqueeze", "squeeze", "expand",
          "transpose", "t", "permute", "as_strided", "detach", "alias"}


def configs(k: int, batch_size: int, epochs: int) -> list:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = SearchSpace().for_epochs(epochs)  # as a study of that many epochs samples (warm-up shorter than the run)
    out = []
    for _ in range(k):
        trial = study.ask()
        out.append(suggest_config(trial, space, batch_size=batch_size))
        study.tell(trial, 0.0)
    return out


def timed(fn) -> float:
    fn()  # warm-up: allocator, kernels, caches
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ops(fn: Callable[[], object]) -> int:
    """ATen operations ``fn`` dispatches, views excluded."""
    counts: collections.Counter[str] = collections.Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return sum(n for name, n in counts.items() if name not in _VIEWS)


def ops_per_step(run: Callable[[MnistData], object], data_dir: str | None, device: torch.device, batch_size: int) -> float:
    """Operations per training step of ``run(data)``: one epoch of 20 steps minus one of 10."""
    small, large = (load_mnist(data_dir, device=device, train_samples=n * batch_size) for n in (10, 20))
    return (_ops(lambda: run(large)) - _ops(lambda: run(small))) / 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(p)
    p.add_argument("--ks", default="1,8,32,64", help="comma-separated numbers of trials trained at once")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", choices=("fp32", "bf16", "tf32"), default="fp32",
                   help="the arithmetic of both engines (bf16: autocast, as study.run --precision bf16)")
    args = p.parse_args(argv)
    set_threads(1, args.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        ks = [int(k) for k in args.ks.split(",")]
    except ValueError:
        print(f"error: --ks must be comma-separated numbers, but got {args.ks!r}", file=sys.stderr)
        return 2
    if (loaded := device_and_data(args)) is None:
        return 2
    device, data = loaded
    print(f"device: {device_label(device)}; torch {torch.__version__}; {data.train_x.shape[0]} training images, "
          f"batch {args.batch_size}, {args.epochs} epochs per trial, {args.precision}")

    one = configs(1, args.batch_size, args.epochs)[0]
    # on CUDA each engine runs with its CUDA graphs and, for comparison, eagerly
    modes = [True, False] if device.type == "cuda" else [False]

    def single(cuda_graphs: bool) -> None:
        train(one, data, args.epochs, cuda_graphs=cuda_graphs, precision=args.precision)
        sync(device)

    single_rate = args.epochs / timed(lambda: single(True))  # trial-epochs per second of the one-trial engine
    if device.type == "cuda":
        eager = args.epochs / timed(lambda: single(False))
        print(f"one-trial engine: {single_rate:.2f} t-e/s with CUDA graphs, {eager:.2f} eager ({single_rate / eager:.1f}x)")
    print(f"{'K':>4}  {'one-trial engine':>18}  " + "  ".join(
        f"{'train_many' + (' graphs' if g else ' eager' if device.type == 'cuda' else ''):>18}  {'ratio':>6}" for g in modes))
    for k in ks:
        batch = configs(k, args.batch_size, args.epochs)
        cells = []
        for g in modes:
            def fused() -> None:
                train_many(batch, data, args.epochs, seeds=list(range(k)), cuda_graphs=g, precision=args.precision)
                sync(device)

            rate = k * args.epochs / timed(fused)
            cells.append(f"{rate:>12.2f} t-e/s  {rate / single_rate:>5.1f}x")
        print(f"{k:>4}  {single_rate:>13.2f} t-e/s  " + "  ".join(cells))

    # eager: with CUDA graphs a step dispatches nothing from Python (0 here); these are what a graph replays
    print("operations per training step, eager (views excluded), one epoch of 20 steps minus one of 10:")
    one = configs(1, args.batch_size, 1)[0]
    one_ops = ops_per_step(lambda d: train(one, d, 1, cuda_graphs=False), args.data_dir, device, args.batch_size)
    print(f"  one-trial engine ({one.optimizer}): {one_ops:.0f}")
    for k in ks:
        batch = configs(k, args.batch_size, 1)
        ops = ops_per_step(lambda d: train_many(batch, d, 1, cuda_graphs=False), args.data_dir, device, args.batch_size)
        kinds = len({c.optimizer for c in batch})
        print(f"  train_many, K = {k} ({kinds} optimizer(s)): {ops:.0f} for K trials, {ops / k:.1f} per trial")
    return 0


if __name__ == "__main__":
    sys.exit(main())
