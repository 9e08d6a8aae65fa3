"""The study's answer as something a user can copy: a recipe in words, a ``TrainConfig(...)`` line,
and a plain PyTorch snippet (optimizer and scheduler) that follows the same LRs step by step.

The snippet needs nothing of this project: the model is the seed's MLP written out, each layer is
a param group with its own LR (``lr x multiplier``), and the schedule is torch's schedulers
attached to that optimizer. torch's ``CosineAnnealingLR`` and ``CosineAnnealingWarmRestarts``
take one absolute ``eta_min`` for all groups, which would break the per-layer scaling, so those
two are written as a ``LambdaLR`` of the same formula; every other decay is torch's own class.
``tests/test_recipe.py`` runs the snippet and checks its LRs against :class:`objectives.LRSchedule`.
"""

from __future__ import annotations

from dataclasses import fields

from objectives import LAYERS, TrainConfig

__all__ = ["config_line", "pytorch_snippet", "recipe_words"]

_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad"}


def _g(x: float) -> str:
    return f"{x:.4g}"


def config_line(config: TrainConfig) -> str:
    """``TrainConfig(...)`` with the fields that differ from the defaults, to paste into Python."""
    default = TrainConfig()
    args = [f"{f.name}={getattr(config, f.name)!r}" for f in fields(config)
            if getattr(config, f.name) != getattr(default, f.name) or f.name in ("optimizer", "lr", "decay")]
    return f"TrainConfig({', '.join(args)})"


def _schedule_words(c: TrainConfig, epochs: int, stop_after: int | None) -> str:
    if c.decay == "constant":
        decay = "constant LR"
    elif c.decay == "step":
        decay = f"step decay: x{_g(c.step_gamma)} every {c.step_size} epochs"
    elif c.decay == "exponential":
        decay = f"exponential decay: x{_g(c.exp_gamma)} per epoch (smoothly, per step)"
    elif c.decay == "cosine":
        decay = f"cosine decay to {_g(c.cosine_eta_min_ratio)} x the initial LR"
    elif c.decay == "plateau":
        decay = (f"reduce on plateau: x{_g(c.plateau_factor)} after {c.plateau_patience} epochs without a lower "
                 "validation loss")
    elif c.decay == "onecycle":
        decay = (f"one-cycle: from LR/{_g(c.onecycle_div_factor)} up to the LR over the first "
                 f"{100 * c.onecycle_pct_start:.0f} % of the steps, then cosine down to "
                 f"LR/{_g(c.onecycle_div_factor * c.onecycle_final_div_factor)}")
    else:
        decay = (f"cosine with warm restarts: first cycle {c.restart_period} epochs, each next x{c.restart_mult}, "
                 f"down to {_g(c.restart_eta_min_ratio)} x the initial LR")
    if c.warmup_epochs:
        decay = (f"linear warm-up over {c.warmup_epochs} epochs from {_g(c.warmup_start_ratio)} x the LR, then "
                 f"{decay}")
    if stop_after is not None and stop_after < epochs:
        return f"{decay}, scheduled over {epochs} epochs, stopped after epoch {stop_after}"
    return f"{decay}; {epochs} epochs"


def recipe_words(config: TrainConfig, epochs: int, stop_after: int | None = None) -> str:
    """The recipe in a sentence: optimizer, LR, the layers' LRs, the schedule over ``epochs``, and
    the epoch training stops after if that is earlier."""
    opt = _NAMES[config.optimizer]
    extra = ""
    if config.optimizer == "sgd":
        extra = f", momentum {_g(config.momentum)}"
    if config.weight_decay:
        extra += f", weight decay {_g(config.weight_decay)}"
    layers = ", ".join(f"{layer} {_g(lr)}" for layer, lr in config.initial_lrs().items())
    mults = "/".join(_g(config.lr_mult(layer)) for layer in LAYERS)
    return (f"{opt}, LR {_g(config.lr)}{extra}; layer LRs {layers} (multipliers {mults}); "
            f"{_schedule_words(config, epochs, stop_after)}; batch {config.batch_size}")


def _optimizer_code(c: TrainConfig) -> str:
    groups = "\n".join(f'    {{"params": model.{layer}.parameters(), "lr": {lr!r}}},  # {c.lr!r} x {c.lr_mult(layer)!r}'
                       for layer, lr in c.initial_lrs().items())
    kwargs = ""
    if c.optimizer == "sgd":
        kwargs = f", momentum={c.momentum!r}"
    if c.weight_decay:
        kwargs += f", weight_decay={c.weight_decay!r}"
    return f"optimizer = torch.optim.{_NAMES[c.optimizer]}([\n{groups}\n]{kwargs})"


