"""`study.report` on a small study written by study.run: figures, comparison, final word,
dashboard note and artifact, and the page rendered by headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
from optuna.trial import TrialState
import pytest

from cli_helpers import chromium, load
from conftest import validating_on_2k
from study import figures, findings
from study import final_word as final_module
from study import report as report_module
from study.run import main as run_main

FIGURE_TITLES = [
    "Optimisation history",
    "Learning curves: validation loss per epoch (pruned: dotted grey)",
    "Hyperparameter importances (fANOVA, the LR as one parameter)",
    "Parallel coordinates",
    "Slice: the study's value against the initial learning rate, by optimizer",
    "Timeline",
    "Decay strategies: validation-loss curve of the best trial of each",
    "LR schedule per layer of the best trials (fc1 solid, fc2 dashed, fc3 dotted)",
]


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, mnist_dir) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{tmp / 'studies' / 's.db'}"
    # 2 epochs: the final word (4 candidates on 50k, the answer and the baseline on 60k) is most
    # of the fixture's work, a third of it per epoch; the study's trials validate on 2,000 images
    # (the final word on the 10k, as always)
    with validating_on_2k():
        assert run_main(["--trials", "14", "--epochs", "2", "--train-samples", "2000", "--device", "cpu",
                         "--storage", url]) == 0
    out = tmp / "report"
    assert report_module.main(["--storage", url, "--out", str(out), "--final-seeds", "1", "--device", "cpu"]) == 0
    return url, out


@pytest.mark.slow
def test_page_has_every_figure_and_the_comparison_table(reported) -> None:
    url, out = reported
    page = (out / "index.html").read_text()
    titles = re.findall(r'"title":\{"text":"([^"]+)"', page)
    for title in FIGURE_TITLES:
        assert title in titles, title
    assert "plotly.js v" in page and not re.search(r"<script[^>]*\bsrc=", page)  # inline: self-contained, offline
    study = load(url)
    present = {t.params["decay"] for t in study.trials if t.state.is_finished() and "decay" in t.params}
    table = re.search(r'<table id="decay-table">(.*?)</table>', page).group(1)
    rows = re.findall(r"<tr><td>([a-z_]+)</td>", table)  # cosine_restarts too
    assert sorted(rows) == sorted(present) and len(rows) >= 2
    summary = (out / "summary.md").read_text()
    assert "## Decay strategies" in summary and all(f"| {decay} |" in summary for decay in present)
    # what the figures plot is the study's: every trial's curve, and each decay's best trial
    curves = {trace.name.removesuffix(" (pruned)"): list(trace.y) for trace in figures.learning_curves(study).data}
    for trial in study.trials:
        if trial.intermediate_values:
            assert curves[f"Trial{trial.number}"] == [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
    rows = [row for row in findings.decay_rows(study) if row.best is not None]
    best = {trace.name.split(" (")[0]: list(trace.y) for trace in figures.decay_comparison(rows).data}
    for row in rows:
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.params["decay"] == row.decay]
        assert row.best.value == min(t.value for t in complete)
        assert best[row.decay] == [row.best.intermediate_values[e] for e in sorted(row.best.intermediate_values)]


@pytest.mark.slow
def test_final_word_note_and_artifact_are_in_the_study(reported) -> None:
    url, out = reported
    study = load(url)
    final = study.user_attrs["final_test"]
    answer = final["answer"]
    chosen = [r for r in final["candidates"] if r["selected"]]
    assert len(chosen) == 1 and chosen[0]["trial"] == answer["trial"]
    # the answer is the candidate with the lowest mean validation value over the new seeds
    assert chosen[0]["val_mean"] == min(r["val_mean"] for r in final["candidates"])
    # on the CPU, by default: CPU_CANDIDATES, and the baseline if it is not among them
    assert len(final["candidates"]) - (not any(r["baseline"] and r["labels"] != ["baseline"] for r in final["candidates"])) \
        == report_module.CPU_CANDIDATES
    assert 0.8 < answer["test_accuracy_mean"] <= 1.0  # 2 epochs on all 60k images
    assert final["train_images"] == 60_000 and final["selection_images"] == 50_000 and len(final["seeds"]) == 1
    assert final["precision"] == "fp32" and final["metric"] == "last_val_error"  # the study's
    assert answer["epochs"] == 2  # last_val_error measures the model after the whole schedule
    # the baseline (study.run's default) is among the candidates, retrained with the same seed
    base = next(r for r in final["candidates"] if r["baseline"])
    assert base["labels"][0] == "baseline" and base["optimizer"] == "adamw"
    if not final["answer_is_baseline"]:
        assert final["baseline"]["config"]["optimizer"] == "adamw" and len(final["baseline"]["test_accuracies"]) == 1
    assert final["paired_test"]["n"] == 1 and final["paired_test"]["low"] is None  # one seed: no interval
    summary = (out / "summary.md").read_text()
    assert summary.index("## The answer") < summary.index("## Decay strategies")  # the summary opens with it
    assert answer["recipe"] in summary and answer["config_line"] in summary and "not selected" in summary
    # what the terminal points to ("in plain PyTorch: summary.md") is there
    assert f"In plain PyTorch:\n\n```python\n{answer['pytorch'].rstrip()}\n```" in summary
    # on the page the answer is the first section, HTML tables, then the summary rendered
    page = (out / "index.html").read_text()
    sections = re.findall(r"<section><h2>([^<]*)</h2>(.*?)</section>", page, flags=re.S)
    assert [heading for heading, _ in sections[:2]] == ["The answer", "Summary"]
    table = re.search(r'<table id="final-candidates">(.*?)</table>', sections[0][1], flags=re.S).group(1)
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(\d+|–)</td>.*?<td>(the answer|not selected)</td></tr>", table)
    assert [(t, mark) for _, t, mark in rows] == [
        (str(r["trial"]) if r["trial"] is not None else "–", "the answer" if r["selected"] else "not selected")
        for r in final["candidates"]]
    tested = re.search(r'<table id="final-test">(.*?)</table>', sections[0][1], flags=re.S).group(1)
    assert f"{100 * answer['test_accuracy_mean']:.2f} %" in tested
    assert ("your baseline" in tested) != final["answer_is_baseline"]
    verdict = re.search(r'<p id="verdict"><strong>([^<]+)</strong>', sections[0][1]).group(1)
    pv = final["paired_validation"]
    assert verdict.startswith("The study found nothing better than your baseline" if final["answer_is_baseline"]
                              else "The study found a recipe that beats your baseline" if pv["high"] is not None
                              and pv["high"] < 0 else "The study found a recipe that did better than your baseline")
    assert 'id="pytorch"' in sections[0][1] and "|---|" not in page
    assert "<h4>Decay strategies</h4>" in sections[1][1] and "<table>" in sections[1][1]  # the summary, rendered
    from optuna_dashboard import get_note

    assert "## Decay strategies" in get_note(study)  # the study's note in the dashboard
    metas = optuna.artifacts.get_all_artifact_meta(study)
    assert len(metas) == 1 and metas[0].mimetype == "text/html"
    stored = Path(url.removeprefix("sqlite:///")).parent / "artifacts" / metas[0].artifact_id
    assert stored.read_bytes() == (out / "index.html").read_bytes()


def test_final_seeds_0_skips_the_test_set_and_bad_study_is_one_line(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert run_main(["--trials", "3", "--epochs", "2", "--train-samples", "2000", "--device", "cpu", "--storage", url]) == 0
    capsys.readouterr()  # the run's lines
    store = tmp_path / "elsewhere" / "store"
    assert report_module.main(["--storage", url, "--out", str(tmp_path / "r"), "--final-seeds", "0",
                               "--artifact-dir", str(store)]) == 0
    assert "final_test" not in load(url).user_attrs
    assert "## The answer" not in (tmp_path / "r" / "summary.md").read_text()
    # the page went into the --artifact-dir given, and the dashboard command says so
    (meta,) = optuna.artifacts.get_all_artifact_meta(load(url))
    assert (store / meta.artifact_id).read_bytes() == (tmp_path / "r" / "index.html").read_bytes()
    assert not (tmp_path / "artifacts").exists()
    printed = capsys.readouterr()
    assert f"--artifact-dir {store}" in printed.out
    # the terminal gets a few lines, not summary.md (which printed every edge warning a second time)
    assert "## " not in printed.out and printed.out.count("\n") < 12, printed.out
    warnings_ = [line for line in printed.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings_) == len(set(warnings_)) and "## " not in printed.err
    assert report_module.main(["--storage", url, "--study-name", "nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no study 'nope'" in err


@pytest.mark.slow
def test_chromium_renders_the_page_without_script_errors(reported, tmp_path: Path) -> None:
    url, out = reported
    page = (out / "index.html").resolve().as_uri()
    shot = tmp_path / "report.png"  # kept out of git: a temporary folder
    dom, = chromium(tmp_path, ["--window-size=1250,4000", f"--screenshot={shot}", "--dump-dom", page])  # one run, both
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body))
    assert attrs.get("errors") == ""  # no script error while loading and drawing
    assert int(attrs["figures"]) == len(FIGURE_TITLES) and int(attrs["rendered"]) == len(FIGURE_TITLES)
    assert shot.stat().st_size > 50_000


@pytest.mark.slow
def test_the_final_word_tests_the_model_the_metric_measured(reported, mnist_dir) -> None:
    # last_val_error measures the model after the whole schedule: the answer is trained on 60k for
    # all the study's epochs with the first final seed, and tested once; with the final word's
    # threads (the report's, fewer when the session began on a busy machine: then this test failed,
    # 0.9808 against 0.9818, retraining with torch's default)
    import torch

    from objectives import TrainConfig, evaluate, load_mnist, train

    url, _ = reported
    study = load(url)
    final = study.user_attrs["final_test"]
    answer = final["answer"]
    data = load_mnist(mnist_dir, device="cpu").for_final_training()
    torch.set_num_threads(final["threads"])  # the session's count comes back after the test (process_state)
    result = train(TrainConfig(**answer["config"]), data, study.user_attrs["epochs"], seed=final_module.FINAL_SEED_BASE)
    assert result.epochs_run == answer["epochs"] == study.user_attrs["epochs"]
    assert answer["test_accuracies"][0] == evaluate(result.model, data.test_x, data.test_y)[1]


def _copy(source: optuna.Study, **attrs: object) -> optuna.Study:
    study = optuna.create_study(direction="minimize")  # a copy: the fixture's study stays as it is
    study.add_trials(source.trials)
    for key, value in {**source.user_attrs, **attrs}.items():
        study.set_user_attr(key, value)
    return study


def _small(mnist_dir, test_labels=None, dtype=None):
    """Data on 1,024 training images, float64 unless ``dtype``: (selection data, final data);
    ``test_labels`` replaces the test set's labels."""
    import torch

    from objectives import MnistData, load_mnist

    full = load_mnist(mnist_dir, device="cpu", dtype=dtype or torch.float64, train_samples=1024)
    test_y = full.test_y[:2000] if test_labels is None else test_labels
    selection = MnistData(train_x=full.train_x, train_y=full.train_y, val_x=full.val_x[:2000], val_y=full.val_y[:2000],
                          test_x=full.test_x[:2000], test_y=test_y)
    final = MnistData(train_x=full.train_x, train_y=full.train_y, val_x=full.test_x[:2000], val_y=test_y,
                      test_x=full.test_x[:2000], test_y=test_y)
    return selection, final


