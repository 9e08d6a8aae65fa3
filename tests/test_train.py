"""`train`: learning, divergence, stopping, determinism."""

from __future__ import annotations

import math
import re

import pytest
import torch

from objectives import TrainConfig, evaluate, train


@pytest.mark.slow
def test_two_epochs_on_5000_samples_exceed_90_percent(mnist_5k) -> None:
    result = train(TrainConfig(optimizer="adam", lr=1e-3, batch_size=64), mnist_5k, epochs=2, seed=0)
    assert result.epochs_run == 2 and not result.diverged and not result.stopped
    assert result.val_accuracies[-1] > 0.90
    assert result.val_losses[1] < result.val_losses[0]
    assert result.best_epoch == 2 and result.best_val_loss == result.val_losses[1]
    assert result.best_val_accuracy == result.val_accuracies[1]
    # the returned model is the trained one: evaluating it again gives the last epoch's figures
    loss, acc = evaluate(result.model, mnist_5k.val_x, mnist_5k.val_y)
    assert loss == pytest.approx(result.val_losses[-1], rel=1e-5) and acc == result.val_accuracies[-1]


def test_sgd_lr_10_is_divergence_not_a_crash(mnist_2k) -> None:
    reported = []
    result = train(TrainConfig(optimizer="sgd", lr=10.0), mnist_2k, epochs=3,
                   report=lambda epoch, loss: reported.append(epoch))
    assert result.diverged and result.epochs_run == 1  # stopped at the first epoch's check
    assert not math.isfinite(result.val_losses[0]) or result.val_losses[0] > 100
    assert result.best_epoch is None and result.best_val_loss == math.inf
    assert reported == []  # the infeasible epoch is not reported


def test_report_returning_true_stops_and_raising_propagates(mnist_2k) -> None:
    calls = []

    def stop_after_first(epoch: int, val_loss: float) -> bool:
        calls.append((epoch, val_loss))
        return True

    result = train(TrainConfig(), mnist_2k, epochs=3, report=stop_after_first)
    assert result.stopped and result.epochs_run == 1 and calls == [(1, result.val_losses[0])]

    class Stop(Exception):
        pass

    def raise_at_second(epoch: int, val_loss: float) -> None:
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(TrainConfig(), mnist_2k, epochs=3, report=raise_at_second)


def test_same_seed_same_values_other_seed_other_values(mnist_2k) -> None:
    config = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01, decay="cosine")
    a = train(config, mnist_2k, epochs=2, seed=7)
    b = train(config, mnist_2k, epochs=2, seed=7)
    c = train(config, mnist_2k, epochs=2, seed=8)
    assert a.val_losses == b.val_losses and a.train_losses == b.train_losses
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert c.val_losses != a.val_losses
    # the minibatch order has its own seed: same init, another order, other values
    d = train(config, mnist_2k, epochs=2, seed=7, shuffle_seed=99)
    assert d.val_losses != a.val_losses


def test_float64_data_trains_in_float64(mnist_dir) -> None:
    from objectives import load_mnist

    data = load_mnist(mnist_dir, device="cpu", dtype=torch.float64, train_samples=300)
    result = train(TrainConfig(), data, epochs=1)
    assert all(p.dtype == torch.float64 for p in result.model.parameters())


@pytest.mark.parametrize("epochs", [0, -1, 1.5, True])
def test_bad_epochs(mnist_2k, epochs) -> None:
    with pytest.raises(ValueError, match="epochs="):
        train(TrainConfig(), mnist_2k, epochs=epochs)


def test_every_seed_argument_is_checked_where_it_is_taken_naming_it(mnist_2k) -> None:
    """-1, 1.5, True and 2**64 as a seed were errors deep in NumPy or torch ("expected non-negative
    integer", "Overflow when unpacking long long") that named no argument, or were taken (a bool;
    train_many's seeds; the range test's -1)."""
    from objectives import build_model, epoch_permutation, train_many, train_stream
    from objectives.lr_range import lr_range_test

    config = TrainConfig()
    calls = {
        "seed": [lambda s: train(config, mnist_2k, 1, seed=s), lambda s: lr_range_test("sgd", mnist_2k, steps=10, seed=s),
                 lambda s: build_model(s)],
        "shuffle_seed": [lambda s: train(config, mnist_2k, 1, seed=0, shuffle_seed=s),
                         lambda s: train_many([config], mnist_2k, 1, shuffle_seed=s),
                         lambda s: epoch_permutation(10, s, 1, "cpu")],
        "seeds[1]": [lambda s: train_many([config, config], mnist_2k, 1, seeds=[0, s])],
        "jobs[0]'s seed": [lambda s: list(train_stream(iter([(config, s)]), mnist_2k, 1, slots=1))],
    }
    for name, makers in calls.items():
        for bad in (-1, 1.5, True, 2**64):
            for make in makers:
                with pytest.raises(ValueError, match=re.escape(f"{name} must be an int in [0, {2**64 - 1}], but got "
                                                               f"{name}={bad!r}")):
                    make(bad)
    assert train(config, mnist_2k, 1, seed=2**64 - 1, shuffle_seed=2**64 - 1).val_losses  # the ends are seeds
