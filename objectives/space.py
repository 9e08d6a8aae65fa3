"""The search space: `SearchSpace` (ranges) and `suggest_config(trial) -> TrainConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import optuna

from objectives.checks import check_int, check_pair, check_real
from objectives.config import DECAYS, OPTIMIZERS, TrainConfig
from objectives.model import LAYERS

__all__ = ["EPOCH_CAPS", "LIMITS", "SearchSpace", "config_params", "suggest_config", "trial_lr"]

#: Where a sampled parameter can go no further, whatever the range (TrainConfig's bounds; None:
#: no bound): a best value at such an end of its range asks for no wider range.
LIMITS: dict[str, tuple[float | None, float | None]] = {
    "sgd_momentum": (0.0, 1.0), "adamw_weight_decay": (0.0, None), "step_size": (1, None), "step_gamma": (0.0, 1.0),
    "exp_gamma": (0.0, 1.0), "cosine_eta_min_ratio": (0.0, 1.0), "plateau_patience": (0, None),
    "plateau_factor": (0.0, 1.0), "onecycle_pct_start": (0.0, 1.0), "onecycle_div_factor": (1.0, None),
    "onecycle_final_div_factor": (1.0, None), "restart_period": (1, None), "restart_mult": (1, None),
    "restart_eta_min_ratio": (0.0, 1.0), "warmup_epochs": (0, None), "warmup_start_ratio": (0.0, 1.0),
}
#: The epoch-valued parameters ``SearchSpace.for_epochs`` cuts, each to at most ``epochs - k``.
EPOCH_CAPS = {"step_size": 1, "plateau_patience": 3, "restart_period": 1, "warmup_epochs": 1}

Range = tuple[float, float]


@dataclass(frozen=True)
class SearchSpace:
    """The ranges ``suggest_config`` samples from; narrow or fix any of them.

    A range is ``(low, high)``; ``low == high`` fixes the value (it is still recorded as a
    param). LR ranges are per optimizer because a sane initial LR differs by orders of
    magnitude between SGD and Adam. The LR is sampled as one parameter for every optimizer,
    ``lr_position``: its position in the optimizer's log range (0 its low end, 1 its high end;
    uniform, so the LR is log-uniform), so that every trial has it and a multivariate sampler
    models it jointly with the optimizer, the decay, the warm-up and the layer multipliers
    (TPE's ``group=True`` puts the parameters every trial has in one group). Before this, each
    optimizer's LR was a parameter of its own (``lr_sgd``, ``lr_adam``, …), which TPE could
    only model alone; the trial records the LR itself as its ``lr`` user attr.

    Layer-wise multipliers: only the layers in ``lr_mult_layers`` (default fc1 and fc2) get a
    sampled multiplier; the other layers (default fc3, the output layer) keep multiplier 1 and
    are the reference, so the initial LR *is* the reference layer's LR. Sampling a multiplier
    for every layer as well as the initial LR would add a redundant degree of freedom (scaling
    all multipliers up and the LR down gives the same run), so at least one layer must stay
    out of ``lr_mult_layers``.
    """

    optimizers: tuple[str, ...] = OPTIMIZERS
    lr_sgd: Range = (1e-4, 1.0)  # initial LR with SGD, log-uniform
    lr_adam: Range = (1e-5, 1e-1)  # initial LR with Adam, log-uniform
    lr_adamw: Range = (1e-5, 1e-1)  # initial LR with AdamW, log-uniform
    lr_rmsprop: Range = (1e-5, 1e-1)  # initial LR with RMSprop, log-uniform
    lr_adagrad: Range = (1e-4, 1.0)  # initial LR with Adagrad, log-uniform
    sgd_momentum: Range = (0.9, 0.9)  # fixed at 0.9 by default; a range samples it (uniform)
    adamw_weight_decay: Range = (1e-3, 0.3)  # AdamW's decoupled weight decay, log-uniform
    decays: tuple[str, ...] = DECAYS
    step_size: tuple[int, int] = (1, 8)  # step: epochs between drops, int (cut to the run: for_epochs)
    step_gamma: Range = (0.1, 0.9)  # step: factor at each drop, uniform
    exp_gamma: Range = (0.7, 0.99)  # exponential: factor per epoch, uniform
    cosine_eta_min_ratio: Range = (1e-4, 1e-1)  # cosine: final / initial LR, log-uniform
    plateau_patience: tuple[int, int] = (1, 5)  # plateau: epochs, int (cut to the run: for_epochs)
    plateau_factor: Range = (0.1, 0.7)  # plateau: factor at each drop, uniform
    onecycle_pct_start: Range = (0.1, 0.5)  # onecycle: share of the run rising to the peak, uniform
    onecycle_div_factor: Range = (5.0, 100.0)  # onecycle: peak / first LR, log-uniform
    onecycle_final_div_factor: Range = (10.0, 1e4)  # onecycle: first / last LR, log-uniform
    restart_period: tuple[int, int] = (1, 8)  # cosine_restarts: epochs of the first cycle, int (cut: for_epochs)
    restart_mult: tuple[int, int] = (1, 3)  # cosine_restarts: growth of each next cycle, int
    restart_eta_min_ratio: Range = (1e-4, 1e-1)  # cosine_restarts: lowest / initial LR, log-uniform
    warmup_epochs: tuple[int, int] = (0, 3)  # linear warm-up epochs before the decay, int; 0 = none (cut: for_epochs)
    warmup_start_ratio: Range = (0.01, 0.5)  # warm-up: first / initial LR, log-uniform
    lr_mult_layers: tuple[str, ...] = ("fc1", "fc2")  # layers with a sampled multiplier
    lr_mult: Range = (0.1, 10.0)  # per-layer multiplier, log-uniform

    def __post_init__(self) -> None:
        _members(optimizers=self.optimizers, allowed=OPTIMIZERS)
        _members(decays=self.decays, allowed=DECAYS)
        if set(self.lr_mult_layers) - set(LAYERS) or len(set(self.lr_mult_layers)) != len(self.lr_mult_layers):
            raise ValueError(f"lr_mult_layers must be distinct names from {LAYERS}, but got lr_mult_layers={self.lr_mult_layers!r}")
        if set(self.lr_mult_layers) == set(LAYERS):
            raise ValueError(
                "lr_mult_layers must leave at least one reference layer out (a multiplier on every "
                f"layer is redundant with the initial LR), but got lr_mult_layers={self.lr_mult_layers!r}"
            )
        for name in ("lr_sgd", "lr_adam", "lr_adamw", "lr_rmsprop", "lr_adagrad", "cosine_eta_min_ratio", "lr_mult",
                     "restart_eta_min_ratio"):
            check_pair(name, getattr(self, name), low=0.0, low_open=True)
        check_pair("onecycle_pct_start", self.onecycle_pct_start, low=0.0, high=1.0, low_open=True, high_open=True)
        check_pair("onecycle_div_factor", self.onecycle_div_factor, low=1.0)
        check_pair("onecycle_final_div_factor", self.onecycle_final_div_factor, low=1.0)
        check_pair("restart_period", self.restart_period, low=1, integer=True)
        check_pair("restart_mult", self.restart_mult, low=1, integer=True)
        check_pair("warmup_epochs", self.warmup_epochs, low=0, integer=True)
        check_pair("warmup_start_ratio", self.warmup_start_ratio, low=0.0, high=1.0, low_open=True)
        check_pair("sgd_momentum", self.sgd_momentum, low=0.0, high=1.0, high_open=True)
        check_pair("step_gamma", self.step_gamma, low=0.0, high=1.0, low_open=True)
        check_pair("exp_gamma", self.exp_gamma, low=0.0, high=1.0, low_open=True)
        check_pair("plateau_factor", self.plateau_factor, low=0.0, high=1.0, low_open=True, high_open=True)
        check_pair("step_size", self.step_size, low=1, integer=True)
        check_pair("plateau_patience", self.plateau_patience, low=0, integer=True)
        check_pair("adamw_weight_decay", self.adamw_weight_decay, low=0.0, low_open=True)

    def for_epochs(self, epochs: int) -> SearchSpace:
        """This space with its epoch-valued ranges cut to what can act within ``epochs`` epochs.

        A step decay first drops the LR after ``step_size`` epochs, which changes training only
        if an epoch follows: at most ``epochs - 1``. Plateau lowers the LR after ``patience + 1``
        epochs that do not improve on the best so far (the first epoch sets it), and that too
        needs an epoch after it: at most ``epochs - 3``. A warm restart, and the end of a warm-up,
        act only with an epoch after them: ``restart_period`` and ``warmup_epochs`` at most
        ``epochs - 1``. Only the upper ends are cut, never below the lower ends, so a range fixed
        by the user stays fixed.
        """
        check_int(epochs=epochs)

        def cut(bounds: tuple[int, int], most: int) -> tuple[int, int]:
            return bounds[0], max(bounds[0], min(bounds[1], most))

        return replace(self, **{name: cut(getattr(self, name), epochs - k) for name, k in EPOCH_CAPS.items()})

    def lr_range(self, optimizer: str) -> Range:
        """The initial-LR range of ``optimizer``."""
        return getattr(self, f"lr_{optimizer}")

    def lr_at(self, optimizer: str, position: float) -> float:
        """The initial LR at ``position`` (0..1) of ``optimizer``'s log range: ``low * (high / low) ** position``."""
        check_real(position=position, low=0.0, high=1.0)
        low, high = self.lr_range(optimizer)
        if position == 0 or low == high:
            return low
        if position == 1:
            return high
        # to 12 significant digits: an LR queued through its position (a baseline of 2e-3) comes
        # back as 2e-3, not 2.0000000000000005e-3
        return min(high, max(low, float(f"{math.exp(math.log(low) + position * (math.log(high) - math.log(low))):.12g}")))

    def lr_position(self, optimizer: str, lr: float) -> float:
        """Where ``lr`` sits in ``optimizer``'s log range (the inverse of :meth:`lr_at`; 0 for a
        fixed range)."""
        low, high = self.lr_range(optimizer)
        return 0.0 if high == low else (math.log(lr) - math.log(low)) / (math.log(high) - math.log(low))

    def as_dict(self) -> dict[str, object]:
        """The ranges as plain JSON-able values (for a study's user attrs)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def suggest_config(
    trial: optuna.Trial, space: SearchSpace | None = None, *, batch_size: int = 128
) -> TrainConfig:
    """Sample a :class:`TrainConfig` from ``space`` through ``trial``.

    Parameter names (stable; conditional ones only when their condition holds):
    ``optimizer``; ``lr_position`` (the LR's position in the optimizer's log range,
    :meth:`SearchSpace.lr_at`); ``sgd_momentum`` (SGD only); ``adamw_weight_decay`` (AdamW
    only); ``decay``; ``step_size``,
    ``step_gamma`` (step); ``exp_gamma`` (exponential); ``cosine_eta_min_ratio`` (cosine);
    ``plateau_patience``, ``plateau_factor`` (plateau); ``onecycle_pct_start``,
    ``onecycle_div_factor``, ``onecycle_final_div_factor`` (onecycle); ``restart_period``,
    ``restart_mult``, ``restart_eta_min_ratio`` (cosine_restarts); ``warmup_epochs`` (every trial:
    one-cycle, which has its own rise to the peak, records it and trains without one) and
    ``warmup_start_ratio`` (when it acts: above 0, not one-cycle); ``lr_mult_<layer>`` for each layer
    of ``space.lr_mult_layers``. The space is conditional: with TPE use ``group=True`` so that each
    conditional parameter is modelled on the trials that have it; ``optimizer``, ``lr_position``,
    ``decay``, ``warmup_epochs`` and the multipliers are in every trial, one group.
    """
    space = space or SearchSpace()
    optimizer = trial.suggest_categorical("optimizer", list(space.optimizers))
    lr = space.lr_at(optimizer, trial.suggest_float("lr_position", 0.0, 1.0))
    values: dict[str, object] = {"optimizer": optimizer, "lr": lr, "batch_size": batch_size}
    if optimizer == "sgd":
        values["momentum"] = trial.suggest_float("sgd_momentum", *space.sgd_momentum)
    if optimizer == "adamw":
        values["weight_decay"] = trial.suggest_float("adamw_weight_decay", *space.adamw_weight_decay, log=True)

    decay = trial.suggest_categorical("decay", list(space.decays))
    values["decay"] = decay
    if decay == "step":
        values["step_size"] = trial.suggest_int("step_size", *space.step_size)
        values["step_gamma"] = trial.suggest_float("step_gamma", *space.step_gamma)
    elif decay == "exponential":
        values["exp_gamma"] = trial.suggest_float("exp_gamma", *space.exp_gamma)
    elif decay == "cosine":
        values["cosine_eta_min_ratio"] = trial.suggest_float("cosine_eta_min_ratio", *space.cosine_eta_min_ratio, log=True)
    elif decay == "plateau":
        values["plateau_patience"] = trial.suggest_int("plateau_patience", *space.plateau_patience)
        values["plateau_factor"] = trial.suggest_float("plateau_factor", *space.plateau_factor)
    elif decay == "onecycle":
        values["onecycle_pct_start"] = trial.suggest_float("onecycle_pct_start", *space.onecycle_pct_start)
        values["onecycle_div_factor"] = trial.suggest_float("onecycle_div_factor", *space.onecycle_div_factor, log=True)
        values["onecycle_final_div_factor"] = trial.suggest_float("onecycle_final_div_factor",
                                                                  *space.onecycle_final_div_factor, log=True)
    elif decay == "cosine_restarts":
        values["restart_period"] = trial.suggest_int("restart_period", *space.restart_period)
        values["restart_mult"] = trial.suggest_int("restart_mult", *space.restart_mult)
        values["restart_eta_min_ratio"] = trial.suggest_float("restart_eta_min_ratio", *space.restart_eta_min_ratio,
                                                              log=True)
    # in every trial, so that the sampler models it with the LR; one-cycle has its own rise to the peak
    warmup = trial.suggest_int("warmup_epochs", *space.warmup_epochs)
    if decay != "onecycle":
        values["warmup_epochs"] = warmup
        if warmup:
            values["warmup_start_ratio"] = trial.suggest_float("warmup_start_ratio", *space.warmup_start_ratio,
                                                               log=True)

    for layer in space.lr_mult_layers:
        values[f"lr_mult_{layer}"] = trial.suggest_float(f"lr_mult_{layer}", *space.lr_mult, log=True)
    return TrainConfig(**values)


def config_params(config: TrainConfig, space: SearchSpace | None = None) -> dict[str, object]:
    """The params through which :func:`suggest_config` gives ``config`` (its inverse): what
    ``study.enqueue_trial`` takes to train ``config`` as a trial of ``space``.

    Raises ``ValueError`` naming the first field of ``config`` that ``space`` cannot give: a value
    outside its range, or a setting it does not search (an L2 weight decay for an optimizer other
    than AdamW, a multiplier on a reference layer). Fields that ``config.decay`` ignores are not
    looked at; the batch size is the study's, not the space's.
    """
    space = space or SearchSpace()

    def within(name: str, value: float, bounds: tuple[float, float], field: str | None = None) -> float:
        low, high = bounds
        slack = 1e-9 * max(abs(low), abs(high))
        if not low - slack <= value <= high + slack:
            raise ValueError(f"{field or name}={value!r} is outside the search space: {name} ranges over "
                             f"[{low:g}, {high:g}]")
        return min(max(value, low), high)

    opt = config.optimizer
    if opt not in space.optimizers:
        raise ValueError(f"optimizer={opt!r} is outside the search space: it searches {', '.join(space.optimizers)}")
    params: dict[str, object] = {"optimizer": opt}
    lr = within(f"lr_{opt}", config.lr, space.lr_range(opt), "lr")
    params["lr_position"] = min(1.0, max(0.0, space.lr_position(opt, lr)))
    if opt == "sgd":
        params["sgd_momentum"] = within("sgd_momentum", config.momentum, space.sgd_momentum, "momentum")
    if opt == "adamw":
        params["adamw_weight_decay"] = within("adamw_weight_decay", config.weight_decay, space.adamw_weight_decay,
                                              "weight_decay")
    elif config.weight_decay:
        raise ValueError(f"weight_decay={config.weight_decay!r} is outside the search space: it searches a weight "
                         f"decay for adamw only (with {opt}: 0)")
    decay = config.decay
    if decay not in space.decays:
        raise ValueError(f"decay={decay!r} is outside the search space: it searches {', '.join(space.decays)}")
    params["decay"] = decay
    for name in _DECAY_PARAMS[decay]:
        params[name] = within(name, getattr(config, name), getattr(space, name))
    if decay == "onecycle":  # recorded, not used (one-cycle rises by itself): any value of the range
        params["warmup_epochs"] = space.warmup_epochs[0]
    else:
        params["warmup_epochs"] = within("warmup_epochs", config.warmup_epochs, space.warmup_epochs)
    if config.warmup_epochs and decay != "onecycle":
        params["warmup_start_ratio"] = within("warmup_start_ratio", config.warmup_start_ratio, space.warmup_start_ratio)
    for layer in LAYERS:
        if layer in space.lr_mult_layers:
            params[f"lr_mult_{layer}"] = within("lr_mult", config.lr_mult(layer), space.lr_mult, f"lr_mult_{layer}")
        elif config.lr_mult(layer) != 1.0:
            raise ValueError(f"lr_mult_{layer}={config.lr_mult(layer)!r} is outside the search space: {layer} is a "
                             "reference layer (multiplier 1)")
    return params


#: The params of each decay strategy (as suggest_config names them: TrainConfig's field names).
_DECAY_PARAMS = {
    "constant": (), "step": ("step_size", "step_gamma"), "exponential": ("exp_gamma",),
    "cosine": ("cosine_eta_min_ratio",), "plateau": ("plateau_patience", "plateau_factor"),
    "onecycle": ("onecycle_pct_start", "onecycle_div_factor", "onecycle_final_div_factor"),
    "cosine_restarts": ("restart_period", "restart_mult", "restart_eta_min_ratio"),
}


def trial_lr(trial: optuna.trial.FrozenTrial) -> float:
    """The initial LR a trial trained with: its ``lr`` user attr (recorded at its start), else
    its ``lr_<optimizer>`` param (studies made before ``lr_position``); NaN if neither."""
    lr = trial.user_attrs.get("lr")
    if lr is None:
        lr = trial.params.get(f"lr_{trial.params.get('optimizer')}")
    return float(lr) if lr is not None else math.nan


def _members(*, allowed: tuple[str, ...], **values: tuple[str, ...]) -> None:
    for name, value in values.items():
        if (
            not isinstance(value, tuple)
            or not value
            or any(v not in allowed for v in value)
            or len(set(value)) != len(value)
        ):
            raise ValueError(f"{name} must be a non-empty tuple of distinct names from {allowed}, but got {name}={value!r}")


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value
