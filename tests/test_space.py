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
    "onecycle": {"onecycle_pct_start", "onecycle_div_factor", "onecycle_final_div_factor"},
    "cosine_restarts": {"restart_period", "restart_mult", "restart_eta_min_ratio"},
}


def sample(n: int, space: SearchSpace | None = None) -> list[tuple[optuna.trial.FrozenTrial, TrainConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(suggest_config(trial, space))
        study.tell(trial, 0.0)
    return list(zip(study.trials, configs, strict=True))  # copied once (a copy per trial was n² copies)


def test_names_ranges_and_conditional_params() -> None:
    space = SearchSpace()
    seen_optimizers, seen_decays = set(), set()
    for frozen, config in sample(200):
        params = frozen.params
        opt, decay = params["optimizer"], params["decay"]
        seen_optimizers.add(opt)
        seen_decays.add(decay)
        # the LR's position in its optimizer's range and the warm-up are in every trial (one group for TPE)
        expected = {"optimizer", "lr_position", "decay", "warmup_epochs", "lr_mult_fc1", "lr_mult_fc2"} | DECAY_PARAMS[decay]
        if opt == "sgd":
            expected.add("sgd_momentum")
        if opt == "adamw":
            expected.add("adamw_weight_decay")
        if decay != "onecycle":  # one-cycle rises to its peak by itself: it records a warm-up, trains without
            if params["warmup_epochs"]:
                expected.add("warmup_start_ratio")
                assert 0.01 <= config.warmup_start_ratio <= 0.5 and frozen.distributions["warmup_start_ratio"].log
            assert config.warmup_epochs == params["warmup_epochs"]
        else:
            assert config.warmup_epochs == 0
        assert set(params) == expected
        low, high = space.lr_range(opt)
        assert low <= config.lr <= high and config.lr == pytest.approx(low * (high / low) ** params["lr_position"])
        assert frozen.distributions["lr_position"] == optuna.distributions.FloatDistribution(0.0, 1.0)
        assert config.optimizer == opt and config.decay == decay
        assert config.lr_mult_fc3 == 1.0  # the reference layer: no redundant degree of freedom
        assert 0.1 <= config.lr_mult_fc1 <= 10 and config.lr_mult_fc1 == params["lr_mult_fc1"]
        if opt == "sgd":
            assert config.momentum == 0.9  # fixed by default
        if opt == "adamw":  # searched, log-uniform
            assert 1e-3 <= config.weight_decay == params["adamw_weight_decay"] <= 0.3
            assert frozen.distributions["adamw_weight_decay"].log
        else:
            assert config.weight_decay == 0.0
        for name in DECAY_PARAMS[decay]:
            assert getattr(config, name) == params[name]
    assert seen_optimizers == set(space.optimizers) and seen_decays == set(space.decays)
    warmups = {config.warmup_epochs for _, config in sample(200)}
    assert warmups == {0, 1, 2, 3}  # 0 (no warm-up) stays possible


def test_narrowed_and_fixed_space() -> None:
    space = SearchSpace(optimizers=("adam",), lr_adam=(1e-3, 1e-3), decays=("cosine",),
                        lr_mult_layers=("fc1",), lr_mult=(0.5, 2.0), warmup_epochs=(0, 0))
    for frozen, config in sample(10, space):
        assert config.optimizer == "adam" and config.lr == 1e-3 and config.decay == "cosine"
        assert set(frozen.params) == {"optimizer", "lr_position", "decay", "cosine_eta_min_ratio", "lr_mult_fc1",
                                      "warmup_epochs"}  # fixed at 0: no warm-up, so no start ratio
        assert config.warmup_epochs == 0
        assert config.lr_mult_fc2 == 1.0 and 0.5 <= config.lr_mult_fc1 <= 2.0


def test_sgd_momentum_can_be_sampled() -> None:
    space = SearchSpace(optimizers=("sgd",), sgd_momentum=(0.5, 0.99))
    momenta = {config.momentum for _, config in sample(10, space)}
    assert len(momenta) == 10 and all(0.5 <= m <= 0.99 for m in momenta)


def test_fixed_trial_gives_exact_config() -> None:
    space = SearchSpace(lr_rmsprop=(3e-4, 3e-4))  # fixed: any position is that LR
    trial = optuna.trial.FixedTrial({"optimizer": "rmsprop", "lr_position": 0.3, "decay": "step", "step_size": 2,
                                     "step_gamma": 0.2, "lr_mult_fc1": 2.0, "lr_mult_fc2": 0.5, "warmup_epochs": 2,
                                     "warmup_start_ratio": 0.05})
    config = suggest_config(trial, space, batch_size=64)
    assert config == TrainConfig(optimizer="rmsprop", lr=3e-4, decay="step", step_size=2, step_gamma=0.2,
                                 lr_mult_fc1=2.0, lr_mult_fc2=0.5, batch_size=64, warmup_epochs=2,
                                 warmup_start_ratio=0.05)
    trial = optuna.trial.FixedTrial({"optimizer": "sgd", "lr_position": 0.75, "sgd_momentum": 0.9, "decay": "onecycle",
                                     "onecycle_pct_start": 0.2, "warmup_epochs": 2,
                                     "onecycle_div_factor": 10.0, "onecycle_final_div_factor": 100.0,
                                     "lr_mult_fc1": 1.0, "lr_mult_fc2": 1.0})
    # lr_sgd ranges over [1e-4, 1]: 3/4 of the way in log is 0.1; one-cycle ignores the warm-up it records
    config = suggest_config(trial)
    assert config.lr == pytest.approx(0.1) and config.warmup_epochs == 0
    assert config == TrainConfig(optimizer="sgd", lr=config.lr, decay="onecycle", onecycle_pct_start=0.2,
                                 onecycle_div_factor=10.0, onecycle_final_div_factor=100.0)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"optimizers": ("sgd", "lion")}, "optimizers"), ({"optimizers": ()}, "optimizers"),
     ({"decays": ("linear",)}, "decays"), ({"lr_adam": (1e-2, 1e-3)}, "lr_adam"), ({"lr_sgd": (0.0, 1.0)}, "lr_sgd"),
     ({"lr_mult_layers": ("fc1", "fc2", "fc3")}, "lr_mult_layers"), ({"lr_mult_layers": ("fc4",)}, "lr_mult_layers"),
     ({"step_size": (0, 3)}, "step_size"), ({"step_size": (1.5, 3)}, "step_size"),
     ({"sgd_momentum": (0.5, 1.0)}, "sgd_momentum"), ({"plateau_factor": (0.5, 1.0)}, "plateau_factor"),
     ({"warmup_epochs": (-1, 2)}, "warmup_epochs"), ({"restart_mult": (0, 2)}, "restart_mult"),
     ({"onecycle_pct_start": (0.1, 1.0)}, "onecycle_pct_start"), ({"onecycle_div_factor": (0.5, 10.0)},
                                                                  "onecycle_div_factor")],
)
def test_bad_space_names_the_value(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}="):
        SearchSpace(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"), ({"optimizer": "lbfgs"}, "optimizer"),
     ({"decay": "linear"}, "decay"), ({"momentum": 1.0}, "momentum"), ({"batch_size": 0}, "batch_size"),
     ({"lr_mult_fc2": -1.0}, "lr_mult_fc2"), ({"step_gamma": 1.5}, "step_gamma"), ({"plateau_patience": -1}, "plateau_patience"),
     ({"warmup_epochs": -1}, "warmup_epochs"), ({"warmup_start_ratio": 0.0}, "warmup_start_ratio"),
     ({"onecycle_pct_start": 1.0}, "onecycle_pct_start"), ({"onecycle_div_factor": 0.5}, "onecycle_div_factor"),
     ({"restart_period": 0}, "restart_period"), ({"restart_mult": 0}, "restart_mult"),
     ({"restart_eta_min_ratio": 2.0}, "restart_eta_min_ratio"),
     ({"decay": "onecycle", "warmup_epochs": 1}, "warmup_epochs")],
)
def test_bad_config_names_the_value(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}="):
        TrainConfig(**kwargs)


