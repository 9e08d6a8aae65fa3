"""`train_many` against K separate `train` runs, in float64 on the CPU."""

from __future__ import annotations

import pytest
import torch

from conftest import fewer_validation_images
from objectives import TrainConfig, epoch_permutation, load_mnist, train, train_many, train_stream

CONFIGS = [
    TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, decay="step", step_size=1, step_gamma=0.5, lr_mult_fc1=2.0, batch_size=64),
    TrainConfig(optimizer="adam", lr=1e-3, decay="cosine", cosine_eta_min_ratio=0.01, lr_mult_fc2=0.3, batch_size=64),
    TrainConfig(optimizer="adamw", lr=2e-3, weight_decay=0.01, decay="exponential", exp_gamma=0.8, batch_size=64),
    # its validation loss rises after epoch 2 (seed 14): the LR halves and epoch 3 trains at it
    TrainConfig(optimizer="sgd", lr=0.4, momentum=0.9, decay="plateau", plateau_patience=0, plateau_factor=0.5,
                lr_mult_fc1=0.5, batch_size=64),
    TrainConfig(optimizer="adagrad", lr=0.02, weight_decay=1e-4, decay="constant", lr_mult_fc2=3.0, batch_size=64),
    TrainConfig(optimizer="sgd", lr=0.01, momentum=0.5, weight_decay=1e-3, decay="cosine", batch_size=64),
    # the strategies after warm-up, one-cycle and warm restarts were added
    TrainConfig(optimizer="adam", lr=3e-3, decay="onecycle", onecycle_pct_start=0.25, onecycle_div_factor=10.0,
                onecycle_final_div_factor=100.0, lr_mult_fc1=0.5, batch_size=64),
    TrainConfig(optimizer="sgd", lr=0.05, decay="cosine_restarts", restart_period=1, restart_mult=2,
                restart_eta_min_ratio=0.01, batch_size=64),
    TrainConfig(optimizer="adamw", lr=1e-3, decay="cosine", warmup_epochs=1, warmup_start_ratio=0.1, batch_size=64),
    TrainConfig(optimizer="rmsprop", lr=3e-4, decay="plateau", plateau_patience=0, warmup_epochs=1,
                warmup_start_ratio=0.2, batch_size=64),
]
SEEDS = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]


@pytest.fixture(scope="module")
def data64(mnist_dir):
    return fewer_validation_images(load_mnist(mnist_dir, device="cpu", dtype=torch.float64, train_samples=640))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.slow
def test_same_curves_and_final_weights_as_separate_runs(data64) -> None:
    fused = train_many(CONFIGS, data64, epochs=3, seeds=SEEDS, shuffle_seed=7)
    for config, seed, got in zip(CONFIGS, SEEDS, fused):
        want = train(config, data64, epochs=3, seed=seed, shuffle_seed=7)
        assert got.val_losses == pytest.approx(want.val_losses, rel=1e-9), config.optimizer
        assert got.train_losses == pytest.approx(want.train_losses, rel=1e-9)
        assert got.val_accuracies == want.val_accuracies
        for p, q in zip(got.model.parameters(), want.model.parameters()):
            assert rel(p, q) < 1e-9, (config.optimizer, rel(p, q))
        assert got.final_lrs == pytest.approx(want.final_lrs, rel=1e-12)
        assert got.best_epoch == want.best_epoch and not got.diverged
    # the trials really differ from each other (the test would pass vacuously otherwise)
    assert len({round(r.val_losses[-1], 6) for r in fused}) == len(CONFIGS)
    # and a plateau decay dropped its LR before the last epoch (with patience 0 and a falling loss
    # it never did: fused plateau was only compared with train before any drop)
    plateau = fused[3]
    assert plateau.val_losses[1] > plateau.val_losses[0] and plateau.final_lrs["fc3"] == pytest.approx(0.2)


@pytest.mark.slow
def test_same_as_separate_runs_with_a_short_last_batch(mnist_dir) -> None:
    """600 images in batches of 64: nine full batches and one of 24 in each epoch. The fixture
    above (640 = 10 x 64) never ran a short batch, so a fused engine that mishandled one (its
    mean over 64 rows, a padded row updating the weights) passed."""
    data = fewer_validation_images(load_mnist(mnist_dir, device="cpu", dtype=torch.float64, train_samples=600))
    assert data.train_x.shape[0] % 64 == 24
    fused = train_many(CONFIGS, data, epochs=2, seeds=SEEDS, shuffle_seed=3)
    for config, seed, got in zip(CONFIGS, SEEDS, fused):
        want = train(config, data, epochs=2, seed=seed, shuffle_seed=3)
        assert got.val_losses == pytest.approx(want.val_losses, rel=1e-9), config.optimizer
        assert got.train_losses == pytest.approx(want.train_losses, rel=1e-9)
        for p, q in zip(got.model.parameters(), want.model.parameters()):
            assert rel(p, q) < 1e-9, (config.optimizer, rel(p, q))


