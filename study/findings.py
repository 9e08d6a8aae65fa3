"""What a study found, grouped for the report: the best trial of each decay strategy and of
with and without warm-up, and the configuration a trial trained."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives import DECAYS, TrainConfig, suggest_config

__all__ = ["LEGACY_PARAMS", "DecayRow", "WarmupRow", "decay_rows", "trial_config", "warmup_rows"]


@dataclass(frozen=True)
class DecayRow:
    decay: str
    best: FrozenTrial | None  # best COMPLETE trial of this strategy
    n_trials: int
    n_pruned: int


def decay_rows(study: optuna.Study) -> list[DecayRow]:
    """One row per decay strategy present in the study."""
    rows = []
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    for decay in DECAYS:
        trials = [t for t in finished if t.params.get("decay") == decay]
        if not trials:
            continue
        rows.append(DecayRow(decay, *_best_and_counts(trials)))
    return rows


def _best_and_counts(trials: list[FrozenTrial]) -> tuple[FrozenTrial | None, int, int]:
    """Of finished trials: the best complete one (None if none), how many, how many pruned."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return (min(complete, key=lambda t: t.value) if complete else None, len(trials),
            sum(t.state == TrialState.PRUNED for t in trials))


#: What a trial of a study made before a parameter was searched trained with: no warm-up, and
#: AdamW's weight decay fixed at torch's default.
LEGACY_PARAMS = {"warmup_epochs": 0, "adamw_weight_decay": 0.01}


def trial_config(trial: FrozenTrial, batch_size: int = 128) -> TrainConfig:
    """The configuration a trial trained, from its params (:data:`LEGACY_PARAMS` for the ones a
    study made before they were searched does not have)."""
    params = {**LEGACY_PARAMS, **trial.params}
    legacy_lr = params.get(f"lr_{params.get('optimizer')}") if "lr_position" not in params else None
    if legacy_lr is not None:  # a study made before lr_position: the LR was its own param
        params["lr_position"] = 0.0
    with warnings.catch_warnings():  # an older study's values may lie outside today's ranges
        warnings.simplefilter("ignore")
        config = suggest_config(optuna.trial.FixedTrial(params), batch_size=batch_size)
    # the LR exactly as it trained (lr_position maps through the study's ranges, which --lr-range may
    # have narrowed): the trial's recorded LR
    lr = trial.user_attrs.get("lr", legacy_lr)
    return replace(config, lr=float(lr)) if lr is not None else config


@dataclass(frozen=True)
class WarmupRow:
    label: str  # "without warm-up" / "with warm-up"
    best: FrozenTrial | None
    n_trials: int
    n_pruned: int


def warmup_rows(study: optuna.Study) -> list[WarmupRow]:
    """The trials with and without a linear warm-up, as the decay rows count them."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    rows = []
    def warmup(t: FrozenTrial) -> int:  # one-cycle records a warm-up and trains without one
        return 0 if t.params.get("decay") == "onecycle" else int(t.params.get("warmup_epochs", 0))

    for label, test in (("without warm-up", lambda n: not n), ("with warm-up", bool)):
        rows.append(WarmupRow(label, *_best_and_counts([t for t in finished if test(warmup(t))])))
    return rows
