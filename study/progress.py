"""What `study.run` prints: one line per finished trial, a progress bar on a terminal, and the
summary at the end."""

from __future__ import annotations

import math
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

import optuna
from tqdm import tqdm

from objectives.space import EPOCH_CAPS, LIMITS, trial_lr
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

__all__ = ["FINISHED", "ProgressBar", "TrialLog", "count_states", "edge_warnings", "epochs_run", "metric_name", "summary",
           "trial_epochs"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards --trials


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e3) else f"{value:.4g}"
    return str(value)


def _key_params(trial: FrozenTrial) -> str:
    params = trial.params
    opt = params.get("optimizer", "?")
    decay = str(params.get("decay", "?"))
    if params.get("warmup_epochs") and decay != "onecycle":  # one-cycle records it and rises by itself
        decay = f"warmup {params['warmup_epochs']} ep + {decay}"
    parts = [str(opt), f"lr {_fmt(trial_lr(trial))}", decay]
    mults = [f"{_fmt(v)}" for k, v in sorted(params.items()) if k.startswith("lr_mult_")]
    if mults:
        parts.append("mult " + "/".join(mults))
    if trial.user_attrs.get("start"):  # one of a new study's queued first trials: which one
        parts.append(f"[{trial.user_attrs['start']}]")
    return " ".join(parts)


def _screen() -> tuple[int, int]:
    """The terminal's columns and rows; one that reports no size (some ptys and CI consoles) gets
    100 × 24, where tqdm would draw an empty bar or hide it."""
    size = shutil.get_terminal_size((100, 24))
    return size.columns or 100, size.lines if size.lines > 0 else 24


