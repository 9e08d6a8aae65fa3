"""What an epoch boundary costs in storage I/O with K trials in flight, one trial at a time against
the fused engine's one-read, one-write boundary.

    python -m benchmarks.pruning_overhead [--ks 1,8,32,64] [--finished 100]

Builds a study in a temporary SQLite file (``open_storage``, as ``study.run`` opens it) with
``--finished`` complete trials of 20 reported epochs each, asks K more, and times epoch
boundaries of those K trials with the in-flight median pruner, two ways:

- per trial, as Optuna's API does it: ``trial.report`` and ``trial.should_prune`` for each
  trial. Optuna's cached storage re-reads every unfinished trial on each ``should_prune``, so
  a boundary grows as K²;
- batched, as ``study.run --parallel-trials`` does it: the values of all K trials written in one
  transaction (``storage.batch.write_trials``) and every decision taken from one read of the
  study (``study.pruning.judge_boundary``).

Prints seconds per boundary, milliseconds per trial and the storage transactions (commits)
per boundary of each, for each K. No training runs: this is the host-side cost that every
fused epoch adds on a GPU.
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
import sqlalchemy

from benchmarks._common import load_line
from storage import open_storage
from storage.batch import TrialWrites, rdb_backend, storage_of, trial_id, write_trials
from study.pruning import InFlightMedianPruner, judge_boundary


def _study(path: Path, finished: int) -> optuna.Study:
    storage = open_storage(f"sqlite:///{path}", heartbeat_interval=60)
    study = optuna.create_study(storage=storage, study_name="overhead", direction="minimize",
                                pruner=InFlightMedianPruner(n_startup_trials=5, n_warmup_steps=0))
    rng = random.Random(0)
    for _ in range(finished):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        for epoch in range(1, 21):
            trial.report(rng.random(), epoch)
        study.tell(trial, rng.random())
    return study


def boundary_costs(k: int, finished: int, folder: Path, epochs: int = 3) -> dict[str, tuple[float, float]]:
    """``{"per trial": (seconds, commits), "batched": (seconds, commits)}`` per boundary."""
    out = {}
    for way in ("per trial", "batched"):
        study = _study(folder / f"k{k}-{way.replace(' ', '-')}.db", finished)
        in_flight = [study.ask() for _ in range(k)]
        for trial in in_flight:
            trial.suggest_float("lr", 1e-4, 1.0, log=True)
        commits = [0]
        engine = rdb_backend(storage_of(study)).engine
        sqlalchemy.event.listen(engine, "commit", lambda conn: commits.__setitem__(0, commits[0] + 1))
        rng = random.Random(1)
        t0 = time.perf_counter()
        for epoch in range(1, epochs + 1):
            values = [(trial_id(trial), epoch, rng.random()) for trial in in_flight]
            if way == "per trial":
                for trial, (_, _, value) in zip(in_flight, values):
                    trial.report(value, epoch)
                    trial.should_prune()
            else:
                writes = TrialWrites(intermediate_values=values)
                judge_boundary(study, values, {id_ for id_, _, _ in values}, writes)
                write_trials(storage_of(study), writes)
        out[way] = ((time.perf_counter() - t0) / epochs, commits[0] / epochs)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", default="1,8,32,64", help="comma-separated numbers of trials in flight")
    p.add_argument("--finished", type=int, default=100, help="complete trials already in the study")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)  # ask() outside optimize with heartbeats
    print(f"machine: {load_line()}")
    print(f"SQLite (WAL), in-flight median pruner, {args.finished} finished trials of 20 epochs; "
          f"optuna {optuna.__version__}")
    print(f"{'K':>4} | {'per trial: s':>12} {'ms/trial':>8} {'commits':>7} | {'batched: s':>10} {'ms/trial':>8} "
          f"{'commits':>7} | {'speed-up':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(k) for k in args.ks.split(",")):
            costs = boundary_costs(k, args.finished, Path(tmp))
            (one_s, one_c), (batch_s, batch_c) = costs["per trial"], costs["batched"]
            print(f"{k:>4} | {one_s:>12.3f} {1000 * one_s / k:>8.2f} {one_c:>7.0f} | {batch_s:>10.4f} "
                  f"{1000 * batch_s / k:>8.2f} {batch_c:>7.0f} | {one_s / batch_s:>7.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
