"""`MnistMLPObjective` driven by real Optuna studies (in memory), pruners and ask/tell."""

from __future__ import annotations

import pickle

import optuna
import pytest
import torch
from optuna.trial import TrialState

from objectives import MnistMLPObjective, SearchSpace

USER_ATTRS = {"seed", "lr", "initial_lr_fc1", "initial_lr_fc2", "initial_lr_fc3", "epochs_run",
              "seconds_per_epoch", "diverged", "best_epoch", "val_accuracy", "value_epoch", "min_val_loss",
              "last_val_loss", "last_val_accuracy"}


def objective(mnist_dir, **kwargs) -> MnistMLPObjective:
    kwargs = {"epochs": 2, "device": "cpu", "data_dir": mnist_dir, "train_samples": 2000, **kwargs}
    return MnistMLPObjective(**kwargs)


@pytest.mark.parametrize("metric", ["last_val_loss", "last_val_error", "min_val_loss"])
def test_study_records_params_curves_and_user_attrs(mnist_dir, metric: str) -> None:
    space = SearchSpace(optimizers=("adam", "sgd"), lr_adam=(1e-4, 3e-3), lr_sgd=(1e-3, 0.1))
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(objective(mnist_dir, space=space, epochs=3, metric=metric), n_trials=4)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    for trial in study.trials:
        opt = trial.params["optimizer"]
        assert {"optimizer", "lr_position", "decay", "lr_mult_fc1", "lr_mult_fc2"} <= set(trial.params)
        curve = trial.intermediate_values
        assert sorted(curve) == [1, 2, 3]  # one validation loss per epoch, whatever the metric
        assert USER_ATTRS <= set(trial.user_attrs)
        attrs = trial.user_attrs
        assert attrs["min_val_loss"] == min(curve.values()) and curve[attrs["best_epoch"]] == attrs["min_val_loss"]
        assert attrs["last_val_loss"] == curve[3]
        if metric == "min_val_loss":  # the lowest loss, and the accuracy of that epoch's model
            assert trial.value == attrs["min_val_loss"] and attrs["value_epoch"] == attrs["best_epoch"]
        else:  # the model after the last epoch
            assert attrs["value_epoch"] == 3 and attrs["val_accuracy"] == attrs["last_val_accuracy"]
            assert trial.value == (curve[3] if metric == "last_val_loss" else 1 - attrs["last_val_accuracy"])
        assert attrs["seed"] == trial.number and attrs["epochs_run"] == 3 and attrs["diverged"] is False
        assert attrs["lr"] == space.lr_at(opt, trial.params["lr_position"]) == attrs["initial_lr_fc3"]
        assert attrs["initial_lr_fc1"] == pytest.approx(attrs["lr"] * trial.params["lr_mult_fc1"])
        assert 0 <= attrs["val_accuracy"] <= 1 and attrs["seconds_per_epoch"] > 0


def test_threshold_pruner_prunes_after_first_epoch(mnist_dir) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    study.optimize(objective(mnist_dir, space=SearchSpace(optimizers=("adam",), lr_adam=(1e-4, 1e-3))), n_trials=2)
    for trial in study.trials:
        assert trial.state == TrialState.PRUNED
        assert list(trial.intermediate_values) == [1] and trial.user_attrs["epochs_run"] == 1


def test_median_pruner_through_ask_and_tell(mnist_dir) -> None:
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    obj = objective(mnist_dir, space=SearchSpace(optimizers=("sgd",), lr_sgd=(1e-4, 1e-4), decays=("constant",)))
    good = study.ask()
    good.report(0.1, 1)
    study.tell(good, 0.1)  # a finished trial with a low curve: the median to beat
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        obj(trial)  # lr 1e-4 for one epoch is far above 0.1: pruned at epoch 1
    study.tell(trial, state=TrialState.PRUNED)
    assert study.trials[-1].state == TrialState.PRUNED and study.trials[-1].user_attrs["epochs_run"] == 1


@pytest.mark.full_validation
def test_divergence_is_recorded_and_pruned_without_failing_the_study(mnist_dir) -> None:
    space = SearchSpace(optimizers=("sgd",), lr_sgd=(10.0, 10.0), decays=("constant",))
    study = optuna.create_study()
    study.optimize(objective(mnist_dir, epochs=3, space=space), n_trials=2)
    for trial in study.trials:
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["diverged"] is True and trial.user_attrs["epochs_run"] == 1
        assert "diverged_loss" in trial.user_attrs and trial.intermediate_values == {}


def test_same_seed_same_values(mnist_dir) -> None:
    def values(seed: int) -> list[tuple]:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=2))
        study.optimize(objective(mnist_dir, seed=seed), n_trials=4)
        assert any(t.state == TrialState.COMPLETE for t in study.trials)
        return [(t.state, t.value, t.intermediate_values, t.params) for t in study.trials]

    first = values(0)
    assert values(0) == first
    assert values(1) != first


@pytest.mark.parametrize(
    "kwargs, name",
    [({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"seed": -1}, "seed"),
     ({"train_samples": 60_000}, "train_samples"), ({"device": "tpu"}, "device"), ({"space": {"lr": 1}}, "space"),
     ({"metric": "val_auc"}, "metric")],
)
def test_bad_arguments_name_the_value(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}="):
        MnistMLPObjective(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="device='cuda'"):
        MnistMLPObjective(device="cuda")


def test_pickled_objective_reloads_its_data(mnist_dir) -> None:
    obj = objective(mnist_dir)
    assert obj.data.train_x.shape[0] == 2000
    clone = pickle.loads(pickle.dumps(obj))
    assert clone._data is None and clone.data.train_x.shape[0] == 2000 and clone.epochs == 2
