"""The answer as a user copies it: the plain PyTorch snippet follows the LRs of the schedule the
study trained (``objectives.LRSchedule``), layer by layer and step by step, for every decay, with
and without a warm-up; the ``TrainConfig(...)`` line evaluates to the same config."""

from __future__ import annotations

import pytest

from objectives import LAYERS, LRSchedule, TrainConfig
from study.recipe import config_line, pytorch_snippet, recipe_words

MULTS = {"lr_mult_fc1": 2.5, "lr_mult_fc2": 0.3}
CONFIGS = [
    TrainConfig(optimizer="adamw", lr=2e-3, weight_decay=0.05, decay="cosine", cosine_eta_min_ratio=0.01, **MULTS),
    TrainConfig(optimizer="sgd", lr=0.05, decay="step", step_size=2, step_gamma=0.3, warmup_epochs=1, **MULTS),
    TrainConfig(optimizer="adam", lr=1e-3, decay="exponential", exp_gamma=0.8, **MULTS),
    TrainConfig(optimizer="rmsprop", lr=1e-4, decay="plateau", plateau_patience=1, plateau_factor=0.5, warmup_epochs=2,
                **MULTS),
    TrainConfig(optimizer="adamw", lr=3e-3, decay="onecycle", onecycle_pct_start=0.25, onecycle_div_factor=10.0,
                onecycle_final_div_factor=100.0, **MULTS),
    # a rise of exactly one step (torch's OneCycleLR divides by zero) and of less than one
    TrainConfig(optimizer="adamw", lr=3e-3, decay="onecycle", onecycle_pct_start=1 / 81, **MULTS),
    TrainConfig(optimizer="sgd", lr=0.05, decay="onecycle", onecycle_pct_start=0.004, **MULTS),
    TrainConfig(optimizer="adam", lr=1e-3, decay="cosine_restarts", restart_period=1, restart_mult=2,
                restart_eta_min_ratio=0.05, warmup_epochs=1, **MULTS),
    TrainConfig(optimizer="adagrad", lr=0.02, decay="constant", warmup_epochs=2, warmup_start_ratio=0.2),
    TrainConfig(optimizer="sgd", lr=0.1, decay="cosine", warmup_epochs=1, cosine_eta_min_ratio=0.001),
]
EPOCHS, STEPS = 8, 10  # 10 steps an epoch: 1,280 images at batch 128; 81 one-cycle steps
LOSSES = [1.0, 0.9, 0.95, 0.96, 0.8, 0.85, 0.86, 0.87]  # plateau drops after epochs that do not improve


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.decay}-warmup{c.warmup_epochs}-{c.optimizer}")
def test_the_pytorch_snippet_follows_the_studys_schedule(config: TrainConfig) -> None:
    code = pytorch_snippet(config, EPOCHS, train_images=STEPS * config.batch_size)
    scope: dict = {}
    exec(code, scope)  # the snippet is plain Python: model, optimizer, scheduler
    optimizer = scope["optimizer"]
    schedule = LRSchedule(config, STEPS, EPOCHS)
    nominal = config.initial_lrs()
    for epoch in range(EPOCHS):
        for _ in range(STEPS):
            want = [nominal[layer] * schedule.factor for layer in LAYERS]
            assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(want, rel=1e-9, abs=1e-15), epoch
            optimizer.step()
            if "scheduler" in scope:
                scope["scheduler"].step()
            schedule.step()
        schedule.epoch_end(LOSSES[epoch])
        if "plateau" in scope and epoch >= config.warmup_epochs:
            scope["plateau"].step(LOSSES[epoch])
    assert "lr_study" not in code and "objectives" not in code  # plain PyTorch, nothing of ours


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.decay)
def test_the_config_line_is_the_config_and_the_words_name_the_lr(config: TrainConfig) -> None:
    assert eval(config_line(config), {"TrainConfig": TrainConfig}) == config
    words = recipe_words(config, 20)
    assert f"LR {config.lr:.4g}" in words and "20 epochs" in words
    assert all(f"{layer} {lr:.4g}" in words for layer, lr in config.initial_lrs().items())
    stopped = recipe_words(config, 20, stop_after=9)
    assert "scheduled over 20 epochs, stopped after epoch 9" in stopped
