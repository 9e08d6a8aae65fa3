"""The recipe a study must beat, and the trials a new study starts with.

A study starts from what its user already trusts: ``study.run --baseline`` names that recipe (by
default :data:`DEFAULT_BASELINE`, AdamW 2e-3, weight decay 0.05, cosine; a user's own as
``key=value`` pairs or a JSON file of :class:`objectives.TrainConfig` fields; or ``none``). It
must lie in the search space, so that the sampler can learn from it. A new study's first trials
(:func:`start_trials`, queued with Optuna's ``enqueue_trial``) are

1. the baseline and a few neighbours of it (LR x 1/2 and x 2, weight decay x 1/3 and x 3, with
   or without a warm-up): TPE's good set starts where the user's knowledge is;
2. a covering start: every decay strategy and every optimizer of the space at least once, at a
   sensible LR for its optimizer (:data:`SENSIBLE_LR`), each decay's parameters in the middle of
   their ranges. Before, TPE's 10 random start-up trials met about 21 of the 35 optimizer x
   decay cells, 9 of them once; strategies the first draws missed were rarely tried again.

The final word (:mod:`study.final_word`) retrains the baseline beside the candidates with the
same seeds, and the answer is the baseline when nothing beats it on validation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import replace
from pathlib import Path

from objectives import TrainConfig
from objectives.space import SearchSpace, config_params

__all__ = ["DEFAULT_BASELINE", "DEFAULT_BASELINE_LABEL", "SENSIBLE_LR", "baseline_label", "neighbours", "parse_baseline",
           "start_trials"]

#: The default baseline: AdamW 2e-3, weight decay 0.05, cosine to 1e-3 of the initial LR (2e-6 at
#: the end: as good as 0, and inside the search space's range, not on its edge, so that a best
#: trial near the baseline raises no edge warning), every layer at that LR.
DEFAULT_BASELINE = TrainConfig(optimizer="adamw", lr=2e-3, weight_decay=0.05, decay="cosine", cosine_eta_min_ratio=1e-3)
DEFAULT_BASELINE_LABEL = "AdamW 2e-3, weight decay 0.05, cosine"

#: A sensible initial LR per optimizer (the usual defaults of their papers and of torch.optim's
#: examples), for the covering start; cut to the space's range.
SENSIBLE_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3, "adagrad": 0.01}
SENSIBLE_WEIGHT_DECAY = 0.05  # AdamW's, cut to the space's range


def parse_baseline(spec: str, batch_size: int) -> TrainConfig | None:
    """The baseline ``spec`` names: ``default``, ``none``, ``key=value[,key=value…]`` of
    :class:`TrainConfig` fields (the others at their defaults), or a JSON file of them. Raises a
    ``ValueError`` naming what is wrong. The batch size is the study's (``batch_size``)."""
    if spec == "default":
        return replace(DEFAULT_BASELINE, batch_size=batch_size)
    if spec == "none":
        return None
    if "=" in spec:
        values: dict[str, object] = {}
        for item in spec.split(","):
            key, sep, value = item.strip().partition("=")
            if not sep or not key:
                raise ValueError(f"--baseline: {item.strip()!r} is not key=value")
            values[key.strip()] = value.strip()
    else:
        path = Path(spec)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ValueError(f"--baseline {spec}: not 'default', 'none', key=value pairs or a readable JSON file "
                             f"({e.strerror or e})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"--baseline {spec}: not valid JSON ({e})") from None
        if not isinstance(values, dict):
            raise ValueError(f"--baseline {spec}: a JSON object of TrainConfig fields is needed, but got "
                             f"{type(values).__name__}")
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    typed: dict[str, object] = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"--baseline: {key!r} is not a TrainConfig field (fields: {', '.join(fields)})")
        typed[key] = _typed(key, value, fields[key])
    given = typed.pop("batch_size", batch_size)
    if given != batch_size:
        raise ValueError(f"--baseline: batch_size={given!r} is outside the search space: the study trains every "
                         f"trial at --batch-size {batch_size}")
    try:
        return TrainConfig(**typed, batch_size=batch_size)
    except ValueError as e:
        raise ValueError(f"--baseline: {e}") from None


def _typed(key: str, value: object, kind: str) -> object:
    if kind == "str":
        return str(value)
    try:
        if kind == "int":
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number != int(number):
                raise ValueError
            return int(number)
        if isinstance(value, bool):
            raise ValueError
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"--baseline: {key}={value!r} is not {'an int' if kind == 'int' else 'a number'}") from None