class ProgressBar:
    """A tqdm bar of the study's finished trials against its target, with the elapsed time, the
    time remaining, the best value of the whole study, and where the trials in flight are
    (``trial 7 epoch 6/20``), for a run on a terminal (a log file or a pipe gets the plain lines
    alone). It is redrawn every ``tick`` seconds, so the clock moves while a trial trains, and at
    every epoch boundary (:meth:`epoch`), not only when a trial ends.

    The time remaining counts trial-epochs, not trials: with trials in flight, or pruned after a
    few epochs, trials finish at an uneven pace while the epochs run at an even one. It is the
    trial-epochs still expected (the trials still to finish, times the mean epochs of the
    finished ones, or the full ``epochs`` before one has finished, less what the trials in
    flight have done) over this run's rate of trial-epochs: known from the first epoch on.
    tqdm, not Optuna's own bar: Optuna's counts trials and is drawn by ``study.optimize`` only,
    not by the fused ask-and-tell loop.
    """

    def __init__(self, target: int, trials: list[FrozenTrial], epochs: int, file: TextIO | None = None,
                 tick: float = 1.0) -> None:
        self.target, self.epochs = target, epochs
        self.file = file or sys.stdout
        self.started = time.monotonic()
        self.done = 0  # trial-epochs trained by this run
        self.in_flight: dict[int, int] = {}  # trial number -> epochs it has trained
        self.finished, self.mean_epochs, self.best = 0, float(epochs), None
        self._from(trials)  # a resumed study shows its best from the start
        columns, rows = _screen()
        self.bar = tqdm(total=target, initial=min(self.finished, target), unit="trial", file=self.file, ncols=columns,
                        nrows=rows, desc=self._desc(), bar_format="{n_fmt}/{total_fmt} trials |{bar}| [{elapsed}<{desc}]")
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(tick,), name="progress", daemon=True)
        self._ticker.start()

    def _from(self, trials: list[FrozenTrial]) -> None:
        finished = [t for t in trials if t.state in FINISHED]
        self.finished = len(finished)
        if finished:
            self.mean_epochs = sum(epochs_run(t) for t in finished) / len(finished)
        complete = [t.value for t in finished if t.state == TrialState.COMPLETE and t.value is not None]
        self.best = min(complete) if complete else None

    def _desc(self) -> str:
        remaining = "?"
        elapsed = time.monotonic() - self.started
        if self.done:
            left = max(0.0, (self.target - self.finished) * self.mean_epochs - sum(self.in_flight.values()))
            remaining = tqdm.format_interval(left * elapsed / self.done)
        best = "-" if self.best is None else f"{self.best:.4f}"
        where = ""
        if len(self.in_flight) == 1:
            (number, epoch), = self.in_flight.items()
            where = f", trial {number} epoch {epoch}/{self.epochs}"
        elif self.in_flight:
            low, high = min(self.in_flight.values()), max(self.in_flight.values())
            span = f"{low}" if low == high else f"{low}-{high}"
            where = f", {len(self.in_flight)} trials at epochs {span}/{self.epochs}"
        return f"{remaining}, best {best}{where}"

    def _tick(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.refresh()

    def refresh(self) -> None:
        """Redraw: the elapsed time and the time remaining move on."""
        with self.bar.get_lock():
            self.bar.ncols, self.bar.nrows = _screen()  # the terminal may have been resized
            self.bar.set_description_str(self._desc(), refresh=True)

    def write(self, line: str) -> None:
        """Print ``line`` above the bar."""
        self.bar.write(line, file=self.file)

    def epoch(self, number: int, epoch: int) -> None:
        """Trial ``number`` has trained ``epoch`` epochs (an epoch boundary)."""
        self.done += 1
        self.in_flight[number] = epoch
        self.refresh()

    def update(self, trials: list[FrozenTrial], ended: int | None = None) -> None:
        """Move on to what the study's ``trials`` (all of them) show; ``ended``: the trial that just ended."""
        if ended is not None:
            self.in_flight.pop(ended, None)
        self._from(trials)
        self.bar.n = min(self.finished, self.target)
        self.refresh()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()
        self.bar.close()


class TrialLog:
    """Optuna callback: ``[finished/target] #n STATE value, epochs, key params, seconds``; with a
    :class:`ProgressBar`, the line goes above the bar and the bar moves on."""

    def __init__(self, target: int, prefix: str = "", bar: ProgressBar | None = None) -> None:
        self.target = target
        self.prefix = prefix
        self.bar = bar
        self.metric: str | None = None  # the study's metric name, read once
        self.fastest: dict[int, float] = {}  # this run's fastest epoch, by trials in flight
        self.warned = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)  # one read, for the count and the bar
        finished = sum(t.state in FINISHED for t in trials)
        attrs = trial.user_attrs
        if trial.state == TrialState.COMPLETE:
            self.metric = self.metric or metric_name(study)
            outcome = f"{self.metric} {trial.value:.4f} acc {100 * attrs.get('val_accuracy', math.nan):.2f}%"
        elif trial.state == TrialState.PRUNED:
            outcome = "diverged" if attrs.get("diverged") else f"pruned at {_fmt(trial.value) if trial.value is not None else '-'}"
        else:
            outcome = f"failed: {attrs.get('error', 'error')}"
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else math.nan
        width = len(str(self.target))
        line = (f"{self.prefix}[{finished:>{width}}/{self.target}] trial {trial.number:>3} {trial.state.name:<8} "
                f"{outcome:<28} {attrs.get('epochs_run', 0):>3} ep  {_key_params(trial)}  {seconds:.1f} s")
        if self.bar is None:
            print(line, flush=True)
        else:
            self.bar.write(line)
            self.bar.update(trials, ended=trial.number)
        slow = self.slow_epochs(trial)
        if slow:
            print(f"{self.prefix}warning: {slow}", file=sys.stderr, flush=True)

    def slow_epochs(self, trial: FrozenTrial) -> str | None:
        """Once per run: a trial whose epochs ran far slower (3x and 1 s more) than this run's
        fastest with as many trials in flight: the cores are likely shared with another program."""
        seconds = trial.user_attrs.get("seconds_per_epoch")
        if not isinstance(seconds, float) or trial.state == TrialState.FAIL:
            return None
        k = int(trial.user_attrs.get("parallel_trials", 1))
        fastest = self.fastest.setdefault(k, seconds)
        self.fastest[k] = min(fastest, seconds)
        if self.warned or seconds < 3 * fastest or seconds < fastest + 1.0:
            return None
        self.warned = True
        return (f"trial {trial.number}'s epochs took {seconds:.1f} s, {seconds / fastest:.1f}x this run's fastest "
                f"({fastest:.1f} s): another program may be using the cores (try --threads 1); said once")


