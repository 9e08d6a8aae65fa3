"""Whole studies, one trial at a time against K trials fused, fp32 against bf16: wall time and search quality.

    python -m benchmarks.fused_study [--device auto] [--ks 1,32] [--precisions fp32] [--pruners median] [--repeats 3]
                                     [--trials 100] [--epochs 20] [--train-samples N]

For each K of ``--ks`` (a number or ``auto``), each precision of ``--precisions``, each pruner
of ``--pruners`` and each repeat r, runs ``python -m study.run --trials T --epochs E
--parallel-trials K --precision P --pruner X --seed r`` in this process on a fresh SQLite file (the data is loaded once, before the first
study, so no study pays for it) and prints its wall time, finished/pruned counts and best
validation loss and trial-epochs spent (the sum of the epochs its trials trained: the study's
real cost, which pruning decides); then, per (K, precision), the mean ± sd over the repeats and
the ratios of wall times and trial-epochs against the first. Repeat r uses the same seed for every variant, so the studies differ
only in how many trials are in flight and in their arithmetic: this is the check that fusing,
or bf16, does not cost search quality.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from optuna.trial import TrialState

from benchmarks._common import device_and_data, device_label, run_study
from study.progress import trial_epochs
from study.cli import add_device_arguments, set_threads


def _mean_sd(values: list[float], fmt: str = ".4f") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{fmt}} ± {sd:{fmt}}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(p)
    p.add_argument("--ks", default="1,32", help="comma-separated --parallel-trials values (numbers or auto)")
    p.add_argument("--precisions", default="fp32", help="comma-separated --precision values (fp32, bf16, tf32)")
    p.add_argument("--pruners", default="median", help="comma-separated --pruner values")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train-samples", type=int, default=None)
    args = p.parse_args(argv)
    set_threads(1, args.threads)
    if (loaded := device_and_data(args)) is None:
        return 2
    device = loaded[0]
    print(f"device: {device_label(device)}; torch {torch.__version__}; {args.trials} trials x {args.epochs} epochs, "
          f"{args.train_samples or 'all'} training images, {args.repeats} repeats (seed = repeat)")
    print(f"{'K':>5} {'prec':>4} {'pruner':>9} {'seed':>4} {'wall s':>8} {'complete':>8} {'pruned':>6} {'trial-epochs':>12} "
          f"{'best value':>13}")
    rows: dict[tuple[str, str, str], tuple[list[float], list[float], list[float]]] = {}
    variants = [(k, prec, pruner) for k in args.ks.split(",") for prec in args.precisions.split(",")
                for pruner in args.pruners.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for k, prec, pruner in variants:
            walls, bests, costs = rows.setdefault((k, prec, pruner), ([], [], []))
            for r in range(args.repeats):
                url = f"sqlite:///{Path(tmp) / f'k{k}-{prec}-{pruner}-r{r}.db'}"
                flags = ["--trials", str(args.trials), "--epochs", str(args.epochs), "--parallel-trials", k,
                         "--precision", prec, "--pruner", pruner, "--seed", str(r)]
                if (done := run_study(flags, args, device, url)) is None:
                    return 1
                wall, study = done
                states = [t.state for t in study.trials]
                cost = trial_epochs(study)
                walls.append(wall)
                bests.append(study.best_value)
                costs.append(cost)
                print(f"{k:>5} {prec:>4} {pruner:>9} {r:>4} {wall:>8.1f} {states.count(TrialState.COMPLETE):>8} "
                      f"{states.count(TrialState.PRUNED):>6} {cost:>12} {study.best_value:>13.4f}", flush=True)
    first = next(iter(rows.values()))
    base, base_cost = statistics.fmean(first[0]), statistics.fmean(first[2])
    print(f"{'K':>5} {'prec':>4} {'pruner':>9} {'wall s (mean ± sd)':>20} {'speed-up':>8} {'trial-epochs (mean ± sd)':>25} "
          f"{'ratio':>6} {'best value (mean ± sd)':>26}")
    for (k, prec, pruner), (walls, bests, costs) in rows.items():
        print(f"{k:>5} {prec:>4} {pruner:>9} {_mean_sd(walls, '.1f'):>20} {base / statistics.fmean(walls):>7.1f}x "
              f"{_mean_sd(costs, '.0f'):>25} {statistics.fmean(costs) / base_cost:>5.2f}x {_mean_sd(bests):>26}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