def test_for_epochs_cuts_the_epoch_valued_ranges_to_what_can_act() -> None:
    space = SearchSpace()
    assert space.for_epochs(20) == space  # the defaults fit a 20-epoch run
    five = space.for_epochs(5)
    assert five.step_size == (1, 4) and five.plateau_patience == (1, 2)  # a drop needs an epoch after it
    assert five.restart_period == (1, 4) and five.warmup_epochs == (0, 3)  # a restart, the end of a warm-up: too
    assert space.for_epochs(2).warmup_epochs == (0, 1) and space.for_epochs(1).warmup_epochs == (0, 0)
    assert five.lr_sgd == space.lr_sgd and five.exp_gamma == space.exp_gamma  # nothing else changes
    one = space.for_epochs(1)
    assert one.step_size == (1, 1) and one.plateau_patience == (1, 1)  # never below the lower end
    assert SearchSpace(step_size=(3, 3)).for_epochs(2).step_size == (3, 3)  # a fixed value stays
    with pytest.raises(ValueError, match="epochs=0"):
        space.for_epochs(0)


@pytest.mark.parametrize("epochs", [3, 5, 9])
def test_the_cut_keeps_exactly_the_values_whose_drop_happens_within_the_run(epochs: int) -> None:
    from objectives import LRSchedule

    def factors(config: TrainConfig) -> list[float]:  # the factor of each epoch, losses only getting worse
        schedule, out = LRSchedule(config, 2, epochs), []
        for epoch in range(1, epochs + 1):
            out.append(schedule.factor)
            schedule.step(), schedule.step()
            schedule.epoch_end(1.0 + epoch)
        return out

    space = SearchSpace(step_size=(1, 50), plateau_patience=(0, 50)).for_epochs(epochs)
    top = space.step_size[1]
    assert factors(TrainConfig(decay="step", step_size=top))[-1] < 1 == factors(TrainConfig(decay="step", step_size=top + 1))[-1]
    top = space.plateau_patience[1]
    assert factors(TrainConfig(decay="plateau", plateau_patience=top))[-1] < 1
    assert factors(TrainConfig(decay="plateau", plateau_patience=top + 1))[-1] == 1


