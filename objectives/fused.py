"""`train_many`: K configurations of the MLP trained in the same kernels.

Each layer's weights of the K trials are stacked ``[K, out, in]`` and every step runs one
batched matrix product per layer (``torch.baddbmm``) for all of them; the loss is the sum of
the trials' own mean losses, so each trial's gradient is exactly the one ``train`` computes.
Per-trial hyperparameters (initial LR, layer multipliers, decay schedule, momentum, weight
decay) become per-trial tensors applied in the update. The schedules are the same
:class:`LRSchedule` objects as in ``train`` (torch schedulers on a one-parameter optimizer),
one per trial, plateau fed with the trial's own validation loss.

torch.optim cannot do the update: its tensor ``lr`` must have one element, while here every
trial has its own LR per layer. So the update is written below for the five optimizers of the
search space, mirroring torch's single-tensor implementations step by step (same defaults,
same order of operations), and checked against them: in float64 on the CPU, ``train_many``
gives the per-epoch validation losses and final weights of K separate ``train`` runs to 1e-9
(``tests/test_fused.py``). Trials are grouped by optimizer into contiguous slices of the stack.

All trials of one call share the minibatch order (``shuffle_seed``: common random numbers,
which also lowers the noise between the trials being compared). A trial whose report asks to
stop, or whose loss diverges, stops updating at once (its LR becomes 0) and its result is
frozen. Refilling such a slot with a new trial is not done yet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from objectives.config import OPTIMIZERS, TrainConfig
from objectives.data import MnistData
from objectives.model import LAYERS, MLP, build_model
from objectives.schedules import LRSchedule
from objectives.train import TrainResult, _diverged, _result

__all__ = ["train_many"]

#: ``report(index, epoch, val_loss)``: ``index`` is the config's position in ``configs``.
ReportMany = Callable[[int, int, float], "bool | None"]

# torch.optim defaults, which ``train`` uses through build_optimizer
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8
_RMSPROP_ALPHA, _RMSPROP_EPS = 0.99, 1e-8
_ADAGRAD_EPS = 1e-10


def _per_trial(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[k]`` values shaped to broadcast over a ``[k, …]`` parameter slice."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _update(optimizer: str, p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], step: int,
            lr: torch.Tensor, momentum: torch.Tensor, wd: torch.Tensor) -> None:
    """One in-place update of the stacked slice ``p`` (k trials) with per-trial ``lr``, ``momentum``,
    ``wd`` (shape ``[k]``), in the order of torch's single-tensor implementation of ``optimizer``."""
    lr, momentum, wd = (_per_trial(t, p) for t in (lr, momentum, wd))
    decoupled = optimizer == "adamw"
    if not decoupled and bool((wd != 0).any()):
        g = g + wd * p  # grad.add(param, alpha=weight_decay)
    if optimizer == "sgd":
        if "buf" not in state:
            state["buf"] = g.clone()
        else:
            state["buf"].mul_(momentum).add_(g)
        p.sub_(lr * state["buf"])
    elif optimizer in ("adam", "adamw"):
        beta1, beta2 = _ADAM_BETAS
        if decoupled:
            p.mul_(1 - lr * wd)
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["exp_avg"].lerp_(g, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = lr / (1 - beta1**step)
        denom = (state["exp_avg_sq"].sqrt() / ((1 - beta2**step) ** 0.5)).add_(_ADAM_EPS)
        p.sub_(step_size * (state["exp_avg"] / denom))
    elif optimizer == "rmsprop":
        if "square_avg" not in state:
            state["square_avg"] = torch.zeros_like(p)
        state["square_avg"].mul_(_RMSPROP_ALPHA).addcmul_(g, g, value=1 - _RMSPROP_ALPHA)
        p.sub_(lr * (g / state["square_avg"].sqrt().add_(_RMSPROP_EPS)))
    elif optimizer == "adagrad":
        if "sum" not in state:
            state["sum"] = torch.zeros_like(p)
        state["sum"].addcmul_(g, g, value=1)
        p.sub_(lr * (g / state["sum"].sqrt().add_(_ADAGRAD_EPS)))
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, but got {optimizer=}")


def train_many(
    configs: Sequence[TrainConfig],
    data: MnistData,
    epochs: int,
    report: ReportMany | None = None,
    seeds: Sequence[int] | None = None,
    shuffle_seed: int = 0,
) -> list[TrainResult]:
    """Train every config of ``configs`` at once; results in the order of ``configs``.

    Args:
        configs: the configurations; they must share the batch size.
        data: device-resident MNIST; training runs on its device and dtype.
        epochs: passes over the training set.
        report: ``report(index, epoch, val_loss)`` after each epoch of each running trial; return
            True to stop that trial.
        seeds: initial-weight seeds, one per config (default ``0, 1, …``); trial ``i`` starts from
            the same weights as ``train(configs[i], …, seed=seeds[i])``.
        shuffle_seed: seeds the minibatch order shared by all trials; ``train`` with the same
            ``shuffle_seed`` sees the same order.
    """
    k_all = len(configs)
    if k_all == 0:
        raise ValueError("configs must not be empty")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, but got {epochs=}")
    seeds = list(range(k_all)) if seeds is None else list(seeds)
    if len(seeds) != k_all:
        raise ValueError(f"need one seed per config, but got {len(seeds)} seeds for {k_all} configs")
    batch_sizes = {c.batch_size for c in configs}
    if len(batch_sizes) != 1:
        raise ValueError(f"configs trained together must share the batch size, but got {sorted(batch_sizes)}")

    # contiguous slices per optimizer: slot s holds config order[s]
    order = sorted(range(k_all), key=lambda i: OPTIMIZERS.index(configs[i].optimizer))
    cfgs = [configs[i] for i in order]
    groups = []
    for opt in OPTIMIZERS:
        slots = [s for s, c in enumerate(cfgs) if c.optimizer == opt]
        if slots:
            groups.append((opt, slots[0], slots[-1] + 1))

    device, dtype = data.device, data.dtype
    n, bs = data.train_x.shape[0], batch_sizes.pop()
    steps_per_epoch = math.ceil(n / bs)
    models = [build_model(seeds[i], device, dtype) for i in order]
    weights = [torch.stack([getattr(m, layer).weight.detach() for m in models]).requires_grad_() for layer in LAYERS]
    biases = [torch.stack([getattr(m, layer).bias.detach() for m in models]).requires_grad_() for layer in LAYERS]
    params = [t for pair in zip(weights, biases) for t in pair]  # fc1.w, fc1.b, fc2.w, …
    param_layer = [i for i in range(len(LAYERS)) for _ in range(2)]  # row of the LR table
    states: list[dict[str, torch.Tensor]] = [{} for _ in params]
    base = {layer: [c.lr * c.lr_mult(layer) for c in cfgs] for layer in LAYERS}
    momentum = torch.tensor([c.momentum for c in cfgs], device=device, dtype=dtype)
    wd = torch.tensor([c.weight_decay for c in cfgs], device=device, dtype=dtype)
    schedules = [LRSchedule(c, steps_per_epoch, epochs) for c in cfgs]
    generator = torch.Generator(device=device).manual_seed(shuffle_seed)

    k = len(cfgs)
    active = [True] * k
    history: list[dict[str, list[float]]] = [{"val": [], "acc": [], "train": [], "sec": []} for _ in range(k)]
    diverged, stopped = [False] * k, [False] * k
    step = 0

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = x.expand(k, *x.shape)
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < len(weights) - 1:
                h = torch.relu(h)
        return h  # [k, batch, 10]

    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device, generator=generator)
        loss_sum = torch.zeros(k, device=device, dtype=dtype)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            logits = forward(data.train_x[idx])
            y = data.train_y[idx]
            losses = F.cross_entropy(logits.reshape(-1, 10), y.repeat(k), reduction="none").view(k, -1).mean(dim=1)
            for p in params:
                p.grad = None
            losses.sum().backward()  # each trial's gradient is that of its own mean loss
            step += 1
            factors = [s.factor if a else 0.0 for s, a in zip(schedules, active)]
            lrs = torch.tensor([[base[layer][s] * factors[s] for s in range(k)] for layer in LAYERS], dtype=dtype).to(device)
            with torch.no_grad():
                for p, row, state in zip(params, param_layer, states):
                    lr_layer = lrs[row]
                    for opt, a, b in groups:
                        group_state = state.setdefault(opt, {})
                        _update(opt, p[a:b], p.grad[a:b], group_state, step, lr_layer[a:b], momentum[a:b], wd[a:b])
            loss_sum += losses.detach() * idx.shape[0]
            for s in range(k):
                if active[s]:
                    schedules[s].step()

        with torch.no_grad():
            val_sum = torch.zeros(k, device=device, dtype=dtype)
            correct = torch.zeros(k, device=device, dtype=dtype)
            for i in range(0, data.val_x.shape[0], 8192):
                logits = forward(data.val_x[i : i + 8192])
                y = data.val_y[i : i + 8192]
                val_sum += F.cross_entropy(logits.reshape(-1, 10), y.repeat(k), reduction="none").view(k, -1).sum(dim=1)
                correct += (logits.argmax(dim=2) == y).sum(dim=1)
        train_l, val_l, acc = (torch.stack([loss_sum / n, val_sum / data.val_x.shape[0], correct / data.val_x.shape[0]])
                               .tolist())  # the epoch's one sync
        seconds = time.perf_counter() - t0
        for s in range(k):
            if not active[s]:
                continue
            h = history[s]
            h["train"].append(train_l[s])
            h["val"].append(val_l[s])
            h["acc"].append(acc[s])
            h["sec"].append(seconds)
            if _diverged(train_l[s], val_l[s]):
                diverged[s], active[s] = True, False
            else:
                schedules[s].epoch_end(val_l[s])
                if report is not None and report(order[s], epoch, val_l[s]):
                    stopped[s], active[s] = True, False
        if not any(active):
            break

    # a stopped trial's schedule is no longer stepped, so its factor is the one it stopped with
    results: list[TrainResult | None] = [None] * k_all
    for s in range(k):
        h = history[s]
        model = MLP().to(device=device, dtype=dtype)
        with torch.no_grad():
            for layer, w, b in zip(LAYERS, weights, biases):
                getattr(model, layer).weight.copy_(w[s])
                getattr(model, layer).bias.copy_(b[s])
        results[order[s]] = _result(
            h["val"], h["acc"], h["train"], h["sec"], diverged[s], stopped[s],
            initial_lrs={layer: base[layer][s] for layer in LAYERS},
            final_lrs={layer: base[layer][s] * schedules[s].factor for layer in LAYERS},
            model=model,
        )
    return results  # type: ignore[return-value]
