"""The arithmetic of training: ``fp32`` (torch's default), ``bf16`` mixed precision, or ``tf32``.

``bf16`` is :func:`torch.autocast` with ``torch.bfloat16``: the matrix products of the forward
pass (and so of its backward) run in bfloat16 with float32 accumulation, while the weights,
gradients, optimizer states, losses and the LR schedule stay float32. bfloat16 has float32's
exponent range, so no loss scaling is needed. It changes the arithmetic, not the model: runs
with the same seed are still identical with each other, but not with their ``fp32`` twins, which
is why a study records the precision with its experiment.

``tf32`` (CUDA only) keeps every tensor float32 but lets the float32 matrix products use the
tensor cores' TF32 mode (10-bit mantissa inputs, float32 accumulation), through
``torch.set_float32_matmul_precision("high")`` while a run trains; the setting is put back after.

Measured (``python -m benchmarks.epoch_speed --device cpu``, 2-core AMD EPYC with AVX512-BF16,
batch 128): a ``train`` epoch takes 0.82 s in fp32 and 0.41 s in bf16 (the seed's DataLoader
loop: 1.80 s), since the matrix products, which bound a CPU epoch, run at four times fp32's
rate; see the README.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["PRECISIONS", "autocast", "check_precision", "precision_context"]

PRECISIONS = ("fp32", "bf16", "tf32")


def check_precision(precision: str, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` and can apply to data of ``dtype`` on
    ``device`` (None: any device)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, but got {precision=}")
    if precision != "fp32" and dtype != torch.float32:
        # autocast and TF32 leave float64 alone: the run would silently be a float64 one
        raise ValueError(f"precision={precision!r} needs float32 data, but got {dtype=}")
    if precision == "tf32" and device is not None and torch.device(device).type != "cuda":
        # on a CPU the same setting means other things (oneDNN's bf16 passes) or nothing
        raise ValueError(f"precision='tf32' is a mode of CUDA matrix products, but got device={str(device)!r}")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context in which a forward pass (and its loss) runs at ``precision`` on ``device``."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def precision_context(device: torch.device, precision: str) -> Iterator[None]:
    """The process-wide setting a run at ``precision`` trains under: TF32 matrix products for
    ``tf32`` on CUDA, put back on exit; nothing for the others."""
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
