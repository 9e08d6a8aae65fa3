"""The seed's MNIST MLP: 784-512-ReLU-256-ReLU-10."""

from __future__ import annotations

import torch
from torch import nn

from objectives.checks import check_seed

__all__ = ["CLASSES", "LAYERS", "MLP", "PARAM_SHAPES", "SIZES", "build_model"]

#: The model's layers, in order; their names are the keys of per-layer LR multipliers.
LAYERS = ("fc1", "fc2", "fc3")
#: Units from the input to the output: layer i maps SIZES[i] to SIZES[i + 1] (784 = 28 x 28 pixels).
SIZES = (784, 512, 256, 10)
CLASSES = SIZES[-1]
#: The shapes of ``MLP().parameters()``, in their order: each layer's weight ``(out, in)``, then its bias.
PARAM_SHAPES = tuple(shape for n_in, n_out in zip(SIZES, SIZES[1:]) for shape in ((n_out, n_in), (n_out,)))


class MLP(nn.Module):
    """The seed's multilayer perceptron; inputs are flattened 28x28 images, ``[N, 784]``."""

    def __init__(self) -> None:
        super().__init__()
        for name, n_in, n_out in zip(LAYERS, SIZES, SIZES[1:]):  # registered in order: fc1, fc2, fc3
            setattr(self, name, nn.Linear(n_in, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def build_model(
    seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MLP:
    """A freshly initialised MLP, the same weights for the same seed on every device.

    The weights are drawn on the CPU from a forked RNG (the caller's global RNG state is left
    as it was) and then moved, so a seed means one initialisation whatever the device. To a GPU
    they go from pinned memory without blocking: a trial asked while the device trains (the
    fused engine's work ahead) does not wait for the device, as a copy from pageable memory
    does (the caching host allocator keeps the pinned block until the copy has run).
    """
    check_seed(seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP()
    device = torch.device(device)
    if device.type != "cuda":
        return model.to(device=device, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.pin_memory().to(device=device, dtype=dtype, non_blocking=True)
    return model
