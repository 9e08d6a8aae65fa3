"""The step loop of both engines reads nothing back from the device and sends nothing to it.

Counted with a ``TorchDispatchMode`` over one epoch on the CPU: the operations that, on a GPU,
are a host sync (``item``/``tolist``: ``_local_scalar_dense``) or a host-to-device copy (a
tensor made from host data, ``lift_fresh``; a copy or a device/dtype conversion, ``copy_`` /
``_to_copy``). An epoch has a few of them (its permutation and LR table go in, its losses come
out, once each); the step loop must add none, so an epoch of 8 steps has exactly as many as an
epoch of 2. The CUDA graphs capture this same step (``tests/test_cuda_graphs.py``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from objectives import TrainConfig, load_mnist, train, train_many

HOST_TRAFFIC = {"_local_scalar_dense", "lift_fresh", "lift_fresh_copy", "copy_", "_to_copy", "scalar_tensor"}
ALL_OPTIMIZERS = [
    TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, decay="cosine", weight_decay=1e-4),
    TrainConfig(optimizer="adam", lr=1e-3, decay="step", step_size=1),
    TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01, decay="onecycle"),
    TrainConfig(optimizer="rmsprop", lr=3e-4, decay="plateau", warmup_epochs=0),
    TrainConfig(optimizer="adagrad", lr=0.02, decay="exponential", exp_gamma=0.9),
]


def host_traffic(fn: Callable[[], object]) -> collections.Counter[str]:
    """The host-traffic operations ``fn`` dispatches, and its ``tolist``/``item`` calls (which
    read a tensor back without going through the dispatcher)."""
    counts: collections.Counter[str] = collections.Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in HOST_TRAFFIC:
                counts[name] += 1
            return func(*args, **(kwargs or {}))

    def counted(name: str):
        real = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            counts[name] += 1
            return real(self, *args, **kwargs)

        return real, read

    reads = {name: counted(name) for name in ("tolist", "item")}
    for name, (_, read) in reads.items():
        setattr(torch.Tensor, name, read)
    try:
        with Count():
            fn()
    finally:
        for name, (real, _) in reads.items():
            setattr(torch.Tensor, name, real)
    return counts


@pytest.fixture(scope="module")
def two_sizes(mnist_dir):
    """The same data with 2 and 8 steps per epoch (batch 128): the step loop is the difference."""
    return [load_mnist(mnist_dir, device="cpu", train_samples=steps * 128) for steps in (2, 8)]


def test_the_fused_step_loop_has_no_host_traffic(two_sizes) -> None:
    short, long = (host_traffic(lambda d=d: train_many(ALL_OPTIMIZERS, d, 1)) for d in two_sizes)
    assert long == short, (short, long)
    # the per-epoch traffic is really counted (the test would pass vacuously otherwise): the
    # permutation and LR table in, the losses out
    assert short["copy_"] >= 2 and short["tolist"] >= 1


@pytest.mark.parametrize("config", [c for c in ALL_OPTIMIZERS if c.optimizer in ("sgd", "rmsprop")],
                         ids=lambda c: c.optimizer)
def test_the_one_trial_step_loop_has_no_host_traffic(two_sizes, config) -> None:
    # Adam's and Adagrad's CPU code in torch.optim read their step count with .item() from a
    # CPU tensor: host memory, no device involved. On CUDA the step count lives on the device
    # (capturable), which tests/test_cuda_graphs.py checks with the profiler.
    short, long = (host_traffic(lambda d=d: train(config, d, 1)) for d in two_sizes)
    assert long == short, (short, long)
    assert short["copy_"] >= 1 and short["tolist"] >= 1


def test_a_host_copy_in_the_step_loop_would_be_caught(two_sizes, monkeypatch) -> None:
    # the counter sees what it is meant to catch: a per-step torch.tensor(...) is one more
    # lift_fresh per step
    import torch.nn.functional as F

    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *args, **kwargs: real(*args, **kwargs) * torch.tensor(1.0))
    short, long = (host_traffic(lambda d=d: train(ALL_OPTIMIZERS[0], d, 1)) for d in two_sizes)
    assert long["lift_fresh"] - short["lift_fresh"] == 6


def ops_per_step(configs: list[TrainConfig], two_sizes) -> float:
    """Every aten op the fused engine dispatches per training step: an epoch of 8 steps less an
    epoch of 2, over 6."""
    def count(data) -> int:
        n = [0]

        class Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                n[0] += 1
                return func(*args, **(kwargs or {}))

        with Count():
            train_many(configs, data, 1)
        return n[0]

    short, long = (count(d) for d in two_sizes)
    return (long - short) / 6


@pytest.mark.slow
def test_a_fused_step_is_the_same_ops_for_any_mix_of_optimizers_and_any_k(two_sizes) -> None:
    """The update was a block of ops per optimizer present (rows grouped by optimizer): a study
    whose trials in flight changed their mix changed its kernels, and each change of the set of
    trials needed a new capture. One formula with per-trial coefficients is the same ops for all."""
    sgd, adam = ALL_OPTIMIZERS[0], ALL_OPTIMIZERS[1]
    counts = {name: ops_per_step(configs, two_sizes) for name, configs in {
        "one SGD trial": [sgd], "three Adam trials": [adam] * 3, "the five optimizers": ALL_OPTIMIZERS,
        "the five twice, K = 10": ALL_OPTIMIZERS * 2}.items()}
    assert len(set(counts.values())) == 1, counts


def _stack_step(data, precision: str):
    """A stack of the five optimizers on ``data``, and its full step (as an epoch runs it)."""
    from objectives.model import build_model
    from objectives.schedules import LRSchedule
    from objectives.stack import FusedTrial, Stack, stack_steps

    n, k = data.train_x.shape[0], len(ALL_OPTIMIZERS)
    stack = Stack(k, data.device, data.dtype)
    stack.buffers(n, n // 128)
    for i, config in enumerate(ALL_OPTIMIZERS):
        stack.place(FusedTrial(i, config, i, LRSchedule(config, n // 128, 1), build_model(i, data.device, data.dtype)))
    stack.shared_perm.copy_(stack.order(n))
    stack.lr_table.copy_(stack.table(n // 128))
    full, _, _ = stack_steps(stack, data, 128, precision, shared=True)
    return stack, full


def test_a_bf16_step_casts_the_shared_batch_once(two_sizes) -> None:
    """Under autocast the batch, shared by the K trials as an expanded view, was cast as that view:
    K copies of it in bfloat16 at every step, in the forward and again in the backward. Cast once,
    then expanded: no op makes a ``[K, batch, 784]`` tensor."""
    from objectives.precision import precision_context

    stack, full = _stack_step(two_sizes[0], "bf16")
    made: list[str] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and tuple(t.shape) == (stack.k, 128, 784) \
                        and t.untyped_storage().nbytes() >= t.numel() * t.element_size():  # a copy, not a view
                    made.append(func.overloadpacket.__name__)
            return out

    with precision_context(stack.device, "bf16"), Watch():
        full()
    assert not made, made
    assert stack.grad.abs().sum() > 0


def test_a_fused_step_computes_into_the_stacks_buffers(two_sizes) -> None:
    """Gradients land in the stack's flat ``[K, P]`` gradient buffer and the update runs in the
    stack's buffers: no op of a step makes a tensor of a whole stack's size (through autograd the
    gradients were concatenated into a new ``[K, P]`` tensor at every step, and the update made
    four more; on a CPU a fresh buffer of that size costs more than the arithmetic on it)."""
    from objectives.stack import BOUNDS, P, SEGMENTS

    data = two_sizes[0]
    k = len(ALL_OPTIMIZERS)
    stack, full = _stack_step(data, "fp32")
    ours = {b.untyped_storage().data_ptr() for b in vars(stack).values() if isinstance(b, torch.Tensor)}
    # a whole stack, one layer's segment or one parameter of every trial: a temporary of fc1's
    # weights alone is 0.75 of a stack, which a threshold at the stack's size did not see
    sizes = {k * (hi - lo) for lo, hi in [*zip(BOUNDS, BOUNDS[1:]), *SEGMENTS]}
    made: list[tuple[str, tuple[int, ...]]] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and (t.numel() >= k * P or t.numel() in sizes) \
                        and t.untyped_storage().data_ptr() not in ours:
                    made.append((func.overloadpacket.__name__, tuple(t.shape)))
            return out

    before = stack.flat.clone()
    with Watch():
        full()
    assert not made, made
    assert stack.grad.abs().sum() > 0 and not torch.equal(stack.flat, before)  # it did compute and update


def test_a_trial_that_ends_builds_no_model_on_the_host(two_sizes) -> None:
    """``Stack.model`` built and randomly initialised a whole MLP on the host, then copied it to
    the device, for every trial that ended, only to overwrite its weights: on a GPU a copy from
    pageable memory that waits for the device. Now the copy is made on the device: no
    initialisation, and the trial's weights exactly."""
    stack, _ = _stack_step(two_sizes[0], "fp32")
    trial = stack.trials[2]
    ops: collections.Counter[str] = collections.Counter()

    class Count(TorchDispatchMode):  # the ops on memory (shapes on the meta device are free)
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not any(isinstance(t, torch.Tensor) and t.is_meta for t in [*args, out]):
                ops[func.overloadpacket.__name__] += 1
            return out

    with Count():
        model = stack.model(trial)
    assert not {"uniform_", "normal_", "kaiming_uniform_", "_to_copy"} & set(ops), ops
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(flat, stack.flat[trial.row, :flat.numel()])


