"""Samplers and pruners by name, as `study.run` offers them."""

from __future__ import annotations

import importlib
import math
import warnings

import numpy as np
import optuna

from study.constants import PRUNERS, SAMPLERS
from study.pruning import InFlightMedianPruner, SameStrategyPruner

__all__ = ["FALLBACK_PERCENTILE", "MEDIAN_STARTUP_TRIALS", "PRUNERS", "SAMPLERS", "SamplerUnavailable", "TrialSeededSampler", "make_pruner",
           "make_sampler", "warmup_epochs"]


# what each sampler needs beyond optuna (the `samplers` extra installs them)
_NEEDS = {"cmaes": ("cmaes",), "gp": ("scipy",), "qmc": ("scipy",)}


class SamplerUnavailable(RuntimeError):
    """The sampler's optional dependency is missing; the message says what to install."""


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded sampler. TPE models the conditional space by groups (``group=True``), so each
    optimizer's LR and each decay's parameters are learned from the trials that have them;
    the others fall back to random sampling for the conditional parameters they cannot model.

    Every sampler but QMC draws trial ``n`` from a stream of its own, seeded by ``(seed, n)``
    (:class:`TrialSeededSampler`): processes started with the same command on the same study
    (many machines, one ``--seed``) then never draw the same configurations, while one process
    alone gives the same trials on the same history. QMC's points are already distinct: its
    sequence index is kept in the study, and its scrambling must be one for the whole study."""
    _check_sampler(name)
    return _build(name, seed) if name == "qmc" else TrialSeededSampler(name, seed)


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Samples trial ``n`` with sampler ``name`` seeded by ``(seed, n)``. The samplers wrapped
    keep nothing between trials that matters (TPE, GP and CMA-ES rebuild their model from the
    study's trials; CMA-ES keeps its state in them), so one per trial in flight costs nothing
    but its construction. Optuna's samplers hold one random stream per instance and offer no
    way to seed it per trial: hence this wrapper."""

    def __init__(self, name: str, seed: int) -> None:
        self._name, self._seed = name, seed
        self._in_flight: dict[int, optuna.samplers.BaseSampler] = {}

    def _of(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.BaseSampler:
        sampler = self._in_flight.get(trial.number)
        if sampler is None:
            seed = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
            sampler = self._in_flight[trial.number] = _build(self._name, seed)
        return sampler

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._of(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):  # noqa: ANN001, ANN201 - BaseSampler's signature
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # noqa: ANN001, ANN201
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
        return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001
        self._of(trial).after_trial(study, trial, state, values)
        self._in_flight.pop(trial.number, None)

    def reseed_rng(self) -> None:
        pass  # each trial's stream is fixed by (seed, trial number)


def _check_sampler(name: str) -> None:
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, but got {name=}")
    for module in _NEEDS.get(name, ()):
        try:
            importlib.import_module(module)
        except ImportError:
            raise SamplerUnavailable(
                f"--sampler {name} needs the package {module!r}, which is not installed: "
                "pip install 'lr-study[samplers]'"
            ) from None


def _build(name: str, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)


def warmup_epochs(epochs: int) -> int:
    """Epochs a trial runs before the median rule may prune it: a fifth of the budget, at least 2.

    Slow starters (small-LR SGD, schedules that decay late, Adagrad) sit above the median for
    the first epochs and overtake later; by a fifth of the epochs the curves have mostly
    sorted themselves out, and four fifths of the budget can still be saved.
    """
    return max(2, math.ceil(epochs / 5))


#: The median rule judges a trial against its decay strategy once this many other trials of it
#: have a value at that epoch; before, against every strategy's trials at
#: :data:`FALLBACK_PERCENTILE`.
MEDIAN_STARTUP_TRIALS = 3
#: A trial of a strategy with fewer than MEDIAN_STARTUP_TRIALS peers is pruned only when its best
#: value so far is worse than this percentile of all trials' values at that epoch (the worst
#: quarter): looser than the median, since those peers anneal on other schedules.
FALLBACK_PERCENTILE = 75.0


def make_pruner(name: str, epochs: int, *, in_flight: bool = False) -> optuna.pruners.BasePruner:
    """The pruner ``name`` for trials that report epochs 1..``epochs``.

    ``median`` and ``patient`` judge a trial against the trials of its own decay strategy and not
    before its LR has peaked (:class:`study.pruning.SameStrategyPruner`): fair to schedules that
    anneal late; ``median`` judges a strategy with fewer than 3 trials against all trials, at
    their worst quarter. The median rule takes as peers every trial that reported the epoch,
    running ones included (:class:`study.pruning.InFlightMedianPruner`), on both paths: Optuna's
    ``MedianPruner`` waits for complete trials, so the first wave of ``--parallel-trials`` or of
    ``--workers`` had none until its last epoch. It judges a trial's best value so far.
    ``in_flight`` is kept for callers; the rule no longer depends on it. Successive halving and Hyperband already judge against running trials; they are
    Optuna's, on both paths, over all trials.
    """
    if name not in PRUNERS:
        raise ValueError(f"pruner must be one of {PRUNERS}, but got {name=}")
    warmup = warmup_epochs(epochs)
    # one rule on both paths: running trials are peers (--workers N one trial at a time has N in
    # flight too, and Optuna's MedianPruner, counting complete trials only, could not prune the
    # first of them), pruned trials at their last value
    median = InFlightMedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=warmup)
    fallback = InFlightMedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=warmup,
                                    percentile=FALLBACK_PERCENTILE)
    if name == "median":
        return SameStrategyPruner(median, epochs, fallback)
    if name == "patient":  # prune only after 2 more epochs that do not improve on the trial's best,
        # then by the median rule, its fallback included (wrapped inside the strategy's median, a rare
        # strategy's trial, with no 3 peers of its own, could never be pruned)
        with warnings.catch_warnings():  # marked experimental since Optuna 2.8; its interface is what we use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.PatientPruner(SameStrategyPruner(median, epochs, fallback), patience=2)
    if name == "hyperband":  # brackets hedge between early and late judgement themselves
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup, reduction_factor=3)
    return optuna.pruners.NopPruner()
