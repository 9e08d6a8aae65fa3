"""Schedules against the seed's formulas; per-layer multipliers reach the param groups."""

from __future__ import annotations

import math

import pytest
import torch

from objectives import LRSchedule, TrainConfig, build_model, build_optimizer, set_lr_factor, train

SPE, EPOCHS = 7, 6  # steps per epoch, epochs: 42 iterations
T = SPE * EPOCHS


def factors(config: TrainConfig) -> list[float]:
    """The factor used by each of the T updates (index t = the t-th update)."""
    schedule = LRSchedule(config, steps_per_epoch=SPE, epochs=EPOCHS)
    out = [schedule.factor]
    for _ in range(T - 1):
        out.append(schedule.step())
    return out


def test_constant() -> None:
    assert factors(TrainConfig(decay="constant")) == [1.0] * T


def test_step_matches_eta0_gamma_pow_floor_t_over_s() -> None:
    config = TrainConfig(decay="step", step_size=2, step_gamma=0.3)
    s = config.step_size * SPE  # the step size in iterations
    expected = [config.step_gamma ** (t // s) for t in range(T)]
    assert factors(config) == pytest.approx(expected, rel=1e-12)
    assert len(set(expected)) == 3  # the test covers several drops


def test_exponential_matches_eta0_gamma_pow_t() -> None:
    config = TrainConfig(decay="exponential", exp_gamma=0.5)
    gamma = config.exp_gamma ** (1 / SPE)  # per iteration, so that it is exp_gamma per epoch
    got = factors(config)
    assert got == pytest.approx([gamma**t for t in range(T)], rel=1e-12)
    assert got[SPE] == pytest.approx(0.5, rel=1e-12)


def test_cosine_matches_formula_with_t_max_total_steps() -> None:
    config = TrainConfig(decay="cosine", cosine_eta_min_ratio=0.01)
    eta_max, eta_min = 1.0, config.cosine_eta_min_ratio
    expected = [eta_min + 0.5 * (eta_max - eta_min) * (1 + math.cos(t * math.pi / T)) for t in range(T)]
    got = factors(config)
    assert got == pytest.approx(expected, rel=1e-10)
    schedule = LRSchedule(config, SPE, EPOCHS)
    for _ in range(T):
        schedule.step()
    assert schedule.factor == pytest.approx(eta_min, rel=1e-10)  # reaches η_min at T_max


def test_plateau_steps_per_epoch_on_validation_loss() -> None:
    config = TrainConfig(decay="plateau", plateau_patience=1, plateau_factor=0.5)
    schedule = LRSchedule(config, SPE, EPOCHS)
    for _ in range(SPE):
        assert schedule.step() == 1.0  # iterations never change it
    seen = [schedule.epoch_end(loss) for loss in (1.0, 0.9, 0.9, 0.9, 0.95, 0.95)]
    # improvement resets; two epochs without one (> patience 1) halve it, then the count restarts
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]


def test_multipliers_reach_param_groups_times_schedule() -> None:
    config = TrainConfig(optimizer="adam", lr=0.01, lr_mult_fc1=4.0, lr_mult_fc2=0.25, decay="exponential", exp_gamma=0.5)
    model = build_model(0)
    optimizer = build_optimizer(model, config)
    groups = {g["layer"]: g for g in optimizer.param_groups}
    assert set(groups) == {"fc1", "fc2", "fc3"}
    assert {id(p) for p in groups["fc1"]["params"]} == {id(model.fc1.weight), id(model.fc1.bias)}
    assert groups["fc1"]["lr"] == pytest.approx(0.04) and groups["fc2"]["lr"] == pytest.approx(0.0025)
    assert groups["fc3"]["lr"] == pytest.approx(0.01)
    schedule = LRSchedule(config, SPE, EPOCHS)
    for _ in range(5):
        set_lr_factor(optimizer, schedule.step())
    for layer, group in groups.items():
        assert group["lr"] == pytest.approx(config.lr * config.lr_mult(layer) * schedule.factor, rel=1e-12)
    assert schedule.factor < 1


def test_training_applies_multipliers_and_schedule(mnist_2k) -> None:
    # end to end: after E epochs of exponential decay every layer is at lr * mult * exp_gamma**E
    config = TrainConfig(optimizer="sgd", lr=0.02, lr_mult_fc1=3.0, lr_mult_fc2=0.5, decay="exponential", exp_gamma=0.8)
    result = train(config, mnist_2k, epochs=2)
    for layer in ("fc1", "fc2", "fc3"):
        assert result.initial_lrs[layer] == pytest.approx(0.02 * config.lr_mult(layer))
        assert result.final_lrs[layer] == pytest.approx(0.02 * config.lr_mult(layer) * 0.8**2, rel=1e-9)


@pytest.mark.parametrize(
    "name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                  ("rmsprop", torch.optim.RMSprop), ("adagrad", torch.optim.Adagrad)],
)
def test_optimizer_factory_by_name(name: str, cls: type) -> None:
    config = TrainConfig(optimizer=name, lr=0.01, momentum=0.8, weight_decay=0.02)
    optimizer = build_optimizer(build_model(0), config)
    assert type(optimizer) is cls
    assert all(g["weight_decay"] == 0.02 for g in optimizer.param_groups)
    if name == "sgd":
        assert all(g["momentum"] == 0.8 for g in optimizer.param_groups)
    # torch's fused kernel where it has one, on the CPU too (a tenth of an AdamW epoch's time here)
    assert all(g.get("fused") is (True if name in ("sgd", "adam", "adamw") else None) for g in optimizer.param_groups)


def _cosine(eta: float, t: float, period: float) -> float:
    return eta + 0.5 * (1 - eta) * (1 + math.cos(math.pi * t / period))


@pytest.mark.parametrize("decay", ["cosine", "step", "constant"])
def test_linear_warmup_then_the_decay_over_the_remaining_steps(decay: str) -> None:
    # Goyal et al. 2017: the LR rises linearly from r·η0 to η0 over W epochs, then decays
    config = TrainConfig(decay=decay, warmup_epochs=2, warmup_start_ratio=0.1, cosine_eta_min_ratio=0.05,
                         step_size=1, step_gamma=0.5)
    w = config.warmup_epochs * SPE
    r = config.warmup_start_ratio
    after = {"cosine": lambda u: _cosine(0.05, u, T - w), "step": lambda u: 0.5 ** (u // SPE), "constant": lambda u: 1.0}
    expected = [r + (1 - r) * t / w if t < w else after[decay](t - w) for t in range(T)]
    assert factors(config) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert factors(config)[0] == pytest.approx(0.1) and max(factors(config)) == pytest.approx(1.0)


def test_a_warmup_delays_the_plateau_patience() -> None:
    config = TrainConfig(decay="plateau", warmup_epochs=2, warmup_start_ratio=0.5, plateau_patience=0,
                         plateau_factor=0.5)
    schedule = LRSchedule(config, steps_per_epoch=SPE, epochs=EPOCHS)
    per_epoch = []
    for epoch in range(1, EPOCHS + 1):
        per_epoch.append(schedule.factor)
        for _ in range(SPE):
            schedule.step()
        schedule.epoch_end(float(epoch))  # never improves
    # warm-up from 0.5 over epochs 1-2; epoch 3 sets the best; epoch 4 does not improve: halved from epoch 5
    assert per_epoch == pytest.approx([0.5, 0.5 + 0.5 * SPE / (2 * SPE), 1.0, 1.0, 0.5, 0.25])


def test_onecycle_matches_smith_and_topin() -> None:
    # OneCycleLR's cosine form: up from 1/div to 1 over pct_start of the steps, then down to
    # 1/(div · final_div), reached after the last update (total_steps = T + 1)
    config = TrainConfig(decay="onecycle", onecycle_pct_start=0.3, onecycle_div_factor=20.0,
                         onecycle_final_div_factor=50.0)
    total = T + 1
    peak = 0.3 * total - 1
    low, end = 1 / 20, 1 / (20 * 50)

    def expected(t: int) -> float:
        if t <= peak:
            return 1 + (low - 1) / 2 * (math.cos(math.pi * t / peak) + 1)
        return end + (1 - end) / 2 * (math.cos(math.pi * (t - peak) / (total - 1 - peak)) + 1)

    got = factors(config)
    assert got == pytest.approx([expected(t) for t in range(T)], rel=1e-9)
    assert got[0] == pytest.approx(low) and max(got) == pytest.approx(1.0, rel=1e-3)
    schedule = LRSchedule(config, steps_per_epoch=SPE, epochs=EPOCHS)
    for _ in range(T):
        schedule.step()
    assert schedule.factor == pytest.approx(end)  # the factor after the last update


def test_cosine_with_warm_restarts_matches_sgdr() -> None:
    # Loshchilov & Hutter 2017: cosine from 1 down to η, restarting after T_0, then T_0·m, ...
    config = TrainConfig(decay="cosine_restarts", restart_period=1, restart_mult=2, restart_eta_min_ratio=0.02)
    t0 = SPE

    def expected(t: int) -> float:
        start, length = 0, t0
        while t >= start + length:
            start, length = start + length, length * 2
        return _cosine(0.02, t - start, length)

    got = factors(config)
    assert got == pytest.approx([expected(t) for t in range(T)], rel=1e-9)
    restarts = [t for t in range(1, T) if got[t] > got[t - 1]]
    assert restarts == [SPE, 3 * SPE]  # after 1 epoch, then after 2 more (6 epochs: not after 4 more)