def baseline_label(config: TrainConfig) -> str:
    """A baseline in a few words: the default's own name, or a user's ``TrainConfig(...)`` line."""
    if replace(config, batch_size=DEFAULT_BASELINE.batch_size) == DEFAULT_BASELINE:
        return DEFAULT_BASELINE_LABEL
    from study.recipe import config_line  # noqa: PLC0415 - only for a user's own baseline

    return config_line(config)


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def neighbours(config: TrainConfig, space: SearchSpace) -> list[tuple[str, TrainConfig]]:
    """``(label, config)`` near the baseline, cut to ``space``: LR x 1/2 and x 2, AdamW's weight
    decay x 1/3 and x 3, and the warm-up switched (2 epochs at 10 % of the LR where it has none,
    none where it has one; one-cycle has its own). Duplicates of the baseline are left out."""
    out: list[tuple[str, TrainConfig]] = []
    lr_range = space.lr_range(config.optimizer)
    for factor, words in ((0.5, "LR x 1/2"), (2.0, "LR x 2")):
        out.append((words, replace(config, lr=_clamp(config.lr * factor, lr_range))))
    if config.optimizer == "adamw":
        for factor, words in ((1 / 3, "weight decay x 1/3"), (3.0, "weight decay x 3")):
            out.append((words, replace(config, weight_decay=_clamp(config.weight_decay * factor,
                                                                  space.adamw_weight_decay))))
    if config.decay != "onecycle":
        if config.warmup_epochs:
            out.append(("no warm-up", replace(config, warmup_epochs=0)))
        elif space.warmup_epochs[1] >= 1:
            epochs = int(_clamp(2, (max(1, space.warmup_epochs[0]), space.warmup_epochs[1])))
            out.append((f"{epochs}-epoch warm-up", replace(config, warmup_epochs=epochs, warmup_start_ratio=_clamp(
                0.1, space.warmup_start_ratio))))
    seen = {config}
    kept = []
    for words, c in out:
        if c not in seen:
            seen.add(c)
            kept.append((words, c))
    return kept


def _middle(bounds: tuple[float, float], log: bool, integer: bool = False) -> float:
    low, high = bounds
    mid = math.sqrt(low * high) if log else (low + high) / 2
    return int(round(mid)) if integer else mid


def covering(space: SearchSpace, skip: set[tuple[str, str]] = frozenset()) -> list[tuple[str, TrainConfig]]:  # type: ignore[assignment]
    """``(label, config)``: every decay of ``space`` and every optimizer at least once, paired in
    turn (decay i with optimizer i mod n), at :data:`SENSIBLE_LR`, each decay's parameters in the
    middle of their ranges, no warm-up, every multiplier 1. A pair in ``skip`` (optimizer, decay)
    is covered already (the baseline) and left out."""
    n = max(len(space.decays), len(space.optimizers))
    out = []
    for i in range(n):
        decay, optimizer = space.decays[i % len(space.decays)], space.optimizers[i % len(space.optimizers)]
        if (optimizer, decay) in skip:
            continue
        values: dict[str, object] = {
            "optimizer": optimizer, "decay": decay, "lr": _clamp(SENSIBLE_LR[optimizer], space.lr_range(optimizer)),
            "momentum": _middle(space.sgd_momentum, log=False),
            "weight_decay": _clamp(SENSIBLE_WEIGHT_DECAY, space.adamw_weight_decay) if optimizer == "adamw" else 0.0,
            "step_size": _middle(space.step_size, log=False, integer=True), "step_gamma": _middle(space.step_gamma, False),
            "exp_gamma": _middle(space.exp_gamma, log=False),
            "cosine_eta_min_ratio": _middle(space.cosine_eta_min_ratio, log=True),
            "plateau_patience": _middle(space.plateau_patience, log=False, integer=True),
            "plateau_factor": _middle(space.plateau_factor, log=False),
            "onecycle_pct_start": _middle(space.onecycle_pct_start, log=False),
            "onecycle_div_factor": _middle(space.onecycle_div_factor, log=True),
            "onecycle_final_div_factor": _middle(space.onecycle_final_div_factor, log=True),
            "restart_period": _middle(space.restart_period, log=False, integer=True),
            "restart_mult": space.restart_mult[0],
            "restart_eta_min_ratio": _middle(space.restart_eta_min_ratio, log=True),
            "warmup_epochs": space.warmup_epochs[0] if decay != "onecycle" else 0,
            "warmup_start_ratio": _clamp(0.1, space.warmup_start_ratio),
            **{f"lr_mult_{layer}": _clamp(1.0, space.lr_mult) for layer in space.lr_mult_layers},
        }
        out.append((f"start: {optimizer}, {decay}", TrainConfig(**values)))
    return out


def start_trials(baseline: TrainConfig | None, space: SearchSpace, limit: int) -> list[tuple[dict, str]]:
    """``(params, label)`` of a new study's first trials, at most ``limit`` (the study's
    ``--trials``): the baseline and its :func:`neighbours`, then the :func:`covering` start.
    ``baseline`` must lie in ``space`` (:func:`objectives.space.config_params` says where not)."""
    chosen: list[tuple[str, TrainConfig]] = []
    if baseline is not None:
        chosen += [("baseline", baseline), *((f"baseline, {words}", c) for words, c in neighbours(baseline, space))]
    chosen += covering(space, {(baseline.optimizer, baseline.decay)} if baseline is not None else set())
    return [(config_params(c, space), label) for label, c in chosen[:limit]]
