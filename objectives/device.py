"""Choosing the torch device once, from a user's `auto|cpu|cuda|cuda:N`."""

from __future__ import annotations

import re

import torch

__all__ = ["resolve_device"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a :class:`torch.device`.

    ``auto`` picks the current CUDA device when one is usable, else the CPU. Asking for CUDA
    where there is none, or for a GPU index that does not exist, is a ``ValueError`` naming the
    value, so a study never silently falls back to a device other than the one asked for.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N, but got {device=}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"CUDA is not available on this machine, but got {device=}")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"this machine has {count} CUDA device(s), but got {device=}")
    return resolved
