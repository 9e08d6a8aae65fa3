"""The validation (or test) pass: loss and accuracy sums over device-resident data, in chunks.

One loop for ``train`` (a model, logits ``[n, 10]``) and the fused engine (K trials at once,
logits ``[K, n, 10]``): the sums stay on the device, so the caller reads them in its one host
sync per epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from objectives.precision import autocast, check_precision, precision_context

__all__ = ["EVAL_CHUNK", "eval_sums", "evaluate"]

#: Images per forward pass of an evaluation: bounds its activations' memory (see objectives.memory).
EVAL_CHUNK = 8192


@torch.no_grad()
def eval_sums(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
              precision: str = "fp32") -> torch.Tensor:
    """``[2, *lead]``: the sum of losses and the number correct over ``(x, y)``, where ``forward``
    maps ``[n, 784]`` to logits ``[*lead, n, classes]`` (``lead`` empty for one model, ``[K]`` for
    K trials); a device tensor in ``x``'s dtype (no host sync)."""
    sums = None
    for i in range(0, x.shape[0], EVAL_CHUNK):
        target = y[i : i + EVAL_CHUNK]
        with autocast(x.device, precision):  # the loss of bf16 logits is still computed in float32
            logits = forward(x[i : i + EVAL_CHUNK])
            lead = logits.shape[:-1]
            losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.expand(lead).reshape(-1),
                                     reduction="none").view(lead).sum(dim=-1)
        correct = (logits.argmax(dim=-1) == target).sum(dim=-1)
        chunk = torch.stack([losses.to(x.dtype), correct.to(x.dtype)])
        sums = chunk if sums is None else sums.add_(chunk)
    return sums


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32") -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``(x, y)``, its forward pass at ``precision``."""
    with precision_context(x.device, check_precision(precision, x.dtype, x.device)):
        loss_sum, correct = eval_sums(model, x, y, precision).tolist()
    return loss_sum / x.shape[0], correct / x.shape[0]