@pytest.mark.slow
def test_a_stopped_trial_freezes_and_a_diverged_one_is_infeasible(data64) -> None:
    configs = [CONFIGS[1], TrainConfig(optimizer="sgd", lr=10.0, batch_size=64), CONFIGS[0]]
    calls = []

    def report(index: int, epoch: int, val_loss: float) -> bool:
        calls.append((index, epoch))
        return index == 2 and epoch == 1  # stop the third config after its first epoch

    fused = train_many(configs, data64, epochs=3, report=report, seeds=[1, 2, 3], shuffle_seed=5)
    assert fused[1].diverged and fused[1].epochs_run == 1 and fused[1].best_val_loss == float("inf")
    assert fused[2].stopped and fused[2].epochs_run == 1
    assert (1, 1) not in calls and sorted(calls) == [(0, 1), (0, 2), (0, 3), (2, 1)]
    alone = train(configs[2], data64, epochs=3, seed=3, shuffle_seed=5, report=lambda e, v: True)
    for p, q in zip(fused[2].model.parameters(), alone.model.parameters()):
        assert rel(p, q) < 1e-9  # frozen where train stopped
    reference = train(configs[0], data64, epochs=3, seed=1, shuffle_seed=5)
    assert fused[0].val_losses == pytest.approx(reference.val_losses, rel=1e-9)  # unaffected by the others


def test_bad_arguments(data64) -> None:
    with pytest.raises(ValueError, match="batch size"):
        train_many([CONFIGS[0], TrainConfig(batch_size=32)], data64, epochs=1)
    with pytest.raises(ValueError, match="one seed per config"):
        train_many(CONFIGS[:2], data64, epochs=1, seeds=[1])
    with pytest.raises(ValueError, match="epochs="):
        train_many(CONFIGS[:1], data64, epochs=0)
    with pytest.raises(ValueError, match="slots="):
        next(train_stream([(CONFIGS[0], 0)], data64, epochs=1, slots=0))


@pytest.mark.slow
@pytest.mark.parametrize("ahead", [False, True], ids=["in-between", "ahead"])
def test_refilled_slots_train_like_separate_runs(data64, ahead, monkeypatch) -> None:
    # 2 slots for 5 jobs; stopping two trials early frees slots at different epochs, so the
    # later jobs start while the others are in later epochs (each slot its own batches)
    from objectives.graphs import EagerSteps

    stop_after = {0: 1, 3: 2}
    events = []
    real_run = EagerSteps.run
    monkeypatch.setattr(EagerSteps, "run", lambda self, steps: (events.append(("epoch",)), real_run(self, steps)))

    def jobs():
        for i, config in enumerate(CONFIGS[:5]):
            events.append(("take", i))
            yield config, SEEDS[i]

    def report(index: int, epoch: int, val_loss: float) -> bool:
        return stop_after.get(index) == epoch

    got = {}
    for index, result in train_stream(jobs(), data64, epochs=3, slots=2, report=report, shuffle_seed=7, ahead=ahead):
        events.append(("done", index))
        got[index] = result
    assert events[:3] == [("take", 0), ("take", 1), ("epoch",)]
    if ahead:  # trial 0 stopped at the first boundary, unforeseen: the second epoch starts at once,
        # its row idle, and trial 0's result is handed out while that epoch trains (a study tells
        # it then); then jobs are taken for the idle row and for one more stop like the last
        # boundary's, before any row is free for the second
        assert events[3:7] == [("epoch",), ("done", 0), ("take", 2), ("take", 3)]
        # trial 2's last epoch is foreseen: job 4 is taken while that epoch trains, before trial
        # 2's row is free
        assert events.index(("take", 4)) < events.index(("done", 2))
    else:  # lazily taken: a job is taken only after a trial finished and was handed out
        assert events[3:6] == [("done", 0), ("take", 2), ("epoch",)]
    assert sorted(got) == [0, 1, 2, 3, 4]
    for i, result in got.items():
        want = train(CONFIGS[i], data64, epochs=3, seed=SEEDS[i], shuffle_seed=7,
                     report=lambda e, v, i=i: stop_after.get(i) == e)
        assert result.val_losses == pytest.approx(want.val_losses, rel=1e-9), (i, CONFIGS[i].optimizer)
        assert result.stopped == want.stopped and result.epochs_run == want.epochs_run
        for p, q in zip(result.model.parameters(), want.model.parameters()):
            assert rel(p, q) < 1e-9, (i, rel(p, q))
        assert result.final_lrs == pytest.approx(want.final_lrs, rel=1e-12)


def test_the_shuffle_depends_only_on_seed_and_epoch() -> None:
    a = epoch_permutation(1000, 3, 2, torch.device("cpu"))
    assert torch.equal(a, epoch_permutation(1000, 3, 2, torch.device("cpu")))
    assert torch.equal(a.sort().values, torch.arange(1000))
    assert not torch.equal(a, epoch_permutation(1000, 3, 1, torch.device("cpu")))
    assert not torch.equal(a, epoch_permutation(1000, 4, 2, torch.device("cpu")))


