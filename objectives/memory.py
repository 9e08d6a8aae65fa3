"""How many trials the fused engine can hold in GPU memory (``--parallel-trials auto``)."""

from __future__ import annotations

import math

import torch

from objectives.data import TRAIN_SIZE
from objectives.evaluation import EVAL_CHUNK
from objectives.model import CLASSES, PARAM_SHAPES, SIZES

__all__ = ["AUTO_SLOTS_MAX", "auto_slots", "bytes_per_trial"]


#: ``auto_slots`` never goes above this: past it an H100 step is bound by the matrix products, not by
#: kernel launches, so more trials in flight buy little throughput and cost the sampler feedback
#: (each trial in flight is one the sampler cannot learn from yet).
AUTO_SLOTS_MAX = 64


def bytes_per_trial(batch_size: int, dtype: torch.dtype) -> int:
    """A generous estimate of one trial's share of the GPU memory ``train_stream`` uses."""
    params = sum(math.prod(shape) for shape in PARAM_SHAPES)
    hidden = sum(SIZES[1:-1])
    # parameters, gradients, two optimizer states, update temporaries, and the stacks' copy
    # while they are rebuilt
    elements = 9 * params
    elements += batch_size * (SIZES[0] + 4 * hidden + 3 * CLASSES)  # a step's activations and their gradients
    elements += EVAL_CHUNK * (2 * hidden + CLASSES)  # a validation chunk
    return elements * torch.tensor([], dtype=dtype).element_size() + 8 * TRAIN_SIZE  # + its own permutation (int64)


def auto_slots(device: torch.device, batch_size: int = 128, dtype: torch.dtype = torch.float32,
               cap: int = AUTO_SLOTS_MAX) -> int:
    """How many trials to train at once on ``device``: 1 on the CPU (fusing is correct there but
    not faster), else as many as half the free GPU memory holds, at most ``cap``."""
    if device.type != "cuda":
        return 1
    free, _total = torch.cuda.mem_get_info(device)
    return max(1, min(cap, int(free // 2 // bytes_per_trial(batch_size, dtype))))
