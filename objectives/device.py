"""Choosing the torch device once, from a user's `auto|cpu|cuda|cuda:N`."""

from __future__ import annotations

import re

import torch

__all__ = ["as_out_of_memory", "resolve_device"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def as_out_of_memory(e: BaseException) -> torch.OutOfMemoryError | None:
    """``e`` as an out-of-memory error, or None if it is not one. CUDA raises
    ``torch.OutOfMemoryError``; the CPU allocator raises a plain ``RuntimeError`` ("can't allocate
    memory"), which callers would otherwise take for a bug rather than a full machine. The whole
    chain is searched: an out-of-memory inside a CUDA graph capture can surface as the cause or
    context of another error (the capture's own failure)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, torch.OutOfMemoryError):
            return e
        if isinstance(e, (RuntimeError, MemoryError)) and ("can't allocate memory" in str(e)
                                                            or "not enough memory" in str(e) or isinstance(e, MemoryError)):
            return torch.OutOfMemoryError(f"CPU out of memory: {(str(e).splitlines() or [type(e).__name__])[0][-160:]}")
        e = e.__cause__ or e.__context__
    return None


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
