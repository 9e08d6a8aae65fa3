"""The host's share of a fused study's epoch boundaries: how much of it the device waits for.

    python -m benchmarks.host_overlap [--device auto] [--k 16] [--trials 48] [--epochs 6] [--train-samples N]
                                      [--repeats 1]

Runs the same study (``python -m study.run --parallel-trials K --seed r``, TPE, the in-flight
median pruner, a fresh SQLite file) twice per repeat: with the boundary's host work done in
between epochs (``train_stream(ahead=False)``: the ended trials told, new ones asked and
sampled, then the next epoch launched) and ahead (the default: the next epoch launched first,
the tells and asks done while it trains, the next boundary's trials asked in advance). Prints,
per run, the host seconds between an epoch's sync and the next launch (on a GPU, time the
device waits for the host) and the host seconds between a launch and its sync (overlapped with
the device's work on a GPU; on a CPU the steps run first, so nothing overlaps there and the
wall time does not change), each per boundary, and the ratio of the first.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

import torch

import study.parallel
from benchmarks._common import device_and_data, device_label, run_study
from objectives.fused import StreamTimes, train_stream
from study.cli import add_device_arguments, set_threads
from study.progress import trial_epochs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(p)
    p.add_argument("--k", type=int, default=16, help="--parallel-trials")
    p.add_argument("--trials", type=int, default=48)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--train-samples", type=int, default=2000)
    args = p.parse_args(argv)
    set_threads(1, args.threads)
    if (loaded := device_and_data(args)) is None:
        return 2
    device = loaded[0]
    print(f"device: {device_label(device)}; torch {torch.__version__}; {args.trials} trials x {args.epochs} epochs, "
          f"K = {args.k}, {args.train_samples or 'all'} training images")
    print(f"{'host work':>10} {'seed':>4} {'wall s':>7} {'boundaries':>10} {'waited for, ms/boundary':>24} "
          f"{'overlapped, ms/boundary':>24} {'taken during/between':>20} {'trial-epochs':>12} {'best value':>10}")
    waited: dict[bool, list[float]] = {False: [], True: []}
    real = study.parallel.train_stream
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):
                for ahead in (False, True):
                    times = StreamTimes()
                    study.parallel.train_stream = functools.partial(train_stream, ahead=ahead, times=times)
                    url = f"sqlite:///{Path(tmp) / f'r{r}-{ahead}.db'}"
                    flags = ["--trials", str(args.trials), "--epochs", str(args.epochs), "--parallel-trials", str(args.k),
                             "--seed", str(r)]
                    if (done := run_study(flags, args, device, url)) is None:
                        return 1
                    wall, found = done
                    n = max(1, times.boundaries)
                    waited[ahead].append(1000 * times.between / n)
                    print(f"{'ahead' if ahead else 'between':>10} {r:>4} {wall:>7.1f} {times.boundaries:>10} "
                          f"{1000 * times.between / n:>24.1f} {1000 * times.during / n:>24.1f} "
                          f"{f'{times.taken_during}/{times.taken_between}':>20} "
                          f"{trial_epochs(found):>12} {found.best_value:>10.4f}", flush=True)
    finally:
        study.parallel.train_stream = real
    before, after = sum(waited[False]) / len(waited[False]), sum(waited[True]) / len(waited[True])
    print(f"host time the device waits for per boundary: {before:.1f} ms in between, {after:.1f} ms ahead "
          f"({before / max(after, 1e-9):.1f}x less)")
    print("taken during/between: the new trials asked, built and sent to the device while an epoch trained "
          "(overlapped: their weights go from pinned memory without blocking) and between epochs (waited for)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