def _decay_code(c: TrainConfig, total: str) -> str | None:
    """The decay's scheduler, stepped per step over ``total`` steps (None: constant or plateau)."""
    sched = "torch.optim.lr_scheduler"
    if c.decay == "step":
        return f"{sched}.StepLR(optimizer, step_size={c.step_size} * steps_per_epoch, gamma={c.step_gamma!r})"
    if c.decay == "exponential":
        return f"{sched}.ExponentialLR(optimizer, gamma={c.exp_gamma!r} ** (1 / steps_per_epoch))"
    if c.decay == "cosine":  # the same formula as CosineAnnealingLR, relative to each group's LR
        eta = c.cosine_eta_min_ratio
        return (f"{sched}.LambdaLR(optimizer, lambda t: {eta!r} + (1 - {eta!r}) * "
                f"(1 + math.cos(math.pi * min(t, {total}) / ({total}))) / 2)")
    if c.decay == "onecycle":
        # a rise under one step: torch divides by zero at exactly one and starts at the peak below it;
        # LRSchedule (objectives.schedules) takes half a step, and so does the snippet
        pct = c.onecycle_pct_start
        rise = f"{pct!r} if {pct!r} * ({total} + 1) > 1 else 0.5 / ({total} + 1)"
        return (f"{sched}.OneCycleLR(optimizer, max_lr=[g[\"lr\"] for g in optimizer.param_groups], "
                f"total_steps={total} + 1, pct_start={rise}, div_factor={c.onecycle_div_factor!r}, "
                f"final_div_factor={c.onecycle_final_div_factor!r}, anneal_strategy=\"cos\", cycle_momentum=False)")
    if c.decay == "cosine_restarts":  # CosineAnnealingWarmRestarts' formula, relative to each group's LR
        eta = c.restart_eta_min_ratio
        return (f"{sched}.LambdaLR(optimizer, lambda t: {eta!r} + (1 - {eta!r}) * "
                f"(1 + math.cos(math.pi * restart_phase(t))) / 2)")
    return None


def pytorch_snippet(config: TrainConfig, epochs: int, train_images: int = 60_000, stop_after: int | None = None) -> str:
    """Plain PyTorch that trains the seed's MLP with ``config``, its schedule spanning ``epochs``
    epochs (stopping after ``stop_after`` if given): the model, the optimizer with one param group
    per layer, the scheduler, and the loop that steps them."""
    c = config
    warm = c.warmup_epochs
    total = "(epochs - warmup_epochs) * steps_per_epoch" if warm else "epochs * steps_per_epoch"
    lines = [
        "import math",
        "import torch",
        "from torch import nn",
        "",
        "",
        "class MLP(nn.Module):  # the seed's 784-512-ReLU-256-ReLU-10",
        "    def __init__(self):",
        "        super().__init__()",
        "        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 512), nn.Linear(512, 256), nn.Linear(256, 10)",
        "",
        "    def forward(self, x):  # x: [N, 784], pixels / 255 normalised with mean 0.1307, sd 0.3081",
        "        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))",
        "",
        "",
        "model = MLP()",
        f"epochs, batch_size = {epochs}, {c.batch_size}",
        f"steps_per_epoch = math.ceil({train_images} / batch_size)  # {train_images:,} training images",
        _optimizer_code(c),
    ]
    if warm:
        lines.append(f"warmup_epochs = {warm}")
    if c.decay == "cosine_restarts":
        lines += [
            f"def restart_phase(t, period={c.restart_period} * steps_per_epoch, mult={c.restart_mult}):",
            "    while t >= period:  # the cycle t falls in, and how far into it",
            "        t, period = t - period, period * mult",
            "    return t / period",
        ]
    decay = _decay_code(c, total)
    sched = "torch.optim.lr_scheduler"
    plateau = None
    if c.decay == "plateau":
        plateau = (f"plateau = {sched}.ReduceLROnPlateau(optimizer, mode=\"min\", factor={c.plateau_factor!r}, "
                   f"patience={c.plateau_patience}, eps=0.0)")
    if warm:
        warmup = (f"{sched}.LinearLR(optimizer, start_factor={c.warmup_start_ratio!r}, end_factor=1.0, "
                  "total_iters=warmup_epochs * steps_per_epoch)")
        if decay is None:
            lines.append(f"scheduler = {warmup}")
        else:  # the warm-up's LinearLR is built first: a scheduler's constructor sets the LR it starts from
            lines += [f"warmup = {warmup}", f"decay = {decay}",
                      f"scheduler = {sched}.SequentialLR(optimizer, [warmup, decay], "
                      "milestones=[warmup_epochs * steps_per_epoch])"]
    elif decay is not None:
        lines.append(f"scheduler = {decay}")
    if plateau:
        lines.append(plateau)
    stepped = warm or decay is not None
    lines += [
        "",
        "# for epoch in range(epochs):" if stop_after is None or stop_after >= epochs else
        f"# for epoch in range({stop_after}):  # the schedule spans {epochs} epochs; the model after epoch {stop_after}",
        "#     for x, y in shuffled minibatches of batch_size:",
        "#         loss = nn.functional.cross_entropy(model(x), y)",
        "#         optimizer.zero_grad()",
        "#         loss.backward()",
        "#         optimizer.step()",
    ]
    if stepped:
        lines.append("#         scheduler.step()  # once per step, not per epoch")
    if plateau:
        lines.append("#     if epoch >= warmup_epochs:" if warm else "#     # once per epoch, with the validation loss:")
        lines.append(("#         " if warm else "#     ") + "plateau.step(validation_loss)")
    return "\n".join(lines) + "\n"
