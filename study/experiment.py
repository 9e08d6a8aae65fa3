"""The experiment a study is: its settings, their fingerprint, and opening (or creating) it.

A study's trials are comparable only if they come from one experiment: the same objective,
data split, epochs, batch size, search space, minibatch order and precision. That is the
fingerprint, stored in the study's user attrs with the other settings (the command, the
versions, the device); a rerun that differs is refused with the differences named, and a rerun
that matches resumes. Creation is safe against other processes doing the same at the same time
and against being interrupted half-way (the fingerprint is written last).
"""

from __future__ import annotations

import importlib.metadata
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import optuna
import sqlalchemy
import torch

from objectives import DEFAULT_METRIC, SearchSpace, TrainConfig, check_mnist, load_mnist
from objectives.data import SPLIT_SEED, TRAIN_SIZE, VAL_SIZE, describe_mnist
from objectives.lr_range import lr_range_test
from objectives.space import config_params
from storage import hide_password, open_storage
from storage.batch import storage_of
from study.baseline import start_trials
from study.choices import warmup_epochs
from study.cli import usable_cores
from study.constants import DEFAULT_STUDY_NAME
from study.interrupt import freeze_imports, interrupts_held

__all__ = ["CREATION_WAIT", "close_storages", "queue_start", "DEFAULT_STUDY_NAME", "LEGACY_SETTINGS", "Settings", "UsageError", "device_name", "fingerprint", "open_study",
           "storage_at", "study_metric", "study_storage"]



class UsageError(Exception):
    """A user's mistake: printed as one line, exit code 2."""


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
    metric: str = DEFAULT_METRIC  # what a trial's value measures (objectives.METRICS)
    space: SearchSpace = field(default_factory=SearchSpace)  # the default, or narrowed by --lr-range
    baseline_spec: str = "default"  # --baseline as given: default, none, key=value pairs, a JSON file
    baseline: TrainConfig | None = None  # the recipe it names (study.baseline.parse_baseline), once checked


def fingerprint(s: Settings) -> dict[str, object]:
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
        # trials whose values measure different things cannot be ranked together
        "metric": s.metric,
        # the minibatch order of every trial (and trial n's initial weights: seed + n)
        "seed": s.seed,
        # the LR is one parameter of every trial (objectives.space.suggest_config); before, lr_<optimizer>
        "lr_parameter": "lr_position",
        # the recipe the study starts from and must beat (its first trials; the final word's yardstick)
        "baseline": asdict(s.baseline) if s.baseline is not None else None,
    }


#: What a study made before a setting existed did: it trained in fp32 and its value was the
#: lowest validation loss of any epoch.
LEGACY_SETTINGS = {"precision": "fp32", "metric": "min_val_loss"}


