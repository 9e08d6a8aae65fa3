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
            assert {"optimizer", "lr_position", "decay", "lr_mult_fc1", "lr_mult_fc2"} <= params
            attrs = {a["key"] for a in trial["user_attrs"]}
            assert {"epochs_run", "diverged", "seed", "lr"} <= attrs
            steps = [v["step"] for v in trial["intermediate_values"]]
            assert steps and steps == list(range(1, len(steps) + 1))  # every trial's curve, from epoch 1
            if trial["state"] == "Complete":
                assert steps == [1, 2, 3]  # the learning curve, one point per epoch
                assert "val_accuracy" in attrs
        # the checks above were skipped when no trial completed (a diverged one is not complete)
        assert any(trial["state"] == "Complete" for trial in trials)
        assert detail["has_intermediate_values"] is True
        assert detail.get("objective_names") == ["last_val_error"]  # the metric name set by study.run
    finally:
        stop_dashboard(proc)
    assert proc.returncode is not None


@pytest.mark.slow
def test_the_dashboard_pages_render_in_a_browser(tmp_path: Path) -> None:
    # what a user sees, not only what the API serves: the study page and a trial's page drawn by
    # headless Chromium from a study written by study.run (one-at-a-time and fused trials)
    import re

    from cli_helpers import chromium

    storage = f"sqlite:///{tmp_path / 'dash.db'}"
    common = ["--storage", storage, "--epochs", "3", "--train-samples", "2000", "--device", "cpu", "--pruner", "none"]
    assert main(["--trials", "2", *common]) == 0
    assert main(["--trials", "4", "--parallel-trials", "2", *common]) == 0  # two more, fused

    port = free_port()
    proc = start_dashboard(storage, port)
    base = f"http://127.0.0.1:{port}"
    try:
        [summary] = get(f"{base}/api/studies")["study_summaries"]
        study_id = summary["study_id"]
        detail = get(f"{base}/api/studies/{study_id}")
        fused = [t for t in detail["trials"] if any(a["key"] == "parallel_trials" for a in t["user_attrs"])]
        assert len(detail["trials"]) == 4 and len(fused) == 2
        trial = fused[-1]
        trial_url = f"{base}/dashboard/studies/{study_id}/trials?numbers={trial['number']}"
        shot = tmp_path / "dashboard-trial.png"  # kept in the test's temporary folder
        # the two pages at once; the trial's page dumped and drawn in one run
        study_page, trials_page = chromium(tmp_path, ["--dump-dom", f"{base}/dashboard/studies/{study_id}"],
                                           ["--window-size=1400,2200", f"--screenshot={shot}", "--dump-dom", trial_url])
        assert "mnist-mlp-lr" in study_page
        # the learning curves: the study page's intermediate-values plot, drawn with its traces
        curves = study_page[study_page.index("Intermediate values"):]
        assert "js-plotly-plot" in curves and 'class="trace scatter' in curves
        # the trial list names every trial; the selected one shows its params, its user attrs and
        # its intermediate values, one per epoch
        for t in detail["trials"]:
            assert re.search(rf"Trial {t['number']}\b", trials_page), t["number"]
        for name in ("optimizer", "lr_mult_fc1", "val_accuracy", "epochs_run", "parallel_trials"):
            assert name in trials_page, name
        text = re.sub(r"<[^>]+>", "\n", trials_page)
        values = text[text.index("Intermediate Values"):text.index("Parameter")]
        assert re.findall(r"^(\d) [\d.]+$", values, flags=re.M) == ["1", "2", "3"], values
        assert shot.stat().st_size > 30_000
    finally:
        stop_dashboard(proc)
