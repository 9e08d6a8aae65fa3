"""optuna-dashboard, as a real process on loopback, shows what study.run stored."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from cli_helpers import free_port, start_dashboard, stop_dashboard
from study.run import main


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["1", "3"])  # one trial at a time, and three fused
def test_dashboard_shows_trials_params_curves_and_user_attrs(tmp_path: Path, parallel: str) -> None:
    storage = f"sqlite:///{tmp_path / 'dash.db'}"
    assert main(["--trials", "3", "--storage", storage, "--epochs", "3", "--train-samples", "2000",
                 "--device", "cpu", "--pruner", "none", "--parallel-trials", parallel]) == 0

    port = free_port()
    proc = start_dashboard(storage, port)
    base = f"http://127.0.0.1:{port}"
    try:
        studies = get(f"{base}/api/studies")["study_summaries"]
        [summary] = [s for s in studies if s["study_name"] == "mnist-mlp-lr"]
        detail = get(f"{base}/api/studies/{summary['study_id']}")
        trials = detail["trials"]
        assert len(trials) == 3
        for trial in trials:
            params = {p["name"] for p in trial["params"]}
            assert {"optimizer", "decay", "lr_mult_fc1", "lr_mult_fc2"} <= params
            assert any(name.startswith("lr_") and name[3:] in ("sgd", "adam", "adamw", "rmsprop", "adagrad") for name in params)
            attrs = {a["key"] for a in trial["user_attrs"]}
            assert {"epochs_run", "diverged", "seed", "lr"} <= attrs
            if trial["state"] == "Complete":
                steps = [v["step"] for v in trial["intermediate_values"]]
                assert steps == [1, 2, 3]  # the learning curve, one point per epoch
                assert "val_accuracy" in attrs
        assert detail["has_intermediate_values"] is True
        assert detail.get("objective_names") == ["val_loss"]  # the metric name set by study.run
    finally:
        stop_dashboard(proc)
    assert proc.returncode is not None