def study_metric(study: optuna.Study) -> str:
    """What the study's values measure (``objectives.METRICS``)."""
    return str(study.user_attrs.get("metric", LEGACY_SETTINGS["metric"]))


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("lr-study", "torch", "torchvision", "optuna", "optuna-dashboard", "sqlalchemy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def device_name(device: torch.device) -> str:
    """The device as a study records it: ``cuda:0 (NVIDIA H100 80GB HBM3)``, or the CPU and its usable cores."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {usable_cores()} usable cores)"


_OPEN: dict[tuple[str, int], optuna.storages.RDBStorage] = {}


def storage_at(url: str, heartbeat_interval: int) -> optuna.storages.RDBStorage:
    """The storage at ``url``, opened once per process."""
    if (url, heartbeat_interval) not in _OPEN:
        _OPEN[url, heartbeat_interval] = _open(url, heartbeat_interval)
    return _OPEN[url, heartbeat_interval]


def close_storages() -> None:
    """Close every storage :func:`storage_at` opened in this process, as the process's exit does
    (pooled connections closed, SQLite's write-ahead log folded back into the file): for a caller
    that runs a command's ``main`` more than once in one process, where a relative SQLite URL
    would otherwise keep meaning the file of the first run's folder."""
    for storage in _OPEN.values():
        storage.engine.dispose()
    _OPEN.clear()


def _open(url: str, heartbeat_interval: int) -> optuna.storages.RDBStorage:
    said = []

    def heartbeat_error(reason: str) -> None:  # once per process: the heartbeats go on retrying
        if not said:
            said.append(reason)
            print(f"warning: a heartbeat could not be recorded in {hide_password(url)} ({reason}); retrying at every "
                  f"beat (this is said once): a trial silent for {2 * heartbeat_interval} s is failed and queued again",
                  file=sys.stderr, flush=True)

    # a signal never lands inside a storage call (study.interrupt)
    return open_storage(url, heartbeat_interval=heartbeat_interval, on_heartbeat_error=heartbeat_error,
                        call_guard=interrupts_held)


def study_storage(s: Settings) -> optuna.storages.RDBStorage:
    """The study's storage, opened once per process (each worker process opens its own)."""
    return storage_at(s.storage, s.heartbeat_interval)


def lr_range_space(s: Settings, device: torch.device, stored: dict | None) -> tuple[SearchSpace, dict]:
    """The search space with each optimizer's LR range from the range test (stored or run now)."""
    ranges = stored
    if ranges is None:
        data = load_mnist(s.data_dir, device=device, train_samples=s.train_samples)
        freeze_imports()  # it trains from here: the imports are done (study.interrupt)
        ranges = {}
        for optimizer in s.space.optimizers:
            r = lr_range_test(optimizer, data, batch_size=s.batch_size, seed=s.seed, precision=s.precision)
            ranges[optimizer] = {"suggestion": r.suggestion, "low": r.low, "high": r.high,
                                 "steps": len(r.lrs), "diverged": r.diverged}
            if r.problems:  # a meaningless suggestion narrows nothing: the default range stays
                low, high = s.space.lr_range(optimizer)
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
    return not study.get_trials(deepcopy=False) and set(study.user_attrs) <= set(attrs) | {"last_command", "target_trials"}


def _await_creation(s: Settings, storage: optuna.storages.BaseStorage, study: optuna.Study) -> optuna.Study:
    """``study`` once its fingerprint is recorded, or as it is after :data:`CREATION_WAIT` seconds."""
    deadline = time.monotonic() + CREATION_WAIT
    while "fingerprint" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.25)
        study = optuna.load_study(study_name=s.study_name, storage=storage)
    return study


#: The recorded settings that decide what a trial measures: a process that finds one of them
#: recorded with another value is another experiment. The others (the command, the device, the
#: versions, the sampler, …) describe whoever recorded them first and are never overwritten.
MUST_MATCH = ("epochs", "batch_size", "precision", "metric", "seed", "lr_range", "fingerprint")


def _record_settings(study: optuna.Study, attrs: dict[str, object]) -> None:
    """Record the study's metric name and settings, the fingerprint last, never overwriting one
    that another process recorded: processes racing to do it (one that stalled past
    :data:`CREATION_WAIT` while another finished its creation) either agree on every setting of
    :data:`MUST_MATCH` or the later one is refused (UsageError), so the stored settings always
    describe one experiment. One that loses a race on a key (a unique-key error on PostgreSQL)
    reads the winner's value and compares it."""
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    if study.metric_names is None:
        study.set_metric_names([str(attrs["metric"])])
    for key, value in attrs.items():
        for attempt in range(3):
            stored = storage.get_study_user_attrs(study_id)  # fresh: not this process's view of a moment ago
            if key in stored:
                if key in MUST_MATCH and stored[key] != value:
                    raise UsageError(
                        f"study {study.study_name!r} got other settings from another process while this one was "
                        f"recording its own ({key}: stored {stored[key]!r}, this run {value!r}); use the same "
                        "settings to join it, or another --study-name")
                break
            try:
                study.set_user_attr(key, value)
                break
            except sqlalchemy.exc.IntegrityError:  # written by another process a moment ago: compare
                if attempt == 2:
                    raise
                time.sleep(0.1 * (attempt + 1))


def open_study(s: Settings, argv: list[str], device: torch.device) -> tuple[optuna.Study, Settings]:
    """Create the study, or load it after checking that it is the same experiment."""
    storage = study_storage(s)
    command = hide_password("python -m study.run " + shlex.join(argv))  # stored: readers of the study see it
    try:
        study = optuna.load_study(study_name=s.study_name, storage=storage)
    except KeyError:
        study = None
    ranges = None
    if s.lr_range:  # a resumed study reuses its stored ranges: the same experiment, exactly
        space, ranges = lr_range_space(s, device, study.user_attrs.get("lr_range") if study else None)
        s = replace(s, space=space)
        if s.baseline is not None and study is None:  # the baseline must lie in the narrowed space too
            try:
                config_params(s.baseline, s.space)
            except ValueError as e:
                raise UsageError(f"--baseline: {e} (the LR range test's range; --baseline none, or without --lr-range)") from None
    fingerprint_now = fingerprint(s)
    attrs = {
        "data": describe_mnist(check_mnist(s.data_dir), s.train_samples),
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "precision": s.precision,
        "metric": s.metric,
        "device": device_name(device),
        "sampler": s.sampler,
        "pruner": s.pruner,
        "median_warmup_epochs": warmup_epochs(s.epochs),
        "seed": s.seed,
        "baseline": asdict(s.baseline) if s.baseline is not None else None,
        "versions": _versions(),
        "command": command,
        **({"lr_range": ranges} if ranges is not None else {}),
        "fingerprint": fingerprint_now,  # last: a study with a fingerprint has all its settings
    }
    if study is None:
        try:
            study = optuna.create_study(storage=storage, study_name=s.study_name, direction="minimize")
        except optuna.exceptions.DuplicatedStudyError:  # another process created it a moment ago: join it
            study = optuna.load_study(study_name=s.study_name, storage=storage)
        else:
            _record_settings(study, attrs)
            queue_start(study, s)
            return study, s
    if len(study.directions) != 1:
        raise UsageError(f"study {s.study_name!r} in {hide_password(s.storage)} has {len(study.directions)} objectives; "
                         f"this study minimizes one, {s.metric}: use another --study-name")
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise UsageError(f"study {s.study_name!r} in {hide_password(s.storage)} maximizes; this study minimizes {s.metric}: use another --study-name")
    if "fingerprint" not in study.user_attrs and _unfinished_creation(study, attrs):
        study = _await_creation(s, storage, study)
        if "fingerprint" not in study.user_attrs:  # its creator was interrupted: finish it
            print(f"study {s.study_name!r} was left without its settings (its creation was interrupted); "
                  "recording them now", flush=True)
            _record_settings(study, attrs)
            queue_start(study, s)
    stored = study.user_attrs.get("fingerprint")
    if stored is not None:  # studies made before --precision, --metric and the seed in the fingerprint
        stored = {**LEGACY_SETTINGS, "seed": study.user_attrs.get("seed", s.seed), **stored}
    if stored != fingerprint_now:
        if stored is None:
            raise UsageError(f"study {s.study_name!r} in {hide_password(s.storage)} was not created by study.run; use another --study-name")
        diff = ", ".join(_differences(stored, fingerprint_now))
        raise UsageError(f"study {s.study_name!r} in {hide_password(s.storage)} is another experiment ({diff}); "
                         "use the same settings to resume, or another --study-name")
    # the same experiment: settings a creation interrupted before this order existed never wrote
    _record_settings(study, {k: v for k, v in attrs.items() if k not in study.user_attrs})
    _record_strategy_change(study, s)
    hide_stored_password(study)
    study.set_user_attr("last_command", command)
    study.set_user_attr("target_trials", s.trials)  # the report says when a study is short of it
    return study, s


def queue_start(study: optuna.Study, s: Settings) -> None:
    """Queue a new study's first trials (:func:`study.baseline.start_trials`: the baseline, its
    neighbours, a covering start), at most ``--trials`` of them, each labelled in its ``start``
    user attr; recorded in the study's ``start_trials`` attr, so that they are queued once only:
    a resume, or a study that already has trials, queues nothing."""
    if "start_trials" in study.user_attrs or study.get_trials(deepcopy=False):
        return
    queued = start_trials(s.baseline, s.space, s.trials)
    for params, label in queued:
        study.enqueue_trial(params, user_attrs={"start": label})
    study.set_user_attr("start_trials", [label for _, label in queued])


def _record_strategy_change(study: optuna.Study, s: Settings) -> None:
    """A resume may sample or prune otherwise (e.g. random trials first, then TPE): the trials stay
    comparable, since each is trained and measured the same. It is said, each trial records the
    sampler and pruner that made it, and the study lists every one used (``samplers``, ``pruners``)."""
    for key, now in (("sampler", s.sampler), ("pruner", s.pruner)):
        used = list(study.user_attrs.get(f"{key}s", [study.user_attrs.get(key, now)]))
        if now not in used:
            print(f"note: this run's --{key} is {now}; the study began with {used[0]} (each trial records its own {key}; "
                  "the trials stay comparable)", flush=True)
            study.set_user_attr(f"{key}s", [*used, now])


def hide_stored_password(study: optuna.Study) -> None:
    """Studies made before passwords were hidden stored the command line with the database's
    password in it, for every reader of the study to see: store it again with ``***``."""
    for key in ("command", "last_command"):
        value = study.user_attrs.get(key)
        if isinstance(value, str) and hide_password(value) != value:
            study.set_user_attr(key, hide_password(value))


def _differences(stored: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(stored) | set(now)):
        a, b = stored.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: stored {a!r}, now {b!r}")
    return out
