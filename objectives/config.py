"""`TrainConfig`: everything that decides how one MLP is trained, as a frozen dataclass."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from objectives.checks import check_int, check_positive, check_real
from objectives.model import LAYERS

__all__ = ["DECAYS", "OPTIMIZERS", "TrainConfig"]

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
#: The largest float32 (torch.finfo(torch.float32).max).
FLOAT32_MAX = 3.4028234663852886e38
DECAYS = ("constant", "step", "exponential", "cosine", "plateau", "onecycle", "cosine_restarts")


@dataclass(frozen=True)
class TrainConfig:
    """One training configuration; the same object trains a fixed run, a trial, or a batch.

    Layer ``L`` starts at ``lr * lr_mult_L`` and follows ``lr * lr_mult_L * schedule(t)``, where
    the schedule factor starts at 1 (at ``warmup_start_ratio`` with a warm-up, at
    ``1 / onecycle_div_factor`` with onecycle, whose peak is ``lr``). Decay parameters of
    strategies other than ``decay`` are ignored.
    """

    optimizer: str = "sgd"  # one of OPTIMIZERS
    lr: float = 0.05  # initial learning rate of a layer whose multiplier is 1
    momentum: float = 0.9  # SGD momentum (other optimizers ignore it)
    weight_decay: float = 0.0  # decoupled for adamw, L2 for the others
    decay: str = "constant"  # one of DECAYS
    step_size: int = 5  # step: epochs between drops
    step_gamma: float = 0.5  # step: factor at each drop
    exp_gamma: float = 0.9  # exponential: factor per epoch (applied smoothly, per iteration)
    cosine_eta_min_ratio: float = 0.0  # cosine: final LR / initial LR
    plateau_patience: int = 2  # plateau: epochs without improvement before a drop
    plateau_factor: float = 0.5  # plateau: factor at each drop
    onecycle_pct_start: float = 0.3  # onecycle: share of the training spent rising to the peak (lr)
    onecycle_div_factor: float = 25.0  # onecycle: starts at lr / div_factor
    onecycle_final_div_factor: float = 1e4  # onecycle: ends at lr / (div_factor * final_div_factor)
    restart_period: int = 2  # cosine_restarts: epochs of the first cosine cycle
    restart_mult: int = 2  # cosine_restarts: each cycle is this many times longer than the one before
    restart_eta_min_ratio: float = 0.0  # cosine_restarts: lowest LR / initial LR
    warmup_epochs: int = 0  # linear warm-up before the decay, in epochs (0: none; not with onecycle)
    warmup_start_ratio: float = 0.1  # warm-up: first LR / initial LR
    lr_mult_fc1: float = 1.0  # LR multiplier of fc1
    lr_mult_fc2: float = 1.0  # LR multiplier of fc2
    lr_mult_fc3: float = 1.0  # LR multiplier of fc3
    batch_size: int = 128  # examples per step

    def __post_init__(self) -> None:
        # NumPy scalars (a value from an array, a sampler's np.float64) are numbers like the others:
        # stored as Python's, so that a config compares, prints and serialises the same
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif f.type == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, f.name, int(value))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, but got optimizer={self.optimizer!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, but got decay={self.decay!r}")
        check_positive(lr=self.lr)
        for layer in LAYERS:
            check_positive(**{f"lr_mult_{layer}": self.lr_mult(layer)})
        check_real(momentum=self.momentum, low=0.0, high=1.0, high_open=True)
        check_real(weight_decay=self.weight_decay, low=0.0, high=math.inf)
        check_real(step_gamma=self.step_gamma, low=0.0, high=1.0, low_open=True)
        check_real(exp_gamma=self.exp_gamma, low=0.0, high=1.0, low_open=True)
        check_real(cosine_eta_min_ratio=self.cosine_eta_min_ratio, low=0.0, high=1.0)
        check_real(plateau_factor=self.plateau_factor, low=0.0, high=1.0, low_open=True, high_open=True)
        check_int(step_size=self.step_size, batch_size=self.batch_size, restart_period=self.restart_period,
                  restart_mult=self.restart_mult)
        check_int(plateau_patience=self.plateau_patience, warmup_epochs=self.warmup_epochs, low=0)
        check_real(onecycle_pct_start=self.onecycle_pct_start, low=0.0, high=1.0, low_open=True, high_open=True)
        check_real(onecycle_div_factor=self.onecycle_div_factor, onecycle_final_div_factor=self.onecycle_final_div_factor,
                  low=1.0, high=math.inf, high_open=True)
        check_real(restart_eta_min_ratio=self.restart_eta_min_ratio, low=0.0, high=1.0)
        check_real(warmup_start_ratio=self.warmup_start_ratio, low=0.0, high=1.0, low_open=True)
        largest = FLOAT32_MAX  # the weights' type (bf16's range is the same): torch cannot step with more
        for layer in LAYERS:
            if self.lr * self.lr_mult(layer) > largest:
                raise ValueError(f"lr x lr_mult_{layer} must fit in float32 (<= {largest:.3g}), but got "
                                 f"lr={self.lr!r}, lr_mult_{layer}={self.lr_mult(layer)!r}")
        if self.weight_decay > largest:
            raise ValueError(f"weight_decay must fit in float32 (<= {largest:.3g}), but got weight_decay={self.weight_decay!r}")
        if self.decay == "onecycle" and self.warmup_epochs:
            raise ValueError("onecycle rises to its peak by itself (onecycle_pct_start): it takes no warm-up, "
                             f"but got warmup_epochs={self.warmup_epochs!r}")

    def lr_mult(self, layer: str) -> float:
        """The multiplier of ``layer`` (one of ``LAYERS``)."""
        return getattr(self, f"lr_mult_{layer}")

    def initial_lrs(self) -> dict[str, float]:
        """Each layer's learning rate at step 0: ``lr * lr_mult_layer``."""
        return {layer: self.lr * self.lr_mult(layer) for layer in LAYERS}
