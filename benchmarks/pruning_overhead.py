"""What an epoch boundary costs in storage I/O with K trials in flight: report + should_prune.

    python -m benchmarks.pruning_overhead [--ks 1,8,32,64] [--finished 100]

Builds a study in a temporary SQLite file (``open_storage``, as ``study.run`` opens it) with
``--finished`` complete trials of 20 reported epochs each, asks K more, and times one epoch
boundary as the fused engine does it: for each of the K trials ``trial.report`` and
``trial.should_prune`` (median pruner). Prints the seconds per boundary and per trial, for
each K. No training runs: this is the host-side cost that a fused epoch on a GPU adds.
Optuna's cached storage re-reads every unfinished trial on each ``should_prune``, so the
cost per trial grows with K.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna

from storage import open_storage


def boundary_seconds(k: int, finished: int, folder: Path, epochs: int = 3) -> float:
    """Mean seconds of one epoch boundary (report + should_prune for K trials)."""
    storage = open_storage(f"sqlite:///{folder / f'k{k}.db'}", heartbeat_interval=60)
    study = optuna.create_study(storage=storage, study_name="overhead", direction="minimize",
                                pruner=optuna.pruners.MedianPruner(n_warmup_steps=epochs + 1))
    rng = random.Random(0)
    for _ in range(finished):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        for epoch in range(1, 21):
            trial.report(rng.random(), epoch)
        study.tell(trial, rng.random())
    in_flight = [study.ask() for _ in range(k)]
    for trial in in_flight:
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        for trial in in_flight:
            trial.report(rng.random(), epoch)
            trial.should_prune()
    return (time.perf_counter() - t0) / epochs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", default="1,8,32,64", help="comma-separated numbers of trials in flight")
    p.add_argument("--finished", type=int, default=100, help="complete trials already in the study")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)  # ask() outside optimize with heartbeats
    print(f"SQLite (WAL), median pruner, {args.finished} finished trials of 20 epochs; optuna {optuna.__version__}")
    print(f"{'K':>4} {'s per boundary':>15} {'ms per trial':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(k) for k in args.ks.split(",")):
            seconds = boundary_seconds(k, args.finished, Path(tmp))
            print(f"{k:>4} {seconds:>15.3f} {1000 * seconds / k:>13.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