def test_a_trial_of_an_older_study_is_retrained_as_it_trained() -> None:
    """Studies made before the warm-up and AdamW's weight decay were searched have neither param:
    their trials had no warm-up and torch's default weight decay, 0.01."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from study.findings import trial_config

    params = {"optimizer": "adamw", "lr_adamw": 1e-3, "decay": "constant", "lr_mult_fc1": 2.0, "lr_mult_fc2": 0.5}
    dists = {k: CategoricalDistribution([v]) if isinstance(v, str) else FloatDistribution(1e-5, 10.0, log=True)
             for k, v in params.items()}
    old = optuna.trial.create_trial(params=params, distributions=dists, value=0.1)
    config = trial_config(old)
    assert (config.weight_decay, config.warmup_epochs, config.lr_mult_fc1) == (0.01, 0, 2.0)


def test_config_params_inverts_suggest_config_and_names_what_lies_outside() -> None:
    """The baseline a study starts from is queued through these params: they give back the config."""
    from objectives.space import config_params

    space = SearchSpace().for_epochs(20)
    configs = [TrainConfig(optimizer="adamw", lr=2e-3, weight_decay=0.05, decay="cosine", cosine_eta_min_ratio=1e-3),
               TrainConfig(optimizer="sgd", lr=0.05, decay="step", step_size=3, step_gamma=0.5, warmup_epochs=2,
                           warmup_start_ratio=0.1, lr_mult_fc1=2.0, lr_mult_fc2=0.5),
               TrainConfig(optimizer="adam", lr=1e-3, decay="onecycle")]
    for config in configs:
        again = suggest_config(optuna.trial.FixedTrial(config_params(config, space)), space)
        assert again.lr == pytest.approx(config.lr, rel=1e-12)
        assert again == TrainConfig(**{**config.__dict__, "lr": again.lr})
    base = configs[0]
    for changed, name in ((dict(lr=1.0), "lr="), (dict(optimizer="adam"), "weight_decay="),
                          (dict(lr_mult_fc3=2.0), "lr_mult_fc3="), (dict(cosine_eta_min_ratio=0.0), "cosine_eta_min_ratio="),
                          (dict(lr_mult_fc1=20.0), "lr_mult_fc1="), (dict(decay="step", step_size=30), "step_size=")):
        with pytest.raises(ValueError, match=name):
            config_params(TrainConfig(**{**base.__dict__, **changed}), space)
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        config_params(TrainConfig(optimizer="sgd", lr=0.05), SearchSpace(optimizers=("adam",)))


def test_tpe_models_the_lr_in_one_group_with_the_decay_warmup_and_multipliers() -> None:
    """TPE's group decomposition (Optuna's own, as TPESampler(group=True) uses it) puts the LR in the
    group of the parameters every trial has; before, each lr_<optimizer> was a group of its own."""
    from optuna.search_space import _GroupDecomposedSearchSpace

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(60):
        trial = study.ask()
        suggest_config(trial)
        study.tell(trial, 0.0)
    groups = [set(g) for g in _GroupDecomposedSearchSpace().calculate(study).search_spaces]
    main = next(g for g in groups if "lr_position" in g)
    assert main == {"optimizer", "lr_position", "decay", "warmup_epochs", "lr_mult_fc1", "lr_mult_fc2"}, groups
    assert not any(name.startswith("lr_") and name[3:] in SearchSpace().optimizers for g in groups for name in g)