def metric_name(study: optuna.Study) -> str:
    """The name of the study's value (``val_loss`` for a study made before ``--metric``)."""
    names = study.metric_names
    return names[0] if names else "val_loss"


def edge_warnings(trial: FrozenTrial, epochs: int | None = None, margin: float = 0.02) -> list[str]:
    """Params of ``trial`` within ``margin`` (of the range, on its own scale) of a range edge that
    could be moved: not an edge where the parameter can go no further (``objectives.space.LIMITS``:
    a warm-up of 0 epochs is none at all), and an edge that ``--epochs`` set (``EPOCH_CAPS``:
    the study's ``epochs``) is named as such, since widening the range would change nothing."""
    out = []
    for name, dist in trial.distributions.items():
        if not isinstance(dist, (FloatDistribution, IntDistribution)) or dist.low == dist.high:
            continue
        if name == "warmup_epochs" and trial.params.get("decay") == "onecycle":
            continue  # recorded, not used: one-cycle rises to its peak by itself
        value = trial.params[name]
        if dist.log:
            pos = (math.log(value) - math.log(dist.low)) / (math.log(dist.high) - math.log(dist.low))
        else:
            pos = (value - dist.low) / (dist.high - dist.low)
        if not (pos <= margin or pos >= 1 - margin):
            continue
        edge = "lower" if pos <= margin else "upper"
        end = dist.low if edge == "lower" else dist.high
        limit = LIMITS.get(name, (None, None))[0 if edge == "lower" else 1]
        if limit is not None and end == limit:
            continue  # the range already reaches as far as the parameter goes
        where = f"{name} = {_fmt(value)} is at the {edge} edge of [{_fmt(dist.low)}, {_fmt(dist.high)}]"
        if name == "lr_position":  # the LR's place in its optimizer's range: the range to widen is lr_<optimizer>
            opt = trial.params.get("optimizer")
            out.append(f"the LR ({opt}) = {_fmt(trial_lr(trial))} is at the {edge} edge of lr_{opt}'s range: the best "
                       "may lie outside it; widen it")
            continue
        if edge == "upper" and epochs is not None and name in EPOCH_CAPS and end == epochs - EPOCH_CAPS[name]:
            out.append(f"{where} (capped by --epochs {epochs}): more epochs would let it go higher")
        else:
            out.append(f"{where}: the best may lie outside the range; widen it")
    return out


def epochs_run(trial: FrozenTrial) -> int:
    """The epochs ``trial`` trained: its ``epochs_run``, or for a trial that never finished (failed,
    running) the epochs it reported."""
    return int(trial.user_attrs.get("epochs_run", len(trial.intermediate_values)))


def trial_epochs(study: optuna.Study) -> int:
    """The study's real cost: the sum of the epochs its trials trained, failed ones included."""
    return sum(epochs_run(t) for t in study.get_trials(deepcopy=False))


def summary(study: optuna.Study, *, target: int, wall_seconds: float, new_trials: int, dashboard: str,
            spent: int, files: Sequence[str] = ()) -> str:
    """The end-of-run summary; ``spent`` is the study's :func:`trial_epochs`; ``files``: lines
    saying where the study's files are, printed before the dashboard command."""
    counts = count_states(study)
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    lines = [
        f"study {study.study_name!r}: {finished} finished of {target} "
        f"({counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned), "
        f"{counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running; "
        f"{spent} trial-epochs spent; this run: {new_trials} trials in {wall_seconds:.1f} s",
    ]
    try:
        best = study.best_trial
    except ValueError:
        lines.append("best: none yet (no trial completed)")
    else:
        attrs = best.user_attrs
        lines.append(
            f"best: trial {best.number}, {metric_name(study)} {best.value:.4f}, val accuracy "
            f"{100 * attrs.get('val_accuracy', math.nan):.2f}% at epoch "
            f"{attrs.get('value_epoch', attrs.get('best_epoch', '?'))}"
        )
        lines.append("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
        lines.extend(f"  warning: {w}" for w in edge_warnings(best, study.user_attrs.get("epochs")))
    lines.extend(files)
    lines.append(f"inspect: {dashboard}")
    return "\n".join(lines)
