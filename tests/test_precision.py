"""bf16 mixed precision: it applies (the values change), learns as well, stays seeded, is
checked where given, and a study records it as part of its experiment."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch

from cli_helpers import FINISHED, SMALL, load
from objectives import MnistMLPObjective, TrainConfig, build_model, load_mnist, train, train_many
from objectives.lr_range import lr_range_test
from objectives.precision import autocast
from study.report import main as report_main
from study.run import main

CONFIGS = [
    TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, decay="step", step_size=2, step_gamma=0.5),
    TrainConfig(optimizer="adam", lr=1e-3, decay="cosine", lr_mult_fc1=2.0),
    TrainConfig(optimizer="rmsprop", lr=3e-4, decay="plateau", plateau_patience=0, plateau_factor=0.5),
]


def test_autocast_runs_the_layers_in_bfloat16_and_fp32_leaves_them_alone() -> None:
    model, x = build_model(0, torch.device("cpu")), torch.rand(4, 784)
    with autocast(torch.device("cpu"), "bf16"):
        assert model(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert model(x).dtype == torch.float32


@pytest.mark.slow
def test_bf16_learns_as_fp32_does_seeded_with_float32_weights(mnist_5k) -> None:
    config = TrainConfig(optimizer="adam", lr=1e-3, batch_size=64)
    a = train(config, mnist_5k, epochs=2, seed=0, precision="bf16")
    b = train(config, mnist_5k, epochs=2, seed=0, precision="bf16")
    fp32 = train(config, mnist_5k, epochs=2, seed=0)
    assert a.val_losses == b.val_losses and a.train_losses == b.train_losses  # still seeded
    assert a.val_losses != fp32.val_losses  # the arithmetic did change ...
    assert a.val_losses == pytest.approx(fp32.val_losses, rel=0.05)  # ... and not the learning
    assert a.val_accuracies[-1] > 0.90
    assert all(p.dtype == torch.float32 for p in a.model.parameters())  # fp32 master weights


# bfloat16 keeps 8 significant bits: one rounding is off by at most u = 2^-8 relative
BF16_UNIT_ROUNDOFF = 2.0 ** -8


def test_fused_bf16_gives_the_values_of_train_bf16(mnist_2k) -> None:
    epochs, kw = 3, {"seeds": [1, 2, 3], "shuffle_seed": 4}
    fused = train_many(CONFIGS, mnist_2k, epochs=epochs, precision="bf16", **kw)
    fused_fp32 = train_many(CONFIGS, mnist_2k, epochs=epochs, **kw)
    # The fused engine multiplies in batched products, `train` in single ones. In bf16 the two
    # kernels (and the kernels of different CPUs: AVX512-BF16, AMX, or none) may round a product's
    # output to neighbouring bf16 values, so the runs are not bit-equal, only equally rounded:
    # after n optimizer steps, each of which may round differently by up to u, the runs drift
    # apart like a random walk, by about u·sqrt(n) relative. Measured, the largest difference of
    # the three configs was 5.4e-3 (RMSprop) on an AMD EPYC with AVX512-BF16 (the same with
    # oneDNN held to AVX512 or AVX2), and 2.9e-3 (SGD) on an Intel Xeon with AMX; the bound
    # here, u·sqrt(48) = 0.027, is 5x the larger. The float64 tests of test_fused.py prove the
    # arithmetic itself to 1e-9.
    steps = epochs * math.ceil(mnist_2k.train_x.shape[0] / CONFIGS[0].batch_size)
    tolerance = BF16_UNIT_ROUNDOFF * math.sqrt(steps)
    for config, seed, got, fp32 in zip(CONFIGS, kw["seeds"], fused, fused_fp32):
        want = train(config, mnist_2k, epochs=epochs, seed=seed, shuffle_seed=4, precision="bf16")
        assert got.val_losses != fp32.val_losses  # the fused engine does run in bf16
        assert got.val_losses == pytest.approx(want.val_losses, rel=tolerance), config.optimizer


def test_lr_range_test_runs_in_bf16(mnist_2k) -> None:
    bf16 = lr_range_test("adam", mnist_2k, steps=30, precision="bf16")
    fp32 = lr_range_test("adam", mnist_2k, steps=30)
    assert bf16.losses != fp32.losses and bf16.losses[:5] == pytest.approx(fp32.losses[:5], rel=0.05)


def _calls(data, precision):
    config = TrainConfig()
    return {
        "train": lambda: train(config, data, 1, precision=precision),
        "train_many": lambda: train_many([config], data, 1, precision=precision),
        "lr_range_test": lambda: lr_range_test("sgd", data, steps=10, precision=precision),
    }


@pytest.mark.parametrize("call", ["train", "train_many", "lr_range_test"])
def test_bad_precision_is_a_value_error_naming_it(mnist_2k, mnist_dir: Path, call: str) -> None:
    with pytest.raises(ValueError, match="precision='fp16'"):
        _calls(mnist_2k, "fp16")[call]()
    # autocast leaves float64 alone: asking for bf16 there would silently train in float64
    data64 = load_mnist(mnist_dir, device="cpu", dtype=torch.float64, train_samples=300)
    with pytest.raises(ValueError, match="needs float32 data.*float64"):
        _calls(data64, "bf16")[call]()
    # TF32 is a mode of CUDA's matrix products: on a CPU it would be a silent fp32 run
    if mnist_2k.device.type != "cuda":
        with pytest.raises(ValueError, match="precision='tf32' is a mode of CUDA matrix products.*'cpu'"):
            _calls(mnist_2k, "tf32")[call]()


def test_tf32_sets_the_matmul_precision_only_while_it_trains() -> None:
    from objectives.precision import precision_context

    before = torch.get_float32_matmul_precision()
    with precision_context(torch.device("cpu"), "tf32"):  # nothing on a CPU
        assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ValueError, match="tf32"):
        MnistMLPObjective(2, device="cpu", precision="tf32")


def test_objective_records_its_precision(mnist_dir: Path) -> None:
    with pytest.raises(ValueError, match="precision='half'"):
        MnistMLPObjective(1, device="cpu", precision="half")
    objective = MnistMLPObjective(1, device="cpu", data_dir=mnist_dir, train_samples=1000, precision="bf16")
    study = optuna.create_study(direction="minimize")
    study.optimize(objective, n_trials=1)
    assert study.trials[0].user_attrs["precision"] == "bf16"


@pytest.mark.slow
def test_study_run_records_bf16_and_resumes_older_fp32_studies(tmp_path: Path, capsys) -> None:
    bf16_url, fp32_url = f"sqlite:///{tmp_path / 'bf16.db'}", f"sqlite:///{tmp_path / 'fp32.db'}"
    assert main(["--trials", "2", "--precision", "bf16", "--storage", bf16_url, *SMALL]) == 0
    assert "in bf16" in capsys.readouterr().out
    study = load(bf16_url)
    assert study.user_attrs["precision"] == "bf16" and study.user_attrs["fingerprint"]["precision"] == "bf16"
    assert all(t.user_attrs["precision"] == "bf16" for t in study.trials)
    # the final word retrains in the study's precision (one candidate, no baseline beside it: bf16 on
    # a CPU without bf16 units is slow, and the precision is the same for every run)
    assert report_main(["--storage", bf16_url, "--out", str(tmp_path / "report"), "--final-seeds", "1",
                        "--candidates", "1", "--no-baseline", "--device", "cpu"]) == 0
    assert load(bf16_url).user_attrs["final_test"]["precision"] == "bf16"

    # a study made before --precision existed has no precision in its fingerprint: it trained in
    # fp32, and resumes as such
    assert main(["--trials", "1", "--storage", fp32_url, *SMALL]) == 0
    study = load(fp32_url)
    older = {k: v for k, v in study.user_attrs["fingerprint"].items() if k != "precision"}
    study.set_user_attr("fingerprint", older)
    assert main(["--trials", "2", "--storage", fp32_url, *SMALL]) == 0
    trials = load(fp32_url).trials
    assert len(trials) == 2 and all(t.state in FINISHED for t in trials)
    assert trials[1].user_attrs["precision"] == "fp32"
