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
import functools
import importlib.metadata
import multiprocessing
import os
import platform
import shlex
import signal
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import optuna
import sqlalchemy
import torch
from optuna.trial import TrialState

from objectives import MnistDataError, MnistMLPObjective, SearchSpace, check_mnist, load_mnist, resolve_device
from objectives.data import SPLIT_SEED, TRAIN_SIZE, VAL_SIZE, describe_mnist
from objectives.memory import AUTO_SLOTS_MAX, auto_slots
from objectives.lr_range import lr_range_test
from objectives.precision import PRECISIONS, check_precision
from storage import DEFAULT_STORAGE, StorageError, dashboard_command, open_storage, sqlite_path, storage_failure
from study.cli import (EXIT_CODES, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STORAGE, EXIT_USAGE, Parser,
                       add_cuda_graphs_argument, add_device_arguments, float_in, int_at_least, int_or_auto, set_threads,
                       max_workers, study_name, threads_per_process, usable_cores)
from study.choices import PRUNERS, SAMPLERS, SamplerUnavailable, make_pruner, make_sampler, warmup_epochs
from study.parallel import optimize_fused
from study.progress import FINISHED, ProgressBar, TrialLog, summary, trial_epochs

DEFAULT_STUDY_NAME = "mnist-mlp-lr"


class UsageError(Exception):
    """A user's mistake: printed as one line, exit code 2."""


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


@dataclass(frozen=True)
class Settings:
    """The parsed command, passed to worker processes."""

    trials: int
    epochs: int
    storage: str
    study_name: str
    sampler: str
    pruner: str
    seed: int
    device: str
    data_dir: str | None
    threads: int | None  # torch threads per worker process; None: the usable cores shared out
    train_samples: int | None
    batch_size: int
    precision: str
    cuda_graphs: bool
    timeout: float | None
    workers: int
    parallel_trials: int | str  # a count, or "auto"
    heartbeat_interval: int
    lr_range: bool
    space: SearchSpace = field(default_factory=SearchSpace)  # the default, or narrowed by --lr-range