def test_every_row_and_parameter_of_the_stack_starts_aligned_and_its_padding_stays_zero(two_sizes) -> None:
    """P = 535,818 ≡ 2 (mod 4): every row after the first began off a 16-byte boundary, which the
    vectorised update and the tensor-core products of a GPU read at less than full width. Rows
    are padded to ROW, a multiple of 32 elements; each parameter's view starts a multiple of 32
    elements into its row; the padding of every buffer the update reads stays zero through the
    steps of all five optimizers (and of an idle row)."""
    from objectives.stack import ALIGN, BOUNDS, P, ROW

    stack, full = _stack_step(two_sizes[0], "fp32")
    stack.free(stack.trials[1])  # an idle row too
    for _ in range(two_sizes[0].train_x.shape[0] // 128):  # the epoch's steps
        full()
    assert ALIGN == 32 and ROW % ALIGN == 0 and 0 <= ROW - P < ALIGN
    for buffer in (stack.flat, stack.grad, stack.m, stack.v):
        assert buffer.shape == (stack.k, ROW) and buffer.stride() == (ROW, 1)
        assert not buffer[:, P:].any(), buffer[:, P:]
    assert all(lo % ALIGN == 0 for lo in BOUNDS[:-1])
    for view in [*stack.params, *stack.grads]:  # each row's start of each parameter: 32-element multiples
        assert view.storage_offset() % ALIGN == 0 and view.stride(0) % ALIGN == 0
    assert stack.flat[:, :P].abs().sum() > 0 and torch.isfinite(stack.flat).all()
