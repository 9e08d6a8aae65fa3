"""What `python -m study.run` does once its arguments are parsed (:mod:`study.run` parses them
before torch and Optuna are imported): check the input, open or create the study, run the
workers, print the summary; a storage failure anywhere is one line."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from dataclasses import replace

import optuna

from objectives import MnistDataError, check_mnist, resolve_device
from objectives.precision import check_precision
from objectives.space import config_params
from storage import DEFAULT_STORAGE, StorageError, dashboard_command, hide_password, sqlite_path, storage_failure
from study.baseline import parse_baseline
from study.choices import SamplerUnavailable, make_sampler
from study.cli import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STORAGE, EXIT_USAGE, busy_cores, max_workers,
                       report_folder, set_threads, threads_per_process, usable_cores)
from study.experiment import DEFAULT_STUDY_NAME, Settings, UsageError, device_name, open_study, study_storage
from study.interrupt import raise_on_interrupt
from study.progress import ProgressBar, summary, trial_epochs
from study.recovery import settle_orphans, storage_failed
from study.workers import WorkerError, finished, optimize, run_workers, trials_in_flight

__all__ = ["run"]


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """The run of ``args`` (parsed from ``argv``, which the study records); the exit code."""
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


def _taken(study: optuna.Study) -> list:
    """The trials that some run has taken (all but the WAITING ones)."""
    return [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]


def _flag(flag: str, value: str) -> str:
    """``--flag value`` as a shell takes it back; ``--flag=value`` for a value argparse would take
    for a flag of its own (a study named ``-x``)."""
    return f"{flag}={shlex.quote(value)}" if value.startswith("-") else f"{flag} {shlex.quote(value)}"


def _files(s: Settings) -> list[str]:
    """Where the study is, and where its report will go."""
    db = sqlite_path(s.storage)
    where = f"{db.resolve()} (SQLite)" if db is not None else hide_password(s.storage)
    flags = "" if (s.storage, s.study_name) == (DEFAULT_STORAGE, DEFAULT_STUDY_NAME) else \
        f" {_flag('--storage', hide_password(s.storage))} {_flag('--study-name', s.study_name)}"
    return [f"study: {where}",
            f"report: python -m study.report{flags}  (writes {report_folder(s.study_name)}/: index.html, summary.md, trials.csv)"]


def _run(s: Settings, argv: list[str]) -> int:
    s = replace(s, space=s.space.for_epochs(s.epochs))  # as the objective samples it; in the fingerprint
    if s.threads is None:  # chosen once, here, for every process of the run (a worker starting beside its
        # siblings would take them for other programs)
        s = replace(s, threads=threads_per_process(s.workers))
        busy = busy_cores()
        if round(busy) >= 1:
            print(f"threads: {s.threads} per worker: {usable_cores()} usable core(s), {busy:.1f} busy with other programs "
                  "as this run started (--threads T to choose)", flush=True)
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
        s = replace(s, baseline=parse_baseline(s.baseline_spec, s.batch_size))
        if s.baseline is not None:  # the sampler learns from it: it must be a point of the space
            try:
                config_params(s.baseline, s.space)
            except ValueError as e:
                raise ValueError(f"--baseline: {e}") from None
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

    n_existing = len(_taken(study))  # the queued ones (a new study's start, retries) are not this run's yet
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
    # a bar on a terminal; with --workers the parent draws it, and the workers' lines come through it
    bar = ProgressBar(s.trials, study.get_trials(deepcopy=False), s.epochs) if sys.stdout.isatty() else None
    try:
        settle_orphans(s)  # a previous run on this machine died with trials RUNNING
        if s.workers == 1:
            optimize(s, 0, bar=bar)
        else:
            code = run_workers(s, bar)
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
        new = len(_taken(study)) - n_existing
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