def _fingerprint(s: Settings) -> dict[str, object]:
    """What must match for trials to belong to one study (and be compared with each other)."""
    return {
        "objective": "objectives.MnistMLPObjective",
        "dataset": "MNIST",
        "split": f"{TRAIN_SIZE}/{VAL_SIZE} seed {SPLIT_SEED}",
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "train_samples": s.train_samples or TRAIN_SIZE,
        "search_space": s.space.as_dict(),
        # trials made before the batch order was shared are not comparable with those made after
        "minibatch_order": "shared by all trials: epoch_permutation(seed, epoch)",
        "precision": s.precision,
    }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("lr-study", "torch", "torchvision", "optuna", "optuna-dashboard", "sqlalchemy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {usable_cores()} usable cores)"


def _worker_device(s: Settings, worker: int) -> str:
    """Spread workers over the GPUs when the device is not pinned to one."""
    if s.device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{worker % torch.cuda.device_count()}"
    return s.device


def _sampler_seed(seed: int, n_existing: int, worker: int) -> int:
    # A resumed run or another worker must not replay the first run's random draws (that would
    # repeat configs), yet the same command on the same history must draw the same.
    return int(np.random.SeedSequence([seed, n_existing, worker]).generate_state(1)[0])


@functools.cache
def _open(url: str, heartbeat_interval: int) -> optuna.storages.RDBStorage:
    return open_storage(url, heartbeat_interval=heartbeat_interval)


def _storage(s: Settings) -> optuna.storages.RDBStorage:
    """The study's storage, opened once per process (each worker process opens its own)."""
    return _open(s.storage, s.heartbeat_interval)


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a trial like Ctrl-C: marked FAIL, never left RUNNING


class WorkerError(RuntimeError):
    """A worker gave up (e.g. every trial fails); exit code 1."""


class _StopAfterFailures:
    """Optuna callback: stop after ``limit`` failed trials in a row (e.g. each one out of memory),
    so that failures, which do not count towards the budget, cannot loop forever."""

    def __init__(self, limit: int = 5) -> None:
        self.limit, self.in_a_row, self.last = limit, 0, ""

    @property
    def tripped(self) -> bool:
        return self.in_a_row >= self.limit

    def record(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.last = str(trial.user_attrs.get("error", "unknown error"))

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.record(study, trial)
        if self.tripped:
            study.stop()  # only valid inside study.optimize; the fused loop asks `tripped` instead


#: ``--parallel-trials auto`` keeps at most this share of the trials still to run in flight at once
AUTO_SHARE_OF_TRIALS = 1 / 4


def _slots(s: Settings, device: torch.device, study: optuna.Study) -> int:
    """Trials in flight per worker: ``--parallel-trials``, or for ``auto`` the fewest of what half
    the free GPU memory holds (1 on the CPU, at most AUTO_SLOTS_MAX) and a quarter of the trials
    still to run, shared between the workers.

    Why a quarter: a trial in flight is one the sampler and the pruner cannot learn from yet. The
    first K trials are sampled knowing no result (for TPE, random draws), and the pruner judges
    the first wave only against itself. On an H200 a 100-trial study took 160 s with 64 in flight
    and 109 s with 32; a quarter keeps three quarters of the budget for informed sampling.
    """
    if s.parallel_trials != "auto":
        return int(s.parallel_trials)
    memory = auto_slots(device, s.batch_size)
    left = max(1, s.trials - _finished(study))
    return max(1, min(memory, int(left * AUTO_SHARE_OF_TRIALS) // s.workers))


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _optimize(s: Settings, worker: int, n_existing: int, prefix: str = "", bar: ProgressBar | None = None) -> None:
    """Work on the study until it has ``s.trials`` finished trials (or the timeout passes).

    Retries queued for dead workers' trials (WAITING) are run first, even when the budget is
    already reached, so that a crash never leaves a trial without its retry.
    """
    storage = _storage(s)
    objective = MnistMLPObjective(
        s.epochs, device=_worker_device(s, worker), data_dir=s.data_dir,
        train_samples=s.train_samples, batch_size=s.batch_size, seed=s.seed, space=s.space,
        precision=s.precision, cuda_graphs=s.cuda_graphs,
    )
    study = optuna.load_study(study_name=s.study_name, storage=storage)
    slots = _slots(s, objective.device, study)
    study.sampler = make_sampler(s.sampler, _sampler_seed(s.seed, n_existing, worker))
    study.pruner = make_pruner(s.pruner, s.epochs, in_flight=slots > 1)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if _finished(study) >= s.trials and not waiting:
        return
    objective.data  # noqa: B018 - load once, before the first trial, so no trial pays for it
    owner = _owner()

    def run_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", owner)  # which process ran it: diagnosis, orphan detection
        trial.set_user_attr("threads", torch.get_num_threads())  # its CPU share: explains its seconds
        return objective(trial)

    guard = _StopAfterFailures()
    if slots > 1:
        optimize_fused(study, objective, trials=s.trials, slots=slots, timeout=s.timeout, owner=owner,
                       callbacks=[TrialLog(s.trials, prefix, bar), guard.record], stop=lambda: guard.tripped)
    else:
        study.optimize(
            run_trial,
            timeout=s.timeout,
            catch=(torch.OutOfMemoryError,),  # one trial out of GPU memory: that trial fails, the study goes on
            callbacks=[
                optuna.study.MaxTrialsCallback(s.trials, states=FINISHED),  # counts pruned ones too
                TrialLog(s.trials, prefix, bar),
                guard,
            ],
        )
    if guard.tripped:
        raise WorkerError(f"{guard.in_a_row} trials in a row failed (last: {guard.last}); stopping this worker")


def _running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _orphans(study: optuna.Study, host: str) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials started by a process of this host that no longer exists."""
    out = []
    for trial in _running(study):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            out.append(trial)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unclaimed(study: optuna.Study) -> set[int]:
    """Numbers of the RUNNING trials that no process has claimed (no ``worker`` attr yet)."""
    return {t.number for t in _running(study) if "worker" not in t.user_attrs}


def _fail_and_retry(storage: optuna.storages.RDBStorage, study: optuna.Study,
                    trials: list[optuna.trial.FrozenTrial]) -> None:
    """Mark ``trials`` FAIL and queue each again once, as Optuna's ``fail_stale_trials`` does for a
    stale heartbeat (the same callback, so a retry is linked to its trial the same way)."""
    failed = []
    for trial in trials:
        try:
            if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                failed.append(trial._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed it first (its heartbeat went stale) and queued its retry
    retry = storage.get_heartbeat_stale_trial_callback()
    for trial_id in failed:
        retry(study, storage.get_trial(trial_id))


def _settle_orphans(s: Settings) -> None:
    """Fail the trials that dead processes left RUNNING, and queue each again once (as WAITING,
    for the next worker to run).

    Optuna fails a dead worker's trial once its heartbeat is stale, but never a trial whose
    process died before recording its first heartbeat: it has none. So this does not wait for
    heartbeats. A trial whose ``worker`` is a process of this host that no longer exists is
    failed at once. A trial that no process has claimed (``worker`` is set right after ``ask``,
    so only a process killed in between leaves one) is failed if it is still unclaimed after
    the grace period. Trials of live processes and of other hosts are left to their heartbeats.
    """
    storage = _storage(s)
    study = optuna.load_study(study_name=s.study_name, storage=storage)
    unclaimed = _unclaimed(study)
    if unclaimed:
        grace = storage.grace_period
        print(f"waiting up to {grace} s for trial(s) {', '.join(map(str, sorted(unclaimed)))} "
              "(RUNNING, but claimed by no process) to be claimed", flush=True)
        deadline = time.monotonic() + grace
        while unclaimed and time.monotonic() < deadline:
            time.sleep(min(1.0, grace / 2))
            unclaimed &= _unclaimed(study)
    dead = _orphans(study, socket.gethostname()) + [t for t in _running(study) if t.number in unclaimed]
    if dead:
        print(f"trial(s) {', '.join(str(t.number) for t in dead)} were left RUNNING by a dead process: "
              "marked FAIL and queued again once", flush=True)
        _fail_and_retry(storage, study, dead)


def _worker_main(s: Settings, worker: int, n_existing: int) -> None:
    """Entry point of a ``--workers`` child process."""
    # The parent relays Ctrl-C as one SIGTERM; a terminal's SIGINT to the whole group is ignored
    # here so that a trial is not interrupted twice while it is being marked FAIL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    set_threads(s.workers, s.threads)  # the workers share the cores instead of each taking all of them
    print(f"w{worker} started: process {os.getpid()}, {torch.get_num_threads()} thread(s), device "
          f"{_worker_device(s, worker)}", flush=True)
    try:
        _optimize(s, worker, n_existing, prefix=f"w{worker} ")
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except WorkerError as e:
        print(f"error: worker {worker}: {e}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except Exception as e:  # noqa: BLE001 - the storage failing is one line; anything else is a bug
        if not _storage_failed(s, e, f"worker {worker}: "):
            raise
        sys.exit(EXIT_STORAGE)


def _run_workers(s: Settings, n_existing: int) -> int:
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    procs = [ctx.Process(target=_worker_main, args=(s, i, n_existing), name=f"study-worker-{i}") for i in range(s.workers)]
    for proc in procs:
        proc.start()
    interrupted = False
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        interrupted = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the child marks its trial FAIL and exits
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    codes = [proc.exitcode for proc in procs]
    if interrupted or EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    if EXIT_STORAGE in codes:  # each such worker said why on its own line
        return EXIT_STORAGE
    killed = [i for i, code in enumerate(codes) if code is not None and code < 0]
    failed = [f"worker {i} exited with {code}" for i, code in enumerate(codes) if code not in (0, None) and i not in killed]
    if failed:
        print(f"error: {'; '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    if killed:
        # The others carried on; what the dead ones left (a RUNNING trial, its retry, budget) is
        # finished here, so the study never ends with a trial RUNNING or short of its target.
        names = ", ".join(f"worker {i} (signal {-codes[i]})" for i in killed)
        print(f"warning: {names} died; finishing its work here", file=sys.stderr, flush=True)
        _settle_orphans(s)
        _optimize(s, s.workers, n_existing, prefix="w* ")
    return EXIT_OK


def _lr_range_space(s: Settings, device: torch.device, stored: dict | None) -> tuple[SearchSpace, dict]:
    """The search space with each optimizer's LR range from the range test (stored or run now)."""
    ranges = stored
    if ranges is None:
        data = load_mnist(s.data_dir, device=device, train_samples=s.train_samples)
        ranges = {}
        for optimizer in s.space.optimizers:
            r = lr_range_test(optimizer, data, batch_size=s.batch_size, seed=s.seed, precision=s.precision)
            ranges[optimizer] = {"suggestion": r.suggestion, "low": r.low, "high": r.high,
                                 "steps": len(r.lrs), "diverged": r.diverged}
            if r.problems:  # a meaningless suggestion narrows nothing: the default range stays
                low, high = getattr(s.space, f"lr_{optimizer}")
                ranges[optimizer].update(low=low, high=high, problems=r.problems)
                print(f"warning: LR range test, {optimizer}: {'; '.join(r.problems)}; keeping the default range "
                      f"{low:.3g} .. {high:.3g}", file=sys.stderr, flush=True)
                continue
            print(f"LR range test, {optimizer}: suggestion {r.suggestion:.3g}, "
                  f"search range {r.low:.3g} .. {r.high:.3g}", flush=True)
    space = replace(s.space, **{f"lr_{opt}": (v["low"], v["high"]) for opt, v in ranges.items()})
    return space, ranges


#: How long a process that finds a study without settings waits for the process creating it to
#: record them (seconds) before it takes the creation as interrupted and finishes it.
CREATION_WAIT = 15.0


def _unfinished_creation(study: optuna.Study, attrs: dict[str, object]) -> bool:
    """A study that study.run began to create and did not finish (a kill, or another process
    that is still at it): no trial, and no user attr but study.run's own."""
    return not study.get_trials(deepcopy=False) and set(study.user_attrs) <= set(attrs) | {"last_command"}


def _await_creation(s: Settings, storage: optuna.storages.BaseStorage, study: optuna.Study) -> optuna.Study:
    """``study`` once its fingerprint is recorded, or as it is after :data:`CREATION_WAIT` seconds."""
    deadline = time.monotonic() + CREATION_WAIT
    while "fingerprint" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.25)
        study = optuna.load_study(study_name=s.study_name, storage=storage)
    return study


def _record_settings(study: optuna.Study, attrs: dict[str, object]) -> None:
    """Record the study's metric name and settings, the fingerprint last. Processes racing to do
    it write the same values; one that loses a race on a key (a unique-key error on PostgreSQL)
    writes it again."""
    if study.metric_names is None:
        study.set_metric_names(["val_loss"])
    for key, value in attrs.items():
        if study.user_attrs.get(key, object()) == value:
            continue
        for attempt in range(3):
            try:
                study.set_user_attr(key, value)
                break
            except sqlalchemy.exc.IntegrityError:
                if attempt == 2:
                    raise
                time.sleep(0.1 * (attempt + 1))


def _open_study(s: Settings, argv: list[str], device: torch.device) -> tuple[optuna.Study, Settings]:
    """Create the study, or load it after checking that it is the same experiment."""
    storage = _storage(s)
    command = "python -m study.run " + shlex.join(argv)
    try:
        study = optuna.load_study(study_name=s.study_name, storage=storage)
    except KeyError:
        study = None
    ranges = None
    if s.lr_range:  # a resumed study reuses its stored ranges: the same experiment, exactly
        space, ranges = _lr_range_space(s, device, study.user_attrs.get("lr_range") if study else None)
        s = replace(s, space=space)
    fingerprint = _fingerprint(s)
    attrs = {
        "data": describe_mnist(check_mnist(s.data_dir), s.train_samples),
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "precision": s.precision,
        "device": _device_name(device),
        "sampler": s.sampler,
        "pruner": s.pruner,
        "median_warmup_epochs": warmup_epochs(s.epochs),
        "seed": s.seed,
        "versions": _versions(),
        "command": command,
        **({"lr_range": ranges} if ranges is not None else {}),
        "fingerprint": fingerprint,  # last: a study with a fingerprint has all its settings
    }
    if study is None:
        try:
            study = optuna.create_study(storage=storage, study_name=s.study_name, direction="minimize")
        except optuna.exceptions.DuplicatedStudyError:  # another process created it a moment ago: join it
            study = optuna.load_study(study_name=s.study_name, storage=storage)
        else:
            _record_settings(study, attrs)
            return study, s
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise UsageError(f"study {s.study_name!r} in {s.storage} maximizes; this study minimizes val_loss: use another --study-name")
    if "fingerprint" not in study.user_attrs and _unfinished_creation(study, attrs):
        study = _await_creation(s, storage, study)
        if "fingerprint" not in study.user_attrs:  # its creator was interrupted: finish it
            print(f"study {s.study_name!r} was left without its settings (its creation was interrupted); "
                  "recording them now", flush=True)
            _record_settings(study, attrs)
    stored = study.user_attrs.get("fingerprint")
    if stored is not None:
        stored = {"precision": "fp32", **stored}  # studies made before --precision trained in fp32
    if stored != fingerprint:
        if stored is None:
            raise UsageError(f"study {s.study_name!r} in {s.storage} was not created by study.run; use another --study-name")
        diff = ", ".join(_differences(stored, fingerprint))
        raise UsageError(f"study {s.study_name!r} in {s.storage} is another experiment ({diff}); "
                         "use the same settings to resume, or another --study-name")
    # the same experiment: settings a creation interrupted before this order existed never wrote
    _record_settings(study, {k: v for k, v in attrs.items() if k not in study.user_attrs})
    study.set_user_attr("last_command", command)
    return study, s


def _shown(url: str) -> str:
    """``url`` with any password hidden, for messages."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - it was parsed once already; never fail a message over it
        return url


def _storage_failed(s: Settings, e: Exception, who: str = "") -> bool:
    """Whether ``e`` is the storage failing mid-run. If it is: one line naming the storage and the
    database's reason (``who``: which process), and the trials this process left RUNNING are
    failed and queued again once, as a dead worker's are, if the storage still lets us (else the
    next run settles them as orphans)."""
    reason = storage_failure(e)
    if reason is None:
        return False
    print(f"error: {who}storage {_shown(s.storage)} failed during the run: {reason}", file=sys.stderr)
    try:
        storage = _storage(s)
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        _fail_and_retry(storage, study, [t for t in _running(study) if t.user_attrs.get("worker") == _owner()])
    except Exception:  # noqa: BLE001 - the storage is what failed; this is best effort
        pass
    return True


def _files(s: Settings) -> list[str]:
    """Where the study is, and where its report will go."""
    db = sqlite_path(s.storage)
    where = f"{db.resolve()} (SQLite)" if db is not None else s.storage
    flags = "" if (s.storage, s.study_name) == (DEFAULT_STORAGE, DEFAULT_STUDY_NAME) else \
        f" --storage {s.storage} --study-name {s.study_name}"
    return [f"study: {where}",
            f"report: python -m study.report{flags}  (writes reports/{s.study_name}/: index.html, summary.md, trials.csv)"]


def _differences(stored: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(stored) | set(now)):
        a, b = stored.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: stored {a!r}, now {b!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    s = Settings(**vars(args))
    s = replace(s, space=s.space.for_epochs(s.epochs))  # as the objective samples it; in the fingerprint
    cap, why = max_workers()
    if s.workers > cap:  # more processes than the machine holds only wait for each other, or run out of memory
        print(f"warning: --workers {s.workers} is more than this machine holds ({why}): using {cap}",
              file=sys.stderr, flush=True)
        s = replace(s, workers=cap)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial instead
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # SIGINT too: a shell that starts us in the background leaves it ignored, and Python keeps that
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
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
        study, s = _open_study(s, argv, device)
    except (ValueError, UsageError, SamplerUnavailable, MnistDataError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # possibly between creating the study and recording its settings
        print(f"interrupted while opening study {s.study_name!r}; the same command finishes what was begun",
              file=sys.stderr)
        return EXIT_INTERRUPTED

    n_existing = len(study.get_trials(deepcopy=False))
    before = _finished(study)
    dashboard = dashboard_command(s.storage)
    if before >= s.trials:
        print(f"study {s.study_name!r} already has {before} finished trials (target {s.trials}); nothing to do.")
        print(f"inspect: {dashboard}")
        return EXIT_OK
    print(f"study {s.study_name!r} in {s.storage}: {before} of {s.trials} trials finished; "
          f"{s.epochs} epochs each on {_device_name(device)} in {s.precision}, sampler {s.sampler}, pruner {s.pruner}, "
          f"{s.workers} worker(s) of {threads_per_process(s.workers, s.threads)} thread(s), "
          f"{_slots(s, device, study)} trial(s) at once per worker", flush=True)

    if s.threads is not None and s.threads * s.workers > usable_cores():
        print(f"warning: {s.workers} worker(s) x {s.threads} threads on {usable_cores()} usable cores: "
              "they will wait for each other", file=sys.stderr, flush=True)
    code = EXIT_OK
    # a bar on a terminal, for one worker (the workers' lines would run through it)
    bar = ProgressBar(s.trials, before, n_existing) if s.workers == 1 and sys.stdout.isatty() else None
    try:
        _settle_orphans(s)  # a previous run on this machine died with trials RUNNING
        if s.workers == 1:
            _optimize(s, 0, n_existing, bar=bar)
        else:
            code = _run_workers(s, n_existing)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except WorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_FAILED
    except (MnistDataError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the storage failing mid-run is one line; anything else is a bug
        if not _storage_failed(s, e):
            raise
        code = EXIT_STORAGE
    finally:
        if bar is not None:
            bar.close()

    try:
        study = optuna.load_study(study_name=s.study_name, storage=_storage(s))
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
        print(f"interrupted: {_finished(study)} of {s.trials} trials finished; run the same command to resume.", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