@pytest.mark.slow
def test_the_fused_final_word_gives_the_accuracies_of_one_run_at_a_time(reported, mnist_dir) -> None:
    # in float64 on a small set: train_stream's (configuration, seed) pairs, each with its own
    # seed for the weights and the batch order and its own stop, against one train per pair
    url, _ = reported
    source = load(url)
    selection, final_data = _small(mnist_dir)
    finals = []
    for fused in (True, False):
        study = _copy(source)
        finals.append(final_module.final_word(study, findings.decay_rows(study), 2, selection, final_data, fused=fused,
                                              limit=3))
    fused, one_by_one = finals
    assert fused["answer"]["trial"] == one_by_one["answer"]["trial"]
    assert fused["answer"]["test_accuracies"] == pytest.approx(one_by_one["answer"]["test_accuracies"], abs=1e-4)
    if fused["baseline"] is not None:
        assert fused["baseline"]["test_accuracies"] == pytest.approx(one_by_one["baseline"]["test_accuracies"], abs=1e-4)
    for a, b in zip(fused["candidates"], one_by_one["candidates"]):  # the validation values, to float64 rounding
        assert (a["trial"], a["selected"]) == (b["trial"], b["selected"])
        assert a["val_values"] == pytest.approx(b["val_values"], rel=1e-9)
    n = len(fused["candidates"])  # 3, and the baseline if it is not among them
    assert n in (3, 4) and all(len(r["val_values"]) == 2 for r in fused["candidates"])
    # the seeds really differ (each candidate's two values), and so do the configurations (no two
    # candidates alike; a value alone may repeat: an error rate on 2,000 images moves by 0.0005)
    assert all(len(set(r["val_values"])) == 2 for r in fused["candidates"])
    assert len({tuple(r["val_values"]) for r in fused["candidates"]}) == n


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True])
def test_the_final_word_chooses_without_the_test_set(mnist_dir, monkeypatch, fused) -> None:
    """The answer, every validation value of the selection and every model the 60k runs train are
    the same when the test labels are shuffled: the test set decides nothing (only the test
    accuracies change). On the paths that could reach it: a plateau answer (its 60k runs'
    "validation" set is the test set), the stop epoch of ``min_val_loss``, the baseline tested
    beside it, and both engines (the default metric, one engine and no plateau answer could not)."""
    import torch

    from test_baseline import PLATEAU, SLOW, _study

    models: list[list[torch.Tensor]] = []
    real_evaluate = final_module.evaluate

    def evaluate(model, x, y, *args):
        models.append([p.detach().clone() for p in model.parameters()])
        return real_evaluate(model, x, y, *args)

    monkeypatch.setattr(final_module, "evaluate", evaluate)
    finals, trained = [], []
    for labels in (None, torch.randperm(2000, generator=torch.Generator().manual_seed(0)) % 10):
        # float32: the two passes run the same operations on the same data but the test labels,
        # so their models are equal in any precision (float64 took twice as long)
        selection, final_data = _small(mnist_dir, labels, dtype=torch.float32)
        study = _study((PLATEAU, 0.01), (SLOW, 0.5), metric="min_val_loss", baseline=SLOW, epochs=5)
        models.clear()
        finals.append(final_module.final_word(study, findings.decay_rows(study), 2, selection, final_data,
                                              fused=fused))
        trained.append(list(models))
    kept, shuffled = finals
    assert kept["answer"]["config"]["decay"] == "plateau" and kept["metric"] == "min_val_loss"
    assert kept["candidates"] == shuffled["candidates"]
    assert kept["answer"]["trial"] == shuffled["answer"]["trial"]
    assert len(trained[0]) == len(trained[1]) == 4  # the answer and the baseline, 2 seeds each
    for a, b in zip(*trained):  # the same models: no test loss ever steered a 60k run
        assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert kept["answer"]["test_accuracies"] != shuffled["answer"]["test_accuracies"]  # the test set was used, once


