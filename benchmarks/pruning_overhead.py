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
import shutil
import sqlite3
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
from study.choices import make_pruner
from study.pruning import judge_boundary


DECAYS = ("constant", "step", "exponential", "cosine", "plateau", "onecycle", "cosine_restarts")


def _study(path: Path, finished: int, pruner: str) -> optuna.Study:
    """A study of ``finished`` complete trials of 20 epochs, each with a decay strategy and an LR,
    as study.run's pruners judge them; each trial's 20 values are one transaction
    (``write_trials``), so that 10,000 trials build in under a minute."""
    storage = open_storage(f"sqlite:///{path}", heartbeat_interval=60)
    study = optuna.create_study(storage=storage, study_name="overhead", direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0),  # TPE's ask grows with the study
                                pruner=make_pruner(pruner, 20, in_flight=True))
    rng = random.Random(0)
    for _ in range(finished):
        trial = study.ask()
        _suggest(trial)
        write_trials(storage_of(study), TrialWrites(intermediate_values=[(trial_id(trial), e, rng.random())
                                                                         for e in range(1, 21)]))
        study.tell(trial, rng.random())
    rdb_backend(storage).engine.dispose()
    with sqlite3.connect(path) as db:  # everything into the file itself, which is then copied
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return study


def _suggest(trial: optuna.Trial) -> None:
    trial.suggest_categorical("decay", DECAYS)
    trial.suggest_float("lr", 1e-4, 1.0, log=True)


def boundary_costs(k: int, built: Path, folder: Path, pruner: str, epochs: int = 3,
                   ways: tuple[str, ...] = ("per trial", "batched")) -> dict[str, tuple[float, float]]:
    """``{way: (seconds, commits)}`` per boundary of K trials in flight, on a copy of the study
    file ``built``."""
    out = {}
    for way in ways:
        path = folder / f"k{k}-{way.replace(' ', '-')}.db"
        shutil.copy(built, path)
        storage = open_storage(f"sqlite:///{path}", heartbeat_interval=60)
        study = optuna.load_study(study_name="overhead", storage=storage, sampler=optuna.samplers.RandomSampler(seed=1),
                                  pruner=make_pruner(pruner, 20, in_flight=True))
        in_flight = [study.ask() for _ in range(k)]
        for trial in in_flight:
            _suggest(trial)
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
    p.add_argument("--finished", default="100", help="complete trials already in the study (comma-separated: one "
                                                      "table each, e.g. 100,1000,10000)")
    p.add_argument("--pruner", choices=("median", "hyperband", "sha"), default="median",
                   help="study.run's pruner, as it judges trials in flight")
    p.add_argument("--batched-only", action="store_true", help="skip the per-trial way (slow on large studies)")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)  # ask() outside optimize with heartbeats
    ways = ("batched",) if args.batched_only else ("per trial", "batched")
    print(f"machine: {load_line()}")
    print(f"SQLite (WAL), --pruner {args.pruner} with trials in flight; optuna {optuna.__version__}")
    first: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for finished in (int(n) for n in args.finished.split(",")):
            t0 = time.perf_counter()
            built = Path(tmp) / f"built-{finished}.db"
            _study(built, finished, args.pruner)
            print(f"\n{finished} finished trials of 20 epochs (built in {time.perf_counter() - t0:.0f} s)")
            print(f"{'K':>4} | {'per trial: s':>12} {'ms/trial':>8} {'commits':>7} | {'batched: s':>10} {'ms/trial':>8} "
                  f"{'commits':>7} | {'speed-up':>8} | {'batched ms/trial against the first study':>40}")
            for k in (int(k) for k in args.ks.split(",")):
                costs = boundary_costs(k, built, Path(tmp), args.pruner, ways=ways)
                batch_s, batch_c = costs["batched"]
                per_trial = 1000 * batch_s / k
                ratio = per_trial / first.setdefault(k, per_trial)
                if "per trial" in costs:
                    one_s, one_c = costs["per trial"]
                    left = f"{one_s:>12.3f} {1000 * one_s / k:>8.2f} {one_c:>7.0f}"
                    speed = f"{one_s / batch_s:>7.1f}x"
                else:
                    left, speed = f"{'-':>12} {'-':>8} {'-':>7}", f"{'-':>8}"
                print(f"{k:>4} | {left} | {batch_s:>10.4f} {per_trial:>8.2f} {batch_c:>7.0f} | {speed} | "
                      f"{ratio:>39.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
