"""An epoch's optimizer steps as CUDA graphs: captured once, replayed once per step.

On a GPU the MLP's step is a few dozen small kernels, and launching them from Python costs more
than running them (an H200 epoch of ``train`` was 0.56 s of wall time for about 0.08 s of kernel
time). A CUDA graph launches the whole step at once. The engines write their step as a function
that reads everything that changes from step to step or epoch to epoch from device buffers
allocated once (the epoch's permutation, its LR table, a step counter on the device), so the
same function runs eagerly (on the CPU, or on CUDA with graphs turned off) or is captured here.

Why not ``torch.compile(mode="reduce-overhead")``: it compiles each new shape and each new set
of fused trials again (seconds each, where a capture here costs about one eager step), and its
graph trees guard on Python state that the engines change between epochs. Plain
``torch.cuda.graph`` needs no compiler and is what reduce-overhead uses underneath.

Why one step per graph and not the whole epoch: a step graph costs about one eager step to
capture and a few microseconds to replay, and the epoch's length in steps is a host decision
(the full batches, then the tail). The fused engine keeps its K rows for a whole stream, so it
captures its two step graphs once (before, it captured again at every join and leave).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["EagerSteps", "StepGraphs"]


class EagerSteps:
    """The steps :class:`StepGraphs` would capture, run as they are (the CPU, or CUDA with the
    graphs turned off): the same :meth:`run`, so an engine has one epoch loop either way."""

    def __init__(self, full: Callable[[], None] | None, tail: Callable[[], None] | None) -> None:
        self.full, self.tail = full, tail

    def run(self, full_steps: int) -> None:
        """One epoch: ``full_steps`` full steps, then the tail."""
        for _ in range(full_steps if self.full is not None else 0):
            self.full()
        if self.tail is not None:
            self.tail()


class StepGraphs:
    """``full`` (one step on a full batch) and ``tail`` (the epoch's last, shorter batch), each
    possibly None, captured as CUDA graphs that share one memory pool; :meth:`run` replays an epoch.

    ``warmup`` runs first, on a side stream as torch requires, so that lazy initialisation
    (cuBLAS handles, autograd's device state, an optimizer's state) happens outside the capture;
    it must leave the training state as it found it (the caller restores what it changed). The
    step functions must take no host decision from device values and allocate nothing that has
    to outlive a step: what a graph writes outside its buffers is what it writes on replay.

    ``StepGraphs.captures`` counts the graphs captured in this process (for tests and benchmarks).
    """

    captures = 0

    def __init__(self, full: Callable[[], None] | None, tail: Callable[[], None] | None,
                 warmup: Callable[[], None], device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, but got {device=}")
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            warmup()
        torch.cuda.current_stream(device).wait_stream(side)
        self.full = self._capture(full, None) if full is not None else None
        pool = self.full.pool() if self.full is not None else None
        self.tail = self._capture(tail, pool) if tail is not None else None

    @classmethod
    def _capture(cls, step: Callable[[], None], pool: object) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            step()
        cls.captures += 1
        return graph

    def run(self, full_steps: int) -> None:
        """One epoch: ``full_steps`` replays of the full step, then the tail's."""
        if self.full is not None:
            for _ in range(full_steps):
                self.full.replay()
        if self.tail is not None:
            self.tail.replay()