def test_a_plateau_answer_replays_its_validation_drops_in_the_final_run(mnist_dir) -> None:
    """A plateau decay in the 60k run, whose "validation" set is the test set, drops its LR where
    its selection run did on the validation images: the test losses never steer it; in ``train``
    and in ``train_stream`` (its jobs' 4th item), as the fused final word passes them."""
    from objectives import TrainConfig, train, train_stream

    selection, final_data = _small(mnist_dir)
    config = TrainConfig(optimizer="sgd", lr=0.05, decay="plateau", plateau_patience=0, plateau_factor=0.5)
    replayed = train(config, final_data, 4, plateau_losses=[1.0, 2.0, 3.0, 4.0])  # never improves: a drop each epoch
    assert replayed.final_lrs["fc3"] == pytest.approx(0.05 * 0.5 ** 3)
    improving = train(config, final_data, 4, plateau_losses=[4.0, 3.0, 2.0, 1.0])
    assert improving.final_lrs["fc3"] == pytest.approx(0.05)
    streamed = dict(train_stream(iter([(config, 0, 0, [1.0, 2.0, 3.0, 4.0]), (config, 0, 0, [4.0, 3.0, 2.0, 1.0])]),
                                 final_data, 4, slots=2))
    assert streamed[0].final_lrs["fc3"] == pytest.approx(0.05 * 0.5 ** 3)
    assert streamed[1].final_lrs["fc3"] == pytest.approx(0.05)
    assert streamed[0].val_losses != streamed[1].val_losses  # the drops changed the training