def test_auto_slots_from_free_gpu_memory(monkeypatch) -> None:
    from objectives.memory import AUTO_SLOTS_MAX, auto_slots, bytes_per_trial

    assert auto_slots(torch.device("cpu")) == 1  # fusing is correct on a CPU, not faster
    per_trial = bytes_per_trial(128, torch.float32)
    assert 20e6 < per_trial < 200e6  # parameters, states and activations of one trial, generously
    for free, want in [(10 * per_trial, 5), (1.5 * per_trial, 1), (0, 1), (10**12, AUTO_SLOTS_MAX)]:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: (int(free), 80 * 2**30))
        assert auto_slots(torch.device("cuda")) == want, free  # half the free memory, 1 .. cap


def test_stack_layout_is_the_models() -> None:
    """The fused engine's flat row is derived from the model: it holds each parameter of an MLP
    at its bounds, and a trial's copy out of the stack is that MLP again."""
    from objectives import build_model
    from objectives.model import PARAM_SHAPES
    from objectives.stack import BOUNDS, P, SEGMENTS

    model = build_model(3)
    params = list(model.parameters())
    assert [tuple(p.shape) for p in params] == list(PARAM_SHAPES)
    assert P == sum(p.numel() for p in params) == 535_818
    assert SEGMENTS[-1][1] == P and [hi - lo for lo, hi in SEGMENTS] == [
        sum(p.numel() for p in layer.parameters()) for layer in (model.fc1, model.fc2, model.fc3)]
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    for p, lo, hi in zip(params, BOUNDS, BOUNDS[1:]):
        assert torch.equal(flat[lo:hi].view_as(p), p.detach())


@pytest.mark.slow
def test_a_stream_builds_its_stack_once_however_trials_join_and_leave(data64) -> None:
    """The stack was rebuilt (and on CUDA its steps captured again) at every join and leave:
    nearly every epoch boundary of a pruned study. Its K rows are now fixed for the stream."""
    from objectives.stack import Stack

    stop_after = {0: 1, 2: 2, 4: 1, 5: 3}
    before = Stack.builds
    ends = [index for index, _ in train_stream(((c, SEEDS[i]) for i, c in enumerate(CONFIGS)), data64, epochs=3,
                                               slots=3, report=lambda i, e, v: stop_after.get(i) == e)]
    assert sorted(ends) == list(range(len(CONFIGS))) and ends != sorted(ends)  # they left at different epochs
    assert Stack.builds - before == 1


@pytest.mark.slow
def test_a_fused_study_builds_one_stack_per_k(tmp_path, monkeypatch) -> None:
    """A fused study with pruning: at most one stack per distinct K (the OOM halving makes another)."""
    from cli_helpers import SMALL
    from objectives.stack import Stack
    from study.run import main

    before = Stack.builds
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["--trials", "9", "--parallel-trials", "3", "--storage", url, "--pruner", "sha", *SMALL]) == 0
    assert Stack.builds - before == 1


@pytest.mark.slow
def test_an_epochs_seconds_leave_out_the_callers_work(data64) -> None:
    """Working ahead, the caller's share (a study's tells, asks and sampling) runs inside an
    epoch's window; on a CPU, where it cannot overlap, it is not the epoch's time (a trial's
    seconds_per_epoch, the progress bar's ETA, the slow-epoch warning)."""
    import time

    # several times an epoch (about 0.15 s on a quiet CPU, 0.2 s with the first one's set-up, which
    # this measures), measured here: on a loaded machine a fixed second was less than an epoch,
    # and the test failed with the engine right
    started = time.perf_counter()
    for _ in train_stream(iter([(CONFIGS[0], SEEDS[0])]), data64, epochs=1, slots=2):
        pass
    pause = max(0.5, 4 * (time.perf_counter() - started))

    def jobs():
        for i in range(4):
            if i >= 2:  # taken ahead, while the second epoch trains
                time.sleep(pause)
            yield CONFIGS[i], SEEDS[i]

    seconds = []
    for _, result in train_stream(jobs(), data64, epochs=2, slots=2):
        time.sleep(pause)  # the caller's tell, while the next epoch trains
        seconds += result.epoch_seconds
    assert len(seconds) == 8 and max(seconds) < pause, seconds


def test_one_model_gives_one_accuracy_through_both_engines(mnist_dir) -> None:
    """The fused engine divided the correct count by the validation size on the device, in the
    data's dtype; ``train`` divides on the host in float64. In float32 the same count gave two
    accuracies (1e-8 apart), and a study that switched engines near its end compared them. A step
    so small that both engines keep the same predictions: the same count, the identical value."""
    data = load_mnist(mnist_dir, device="cpu", train_samples=256)
    config = TrainConfig(optimizer="sgd", lr=1e-9, decay="constant", batch_size=64)
    fused = train_many([config], data, epochs=1, seeds=[3], shuffle_seed=1)[0]
    alone = train(config, data, epochs=1, seed=3, shuffle_seed=1)
    assert fused.val_accuracies == alone.val_accuracies
    correct = round(alone.val_accuracies[0] * data.val_x.shape[0])
    assert alone.val_accuracies[0] == correct / data.val_x.shape[0]  # float64 on the host
