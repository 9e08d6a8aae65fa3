"""The seed's MNIST MLP: 784-512-ReLU-256-ReLU-10."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LAYERS", "MLP", "build_model"]

#: The model's layers, in order; their names are the keys of per-layer LR multipliers.
LAYERS = ("fc1", "fc2", "fc3")


class MLP(nn.Module):
    """The seed's multilayer perceptron; inputs are flattened 28x28 images, ``[N, 784]``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def build_model(
    seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MLP:
    """A freshly initialised MLP, the same weights for the same seed on every device.

    The weights are drawn on the CPU from a forked RNG (the caller's global RNG state is left
    as it was) and then moved, so a seed means one initialisation whatever the device.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP()
    return model.to(device=device, dtype=dtype)