@pytest.mark.slow
def test_the_trials_are_written_as_a_csv_table(reported) -> None:
    import csv

    url, out = reported
    study = load(url)
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]  # one row per trial, in order
    columns = set(rows[0])
    # the names of trials_dataframe()'s columns (the CSV had "value" where it has value_<metric>)
    frame = study.trials_dataframe()
    assert columns - {"epochs_run"} <= set(frame.columns), columns - set(frame.columns)
    scalar = {c for c in frame.columns if not c.startswith("system_attrs_")
              and not isinstance(frame[c].dropna().iloc[0] if frame[c].notna().any() else 0, (dict, list))}
    assert scalar <= columns, scalar - columns
    assert [r["state"] for r in rows] == list(frame["state"])
    assert "value_last_val_error" in columns and "value" not in columns
    for row in rows:
        row["value"] = row["value_last_val_error"]
    assert {"number", "state", "value_last_val_error", "duration", "epochs_run", "params_optimizer", "params_decay",
            "user_attrs_val_accuracy", "user_attrs_best_epoch", "user_attrs_seconds_per_epoch"} <= columns
    for row, trial in zip(rows, study.trials):
        assert row["state"] == trial.state.name
        assert (row["value"] == "") if trial.value is None else (float(row["value"]) == trial.value)
        assert row["params_optimizer"] == trial.params["optimizer"]
        assert int(row["epochs_run"]) == trial.user_attrs["epochs_run"]
        assert float(row["duration"]) > 0
        assert float(row["params_lr_position"]) == trial.params["lr_position"]  # floats round-trip exactly
        assert float(row["user_attrs_lr"]) == trial.user_attrs["lr"]


