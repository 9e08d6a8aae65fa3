"""`python -m study.run`: the MNIST-MLP learning-rate study, stored so that optuna-dashboard shows it.

    python -m study.run --trials 100

`--trials N` is the study's total target of finished (COMPLETE + PRUNED) trials: a rerun of
the same command resumes an interrupted study up to N, and on a finished one says so and adds
nothing. Exit codes: 0 done, 2 bad input (one line on stderr, nothing stored is changed),
130 interrupted (Ctrl-C or SIGTERM; the trials in flight are marked FAIL; rerun to resume),
1 a worker failed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from dataclasses import replace

import optuna

from objectives import DEFAULT_METRIC, METRICS, MnistDataError, check_mnist, resolve_device
from objectives.data import TRAIN_SIZE
from objectives.memory import AUTO_SLOTS_MAX
from objectives.precision import PRECISIONS, check_precision
from storage import DEFAULT_STORAGE, StorageError, dashboard_command, hide_password, sqlite_path, storage_failure
from study.cli import (EXIT_CODES, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STORAGE, EXIT_USAGE, Parser,
                       add_cuda_graphs_argument, add_device_arguments, float_in, int_at_least, int_or_auto, max_workers,
                       report_folder, set_threads, study_name, threads_per_process, usable_cores)
from study.choices import PRUNERS, SAMPLERS, SamplerUnavailable, make_sampler
from study.experiment import DEFAULT_STUDY_NAME, Settings, UsageError, device_name, open_study, study_storage
from study.progress import ProgressBar, summary, trial_epochs
from study.recovery import settle_orphans, storage_failed
from study.interrupt import raise_on_interrupt, run_main
from study.workers import WorkerError, finished, optimize, run_workers, trials_in_flight

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m study.run", description="Run (or resume) the MNIST-MLP learning-rate study.",
               epilog=f"{EXIT_CODES}. The samplers cmaes, gp and qmc need the [samplers] extra: "
                      "pip install -e '.[samplers]' (scipy, cmaes).")
    p.add_argument("--trials", type=int_at_least(1, 1_000_000), default=100,
                   help="the study's total target of finished (complete + pruned) trials")
    p.add_argument("--epochs", type=int_at_least(1, 1000), default=20, help="epochs per trial")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL (SQLite file or postgresql+psycopg://…)")
    p.add_argument("--study-name", type=study_name, default=DEFAULT_STUDY_NAME, help="study name in the storage")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                   help="Optuna sampler, seeded (cmaes, gp, qmc: the [samplers] extra)")
    p.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC,
                   help="what a trial's value measures on the validation images: last_val_error (the error rate of the "
                        "model the whole schedule delivers), last_val_loss (its loss) or min_val_loss (the lowest loss of "
                        "any epoch, the model of that epoch); part of the experiment. Pruning always judges the per-epoch "
                        "validation loss")
    p.add_argument("--pruner", choices=PRUNERS, default="median", help="Optuna pruner, on the per-epoch validation loss")
    p.add_argument("--seed", type=int_at_least(0, 2**32 - 1), default=0,
                   help="seeds the sampler and the trials (trial n: seed + n)")
    add_device_arguments(p, per="each worker process")
    p.add_argument("--train-samples", type=int_at_least(1, TRAIN_SIZE), default=None,
                   help=f"train on a subset of the {TRAIN_SIZE} training images (default: all)")
    p.add_argument("--batch-size", type=int_at_least(1, TRAIN_SIZE), default=128, help="examples per step")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32; bf16: bfloat16 mixed precision (autocast), about 2x faster on a CPU with AVX512-BF16; "
                        "tf32: TF32 matrix products (CUDA only)")
    add_cuda_graphs_argument(p)
    p.add_argument("--timeout", type=float_in(365 * 86_400), default=None,
                   help="stop starting trials after this many seconds, at most a year (default: no limit)")
    p.add_argument("--workers", type=int_at_least(1, 1024), default=1,
                   help="processes on this machine working on the study (spread over the GPUs; capped at 2 per usable core "
                        "and at what the available memory holds)")
    p.add_argument("--parallel-trials", type=int_or_auto(1, 4096), default=1,
                   help="trials in flight per worker, trained fused in the same kernels (objectives.train_stream); "
                        f"auto: as many as half the free GPU memory holds, at most {AUTO_SLOTS_MAX} and a quarter of "
                        "the trials still to run (per worker), and 1 on the CPU")
    p.add_argument("--heartbeat-interval", type=int_at_least(1, 86_400), default=60,
                   help="seconds between a running trial's heartbeats; a trial silent for twice this is FAIL and retried once")
    p.add_argument("--lr-range", action="store_true",
                   help="off by default: first run the LR range test for each optimizer and sample each one's initial LR from its "
                        "suggested range (suggestion / 10 .. LR of the lowest smoothed loss); stored in the study")
    return p


def _files(s: Settings) -> list[str]:
    """Where the study is, and where its report will go."""
    db = sqlite_path(s.storage)
    where = f"{db.resolve()} (SQLite)" if db is not None else hide_password(s.storage)
    flags = "" if (s.storage, s.study_name) == (DEFAULT_STORAGE, DEFAULT_STUDY_NAME) else \
        f" --storage {shlex.quote(hide_password(s.storage))} --study-name {shlex.quote(s.study_name)}"
    return [f"study: {where}",
            f"report: python -m study.report{flags}  (writes {report_folder(s.study_name)}/: index.html, summary.md, trials.csv)"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    s = Settings(**vars(args))
    try:
        return _run(s, argv)
    except Exception as e:  # noqa: BLE001 - the storage failing anywhere is one line; anything else is a bug
        reason = storage_failure(e)
        if reason is None:
            raise
        print(f"error: storage {hide_password(s.storage)} failed: {reason}; run the same command to resume once it "
              "works", file=sys.stderr)
        return EXIT_STORAGE


def _run(s: Settings, argv: list[str]) -> int:
    s = replace(s, space=s.space.for_epochs(s.epochs))  # as the objective samples it; in the fingerprint
    cap, why = max_workers()
    if s.workers > cap:  # more processes than the machine holds only wait for each other, or run out of memory
        print(f"warning: --workers {s.workers} is more than this machine holds ({why}): using {cap}",
              file=sys.stderr, flush=True)
        s = replace(s, workers=cap)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial instead
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # SIGINT too: a shell that starts us in the background leaves it ignored, and Python keeps that
    raise_on_interrupt()
    started = time.perf_counter()
    # this process's own training (one worker, the LR range test) has the cores to itself; the
    # --workers processes share them (each sets its share in _worker_main)
    set_threads(1, s.threads)
    try:
        # everything a user can get wrong is checked before the storage is touched
        device = resolve_device(s.device)
        check_precision(s.precision, device=device)
        make_sampler(s.sampler, s.seed)
        check_mnist(s.data_dir)
        study, s = open_study(s, argv, device)
    except (ValueError, UsageError, SamplerUnavailable, MnistDataError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - a storage that refuses (read-only, damaged): one line, nothing stored
        reason = storage_failure(e)
        if reason is None:
            raise
        print(f"error: storage {hide_password(s.storage)} cannot be used: {reason}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # possibly between creating the study and recording its settings
        print(f"interrupted while opening study {s.study_name!r}; the same command finishes what was begun",
              file=sys.stderr)
        return EXIT_INTERRUPTED

    n_existing = len(study.get_trials(deepcopy=False))
    before = finished(study)
    dashboard = dashboard_command(s.storage)
    if before >= s.trials:
        print(f"study {s.study_name!r} already has {before} finished trials (target {s.trials}); nothing to do.")
        print(f"inspect: {dashboard}")
        return EXIT_OK
    print(f"study {s.study_name!r} in {hide_password(s.storage)}: {before} of {s.trials} trials finished; "
          f"{s.epochs} epochs each on {device_name(device)} in {s.precision}, value {s.metric}, sampler {s.sampler}, pruner {s.pruner}, "
          f"{s.workers} worker(s) of {threads_per_process(s.workers, s.threads)} thread(s), "
          f"{trials_in_flight(s, device, study)} trial(s) at once per worker", flush=True)

    if s.threads is not None and s.threads * s.workers > usable_cores():
        print(f"warning: {s.workers} worker(s) x {s.threads} threads on {usable_cores()} usable cores: "
              "they will wait for each other", file=sys.stderr, flush=True)
    code = EXIT_OK
    # a bar on a terminal, for one worker (the workers' lines would run through it)
    bar = ProgressBar(s.trials, study.get_trials(deepcopy=False), s.epochs) \
        if s.workers == 1 and sys.stdout.isatty() else None
    try:
        settle_orphans(s)  # a previous run on this machine died with trials RUNNING
        if s.workers == 1:
            optimize(s, 0, bar=bar)
        else:
            code = run_workers(s)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except WorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_FAILED
    except (MnistDataError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the storage failing mid-run is one line; anything else is a bug
        if not storage_failed(s, e):
            raise
        code = EXIT_STORAGE
    finally:
        if bar is not None:
            bar.close()

    try:
        study = optuna.load_study(study_name=s.study_name, storage=study_storage(s))
        new = len(study.get_trials(deepcopy=False)) - n_existing
        spent = trial_epochs(study)
        if code != EXIT_STORAGE:
            study.set_user_attr("trial_epochs", spent)  # the study's real cost, for the record
        print(summary(study, target=s.trials, wall_seconds=time.perf_counter() - started, new_trials=new,
                      dashboard=dashboard, spent=spent, files=_files(s)))
    except Exception as e:  # noqa: BLE001 - a summary of what the storage still lets us read, or why not
        reason = storage_failure(e)
        if reason is None:
            raise
        print(f"summary: not available, the storage cannot be read ({reason}); run the same command to resume")
        code = EXIT_STORAGE
    if code == EXIT_INTERRUPTED:
        print(f"interrupted: {finished(study)} of {s.trials} trials finished; run the same command to resume.", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(run_main(main, "study.run"))
