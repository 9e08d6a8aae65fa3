"""The search space: parameter names, ranges, narrowing, and bad values."""

from __future__ import annotations

import optuna
import pytest

from objectives import SearchSpace, TrainConfig, suggest_config

DECAY_PARAMS = {
    "constant": set(),
    "step": {"step_size", "step_gamma"},
    "exponential": {"exp_gamma"},
    "cosine": {"cosine_eta_min_ratio"},
    "plateau": {"plateau_patience", "plateau_factor"},
}


def sample(n: int, space: SearchSpace | None = None) -> list[tuple[optuna.trial.FrozenTrial, TrainConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        config = suggest_config(trial, space)
        study.tell(trial, 0.0)
        out.append((study.trials[-1], config))
    return out


def test_names_ranges_and_conditional_params() -> None:
    space = SearchSpace()
    seen_optimizers, seen_decays = set(), set()
    for frozen, config in sample(200):
        params = frozen.params
        opt, decay = params["optimizer"], params["decay"]
        seen_optimizers.add(opt)
        seen_decays.add(decay)
        expected = {"optimizer", f"lr_{opt}", "decay", "lr_mult_fc1", "lr_mult_fc2"} | DECAY_PARAMS[decay]
        if opt == "sgd":
            expected.add("sgd_momentum")
        assert set(params) == expected
        low, high = space.lr_range(opt)
        assert low <= params[f"lr_{opt}"] <= high and config.lr == params[f"lr_{opt}"]
        assert frozen.distributions[f"lr_{opt}"].log
        assert config.optimizer == opt and config.decay == decay
        assert config.lr_mult_fc3 == 1.0  # the reference layer: no redundant degree of freedom
        assert 0.1 <= config.lr_mult_fc1 <= 10 and config.lr_mult_fc1 == params["lr_mult_fc1"]
        if opt == "sgd":
            assert config.momentum == 0.9  # fixed by default
        if opt == "adamw":
            assert config.weight_decay == 0.01
        for name in DECAY_PARAMS[decay]:
            assert getattr(config, name) == params[name]
    assert seen_optimizers == set(space.optimizers) and seen_decays == set(space.decays)


def test_narrowed_and_fixed_space() -> None:
    space = SearchSpace(optimizers=("adam",), lr_adam=(1e-3, 1e-3), decays=("cosine",),
                        lr_mult_layers=("fc1",), lr_mult=(0.5, 2.0))
    for frozen, config in sample(10, space):
        assert config.optimizer == "adam" and config.lr == 1e-3 and config.decay == "cosine"
        assert set(frozen.params) == {"optimizer", "lr_adam", "decay", "cosine_eta_min_ratio", "lr_mult_fc1"}
        assert config.lr_mult_fc2 == 1.0 and 0.5 <= config.lr_mult_fc1 <= 2.0


def test_sgd_momentum_can_be_sampled() -> None:
    space = SearchSpace(optimizers=("sgd",), sgd_momentum=(0.5, 0.99))
    momenta = {config.momentum for _, config in sample(10, space)}
    assert len(momenta) == 10 and all(0.5 <= m <= 0.99 for m in momenta)


def test_fixed_trial_gives_exact_config() -> None:
    trial = optuna.trial.FixedTrial({"optimizer": "rmsprop", "lr_rmsprop": 3e-4, "decay": "step", "step_size": 2,
                                     "step_gamma": 0.2, "lr_mult_fc1": 2.0, "lr_mult_fc2": 0.5})
    config = suggest_config(trial, batch_size=64)
    assert config == TrainConfig(optimizer="rmsprop", lr=3e-4, decay="step", step_size=2, step_gamma=0.2,
                                 lr_mult_fc1=2.0, lr_mult_fc2=0.5, batch_size=64)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"optimizers": ("sgd", "lion")}, "optimizers"), ({"optimizers": ()}, "optimizers"),
     ({"decays": ("linear",)}, "decays"), ({"lr_adam": (1e-2, 1e-3)}, "lr_adam"), ({"lr_sgd": (0.0, 1.0)}, "lr_sgd"),
     ({"lr_mult_layers": ("fc1", "fc2", "fc3")}, "lr_mult_layers"), ({"lr_mult_layers": ("fc4",)}, "lr_mult_layers"),
     ({"step_size": (0, 3)}, "step_size"), ({"step_size": (1.5, 3)}, "step_size"),
     ({"sgd_momentum": (0.5, 1.0)}, "sgd_momentum"), ({"plateau_factor": (0.5, 1.0)}, "plateau_factor")],
)
def test_bad_space_names_the_value(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}="):
        SearchSpace(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"), ({"optimizer": "lbfgs"}, "optimizer"),
     ({"decay": "linear"}, "decay"), ({"momentum": 1.0}, "momentum"), ({"batch_size": 0}, "batch_size"),
     ({"lr_mult_fc2": -1.0}, "lr_mult_fc2"), ({"step_gamma": 1.5}, "step_gamma"), ({"plateau_patience": -1}, "plateau_patience")],
)
def test_bad_config_names_the_value(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}="):
        TrainConfig(**kwargs)