def _study_of(*trials: tuple[dict, dict[int, float]]) -> optuna.Study:
    """An in-memory study of complete trials with these params and intermediate values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    study = optuna.create_study()
    for params, values in trials:
        dists = {k: CategoricalDistribution([v]) if isinstance(v, str) else
                 IntDistribution(0, 10) if isinstance(v, int) else FloatDistribution(1e-6, 10.0, log=True)
                 for k, v in params.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=min(values.values()),
                                                  intermediate_values=values))
    return study


def test_lr_schedule_figure_plots_each_steps_lr_per_layer() -> None:
    # by hand: step decay halves every epoch; plateau (patience 0) halves after the first epoch
    # that does not improve (epoch 2); fc1 has multiplier 2, fc2 0.5, fc3 none
    sgd = {"optimizer": "sgd", "lr_sgd": 0.1, "sgd_momentum": 0.9, "warmup_epochs": 0, "lr_mult_fc1": 2.0,
           "lr_mult_fc2": 0.5}
    study = _study_of(({**sgd, "decay": "step", "step_size": 1, "step_gamma": 0.5}, {1: 1.0, 2: 0.9, 3: 0.8}),
                      ({**sgd, "decay": "plateau", "plateau_patience": 0, "plateau_factor": 0.5}, {1: 1.0, 2: 1.2, 3: 1.1}))
    fig = figures.lr_schedules(study.trials, steps_per_epoch=3, epochs=3)
    lrs = {trace.name: list(trace.y) for trace in fig.data}
    for layer, lr in (("fc1", 0.2), ("fc2", 0.05), ("fc3", 0.1)):
        assert lrs[f"trial 0 (step, sgd) {layer}"] == pytest.approx([lr] * 3 + [lr / 2] * 3 + [lr / 4] * 3)
        assert lrs[f"trial 1 (plateau, sgd) {layer}"] == pytest.approx([lr] * 6 + [lr / 2] * 3)
    assert all(list(trace.x) == list(range(9)) for trace in fig.data)  # one point per training step


def test_a_best_param_at_the_edge_of_its_range_is_named() -> None:
    from study.progress import edge_warnings, summary

    study = _study_of(({"lr_sgd": 1e-6, "step_size": 5, "optimizer": "sgd"}, {1: 0.5}),
                      ({"lr_sgd": 1e-3, "step_size": 10, "optimizer": "sgd"}, {1: 0.7}))
    best, other = study.trials
    warned = edge_warnings(best)
    assert len(warned) == 1 and warned[0].startswith("lr_sgd = 1e-06 is at the lower edge of [1e-06, 10]"), warned
    assert [w.split(" = ")[0] for w in edge_warnings(other)] == ["step_size"]  # 10 of [0, 10]: the upper edge
    text = summary(study, target=2, wall_seconds=1.0, new_trials=2, dashboard="optuna-dashboard x", spent=2)
    assert warned[0] in text


def test_edge_warnings_only_where_the_range_can_move() -> None:
    """A warm-up of 0 epochs (none) was told to widen [0, 3], and an edge the epoch cap set
    ([0, 2] at --epochs 3) too: widening neither changes anything."""
    from optuna.distributions import FloatDistribution, IntDistribution

    from study.progress import edge_warnings

    def trial(params: dict, dists: dict) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(params=params, distributions=dists, value=0.1)

    none = trial({"warmup_epochs": 0, "step_gamma": 0.9}, {"warmup_epochs": IntDistribution(0, 3),
                                                           "step_gamma": FloatDistribution(0.1, 0.9)})
    assert [w.split(" = ")[0] for w in edge_warnings(none, epochs=20)] == ["step_gamma"]  # 0.9 < 1: it can widen
    capped = trial({"warmup_epochs": 2}, {"warmup_epochs": IntDistribution(0, 2)})
    [said] = edge_warnings(capped, epochs=3)
    assert "(capped by --epochs 3)" in said and "widen" not in said
    at_limit = trial({"exp_gamma": 1.0}, {"exp_gamma": FloatDistribution(0.7, 1.0)})
    assert edge_warnings(at_limit, epochs=20) == []  # a factor per epoch above 1 would grow the LR


@pytest.mark.slow
def test_the_figures_name_what_they_plot_on_readable_axes(reported) -> None:
    """Read back from the page's own JSON: the history's axis was "Objective Value" on a linear
    scale that outliers flattened; log axes were labelled with bare digits (9 8 … 2 in each
    decade: 0.2 and 2 alike) and epochs with halves; the LR slice was coloured by the indices of
    a copied study (0-12 for trials up to 23), not by optimizer; a trial's three layers had
    three colours in the LR schedules; the decay table did not name the LR."""
    import json

    url, out = reported
    study = load(url)
    page = (out / "index.html").read_text()
    figures = {}
    for blob in re.findall(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{"responsive"', page, flags=re.S):
        data, layout = json.loads(blob[0]), json.loads(blob[1])
        figures[layout["title"]["text"]] = (data, layout)
    history = figures["Optimisation history"][1]
    assert history["yaxis"]["title"]["text"] == "validation error (after the last epoch)" and history["yaxis"]["type"] == "log"
    for title in ("Optimisation history", "Learning curves: validation loss per epoch (pruned: dotted grey)",
                  "Slice: the study's value against the initial learning rate, by optimizer"):
        labels = figures[title][1]["yaxis"]["ticktext"]
        assert len(labels) == len(set(labels)) and all(float(text) > 0 for text in labels), labels
    curves = figures["Learning curves: validation loss per epoch (pruned: dotted grey)"][1]
    assert curves["xaxis"]["dtick"] == 1 and curves["yaxis"]["title"]["text"] == "validation loss"
    data, layout = figures["Slice: the study's value against the initial learning rate, by optimizer"]
    complete = {t.number: t for t in study.trials if t.state == TrialState.COMPLETE}
    assert sorted(trace["name"] for trace in data) == sorted({t.params["optimizer"] for t in complete.values()})
    for trace in data:  # each point is the real trial, of that optimizer, at its LR
        for number, lr in zip(trace["customdata"], trace["x"]):
            assert complete[number].params["optimizer"] == trace["name"]
            assert lr == pytest.approx(complete[number].user_attrs["lr"])
    data, _ = figures["LR schedule per layer of the best trials (fc1 solid, fc2 dashed, fc3 dotted)"]
    by_trial: dict[str, set] = {}
    for trace in data:
        by_trial.setdefault(trace["legendgroup"], set()).add(trace["line"]["color"])
    assert all(len(colours) == 1 for colours in by_trial.values())
    assert len({next(iter(c)) for c in by_trial.values()}) == len(by_trial)  # one colour per trial
    table = re.search(r'<table id="decay-table">(.*?)</table>', page).group(1)
    assert "<th>LR</th>" in table and "<th>multipliers (fc1/fc2)</th>" in table and "<th>complete trials</th>" in table


def test_a_figure_left_out_and_an_unfinished_study_are_said(tmp_path: Path, capsys) -> None:
    """A study with one complete trial had no importances, no parallel coordinates and no word
    why; a study short of its --trials had no banner."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert run_main(["--trials", "1", "--epochs", "2", "--train-samples", "2000", "--device", "cpu",
                     "--storage", url]) == 0
    load(url).set_user_attr("target_trials", 5)  # as a run of --trials 5 cut short leaves it
    capsys.readouterr()
    out = tmp_path / "r"
    assert report_module.main(["--storage", url, "--out", str(out), "--final-seeds", "0"]) == 0
    page = (out / "index.html").read_text()
    assert page.count("left out: they need 2 complete trials, and the study has 1") == 2
    assert "An unfinished study: 1 of the 5 finished trials" in (out / "summary.md").read_text()
    assert "warning: An unfinished study" in capsys.readouterr().out
