"""Trial-epochs per second: `train_many` with K trials at once against K one-trial `train` runs.

    python -m benchmarks.fused_throughput [--device auto] [--ks 1,8,32,64] [--epochs 2] [--train-samples N]

Both engines train the same K configurations (drawn from the default search space with a seeded
random sampler, all with the same batch size) on the same device, in one process; each figure
is measured after a warm-up run of the same size. The one-trial figure is measured once at the
smallest K (it does not depend on K). Prints one row per K and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time

import optuna
import torch

from objectives import MnistDataError, load_mnist, resolve_device, suggest_config, train, train_many


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configs(k: int, batch_size: int) -> list:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(k):
        trial = study.ask()
        out.append(suggest_config(trial, batch_size=batch_size))
        study.tell(trial, 0.0)
    return out


def timed(fn) -> float:
    fn()  # warm-up: allocator, kernels, caches
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--ks", default="1,8,32,64", help="comma-separated numbers of trials trained at once")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        device = resolve_device(args.device)
        data = load_mnist(args.data_dir, device=device, train_samples=args.train_samples)
        ks = [int(k) for k in args.ks.split(",")]
    except (ValueError, MnistDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device} = {name}; torch {torch.__version__}; {data.train_x.shape[0]} training images, "
          f"batch {args.batch_size}, {args.epochs} epochs per trial")

    one = configs(1, args.batch_size)[0]

    def single() -> None:
        train(one, data, args.epochs)
        _sync(device)

    single_rate = args.epochs / timed(single)  # trial-epochs per second of the one-trial engine
    print(f"{'K':>4}  {'one-trial engine':>18}  {'train_many':>14}  {'ratio':>6}")
    for k in ks:
        batch = configs(k, args.batch_size)

        def fused() -> None:
            train_many(batch, data, args.epochs, seeds=list(range(k)))
            _sync(device)

        rate = k * args.epochs / timed(fused)
        print(f"{k:>4}  {single_rate:>13.2f} t-e/s  {rate:>9.2f} t-e/s  {rate / single_rate:>5.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
