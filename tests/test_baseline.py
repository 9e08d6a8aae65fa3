"""The baseline-first study: the recipe a study must beat is its first trial, with neighbours and
a start that covers every strategy; the final word retrains it beside the candidates, can answer
with it, and gives the paired difference over the same seeds; a candidate that diverged with any
seed is never tested (the test-set leak through a plateau answer closed)."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import asdict, replace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from cli_helpers import load, run_main
from objectives import SearchSpace, TrainConfig
from objectives.result import make_result
from objectives.space import config_params
from study import final_word as final_module
from study import findings
from study.baseline import DEFAULT_BASELINE, parse_baseline, start_trials
from study.page import answer_markdown, final_html, verdict_lines

# --- the baseline and the start design ----------------------------------------------------------


def test_the_start_is_the_baseline_its_neighbours_then_every_strategy_and_optimizer() -> None:
    space = SearchSpace().for_epochs(20)
    queued = start_trials(DEFAULT_BASELINE, space, 100)
    labels = [label for _, label in queued]
    assert labels[0] == "baseline" and queued[0][0] == config_params(DEFAULT_BASELINE, space)
    assert labels[1:6] == ["baseline, LR x 1/2", "baseline, LR x 2", "baseline, weight decay x 1/3",
                           "baseline, weight decay x 3", "baseline, 2-epoch warm-up"]
    configs = [findings.suggest_config(optuna.trial.FixedTrial(p), space) for p, _ in queued]
    assert [c.lr for c in configs[1:3]] == pytest.approx([1e-3, 4e-3])
    assert [c.weight_decay for c in configs[3:5]] == pytest.approx([0.05 / 3, 0.15])
    assert configs[5].warmup_epochs == 2
    # every decay strategy and every optimizer at least once, each at a sensible LR for it
    assert {c.decay for c in configs} == set(space.decays) and {c.optimizer for c in configs} == set(space.optimizers)
    start = configs[6:]
    assert len(start) == 7 and {c.decay for c in start} | {"cosine"} == set(space.decays)
    assert {c.optimizer: c.lr for c in start} == {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3,
                                                  "adagrad": 0.01}
    # no more than the study's budget; none without a baseline but the covering start
    assert len(start_trials(DEFAULT_BASELINE, space, 4)) == 4
    assert [label for _, label in start_trials(None, space, 100)][0] == "start: sgd, constant"


def test_parse_baseline_takes_pairs_a_json_file_default_and_none(tmp_path) -> None:
    assert parse_baseline("default", 64) == replace(DEFAULT_BASELINE, batch_size=64)
    assert parse_baseline("none", 128) is None
    config = parse_baseline("optimizer=adam, lr=1e-3,decay=step,step_size=3", 128)
    assert (config.optimizer, config.lr, config.decay, config.step_size) == ("adam", 1e-3, "step", 3)
    file = tmp_path / "mine.json"
    file.write_text('{"optimizer": "sgd", "lr": 0.05, "decay": "cosine", "cosine_eta_min_ratio": 0.01}')
    assert parse_baseline(str(file), 128) == TrainConfig(optimizer="sgd", lr=0.05, decay="cosine",
                                                         cosine_eta_min_ratio=0.01)
    for spec, words in (("lr=abc", "lr='abc' is not a number"), ("momentum=0.9,nesterov=1", "'nesterov' is not"),
                        ("step_size=2.5", "step_size='2.5' is not an int"), ("batch_size=32", "batch_size=32"),
                        (str(tmp_path / "missing.json"), "readable JSON file"), ("optimizer=lion", "optimizer=")):
        with pytest.raises(ValueError, match=words):
            parse_baseline(spec, 128)


def test_a_baseline_outside_the_space_is_one_line_and_nothing_is_stored(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    for spec, words in (("optimizer=adam,lr=1e-3,weight_decay=0.01", "weight_decay=0.01 is outside the search space"),
                        ("optimizer=adamw,lr=0.5", "lr=0.5 is outside the search space"),
                        ("lr_mult_fc3=2", "lr_mult_fc3=2.0 is outside")):
        code, out, err = run_main(["--trials", "2", "--epochs", "2", "--storage", url, "--baseline", spec], capsys)
        assert code == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "s.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["1", "4"])
def test_a_new_study_starts_with_the_baseline_and_queues_it_once(tmp_path, mnist_dir, capsys, parallel) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    args = ["--epochs", "2", "--train-samples", "500", "--device", "cpu", "--storage", url, "--parallel-trials", parallel]
    code, out, err = run_main(["--trials", "9", *args], capsys)
    assert code == 0, err
    study = load(url)
    assert study.user_attrs["baseline"] == asdict(DEFAULT_BASELINE)
    assert study.user_attrs["fingerprint"]["baseline"] == asdict(DEFAULT_BASELINE)
    assert study.user_attrs["start_trials"][:2] == ["baseline", "baseline, LR x 1/2"]
    assert len(study.user_attrs["start_trials"]) == 9  # no more than the budget
    first = sorted(study.trials, key=lambda t: t.number)[:9]
    assert [t.user_attrs["start"] for t in first] == study.user_attrs["start_trials"]
    base = first[0]
    assert findings.trial_config(base) == replace(DEFAULT_BASELINE, lr=base.user_attrs["lr"])
    assert base.user_attrs["lr"] == pytest.approx(2e-3)
    assert "this run: 9 trials" in out  # the queued start is this run's work
    assert "[baseline]" in out + err and "[baseline, LR x 1/2]" in out + err  # each trial line says which
    # a resume queues nothing again: the start's labels stay once each
    code, out, err = run_main(["--trials", "12", *args], capsys)
    assert code == 0, err
    study = load(url)
    labels = [t.user_attrs.get("start") for t in study.trials if "start" in t.user_attrs]
    assert labels == study.user_attrs["start_trials"] and len(study.trials) == 12
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    # another baseline is another experiment
    code, out, err = run_main(["--trials", "13", *args, "--baseline", "optimizer=adam,lr=1e-3"], capsys)
    assert code == 2 and "baseline" in err, err


# --- the final word: the baseline as a candidate, the paired verdict, the leak closed ------------


def _study(*trials: tuple[TrainConfig, float], metric: str = "last_val_error", baseline: TrainConfig | None = None,
           epochs: int = 3) -> optuna.Study:
    """An in-memory study of complete trials with these configs and values, as study.run records
    them (params through config_params, the LR as the ``lr`` attr); the first is the baseline's
    trial when ``baseline`` is it."""
    study = optuna.create_study()
    space = SearchSpace()
    for config, value in trials:
        params = config_params(config, space)
        dists = {k: CategoricalDistribution([v]) if isinstance(v, str) else IntDistribution(0, 10) if isinstance(v, int)
                 else FloatDistribution(0.0, 10.0) for k, v in params.items()}
        attrs = {"lr": config.lr, **({"start": "baseline"} if config == baseline else {})}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value, user_attrs=attrs,
                                                  intermediate_values={1: value}))
    for key, value in {"epochs": epochs, "batch_size": 128, "metric": metric,
                       "baseline": asdict(baseline) if baseline is not None else None}.items():
        study.set_user_attr(key, value)
    return study


GOOD = TrainConfig(optimizer="adam", lr=1e-3, decay="cosine", cosine_eta_min_ratio=1e-3)
PLATEAU = TrainConfig(optimizer="adam", lr=2e-3, decay="plateau", plateau_patience=1, plateau_factor=0.5)
SLOW = TrainConfig(optimizer="sgd", lr=1e-4, decay="constant")  # barely learns in 3 epochs


def _small(mnist_dir):
    from test_report import _small as small

    return small(mnist_dir)


def _diverging(monkeypatch, selection, final_data, seed: int, decay: str = "plateau") -> list[tuple]:
    """Make the selection run of every ``decay`` config with ``seed`` diverge in its second epoch
    (its first epoch as trained); record ``(decay, plateau_losses)`` of every 60k run."""
    real_train, real_stream = final_module.train, final_module.train_stream
    finals: list[tuple] = []

    def diverge(config: TrainConfig, s: int, result):
        if config.decay != decay or s != seed:
            return result
        return make_result(result.val_losses[:1] + [math.nan], result.val_accuracies[:2], result.train_losses[:2],
                           result.epoch_seconds[:2], True, False, result.initial_lrs, result.final_lrs, result.model)

    def train(config, data, epochs, **kw):
        result = real_train(config, data, epochs, **kw)
        if data is final_data:
            finals.append((config.decay, kw.get("plateau_losses")))
            return result
        return diverge(config, kw["seed"], result)

    def train_stream(jobs, data, epochs, **kw):
        jobs = list(jobs)
        for i, result in real_stream(iter(jobs), data, epochs, **kw):
            config, s, _, *rest = jobs[i]
            if data is final_data:
                finals.append((config.decay, rest[0] if rest else None))
                yield i, result
            else:
                yield i, diverge(config, s, result)

    monkeypatch.setattr(final_module, "train", train)
    monkeypatch.setattr(final_module, "train_stream", train_stream)
    return finals


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("metric", ["min_val_loss", "last_val_error"])
def test_a_candidate_that_diverged_with_one_seed_is_never_tested(mnist_dir, monkeypatch, fused, metric) -> None:
    """The leak: a plateau candidate whose selection run diverged with one seed had a finite
    min_val_loss (its epochs before), won, and its 60k runs stepped ReduceLROnPlateau on the
    *test* losses (no validation losses left to replay). Now it is inf for every metric, left
    out, and no 60k run of a plateau config goes without its replayed losses."""
    selection, final_data = _small(mnist_dir)
    study = _study((PLATEAU, 0.01), (SLOW, 0.5), metric=metric, baseline=None)
    finals = _diverging(monkeypatch, selection, final_data, seed=final_module.FINAL_SEED_BASE + 1)
    out = final_module.final_word(study, findings.decay_rows(study), 2, selection, final_data, fused=fused)
    plateau = next(r for r in out["candidates"] if r["decay"] == "plateau")
    assert plateau["val_mean"] == math.inf and plateau["diverged_seeds"] == 1 and not plateau["selected"]
    assert out["answer"]["config"]["decay"] == "constant"
    assert finals and all(losses is not None for decay, losses in finals if decay == "plateau")
    assert [decay for decay, _ in finals] == ["constant", "constant"]


def test_when_every_candidate_diverged_nothing_is_tested(mnist_dir, monkeypatch) -> None:
    selection, final_data = _small(mnist_dir)
    study = _study((PLATEAU, 0.01), metric="min_val_loss", baseline=None)
    finals = _diverging(monkeypatch, selection, final_data, seed=final_module.FINAL_SEED_BASE)
    out = final_module.final_word(study, findings.decay_rows(study), 2, selection, final_data, fused=False)
    assert out["answer"] is None and finals == []
    assert verdict_lines(out)[0].startswith("No answer: the one candidate diverged with at least one of the 2 new seeds")


@pytest.mark.parametrize("fused", [False, True])
def test_a_plateau_answer_and_baseline_replay_their_own_seeds_losses(mnist_dir, monkeypatch, fused) -> None:
    selection, final_data = _small(mnist_dir)
    base = replace(PLATEAU, lr=1e-3)
    study = _study((PLATEAU, 0.01), (base, 0.02), baseline=base)
    finals = _diverging(monkeypatch, selection, final_data, seed=-1)  # nothing diverges: only recorded
    out = final_module.final_word(study, findings.decay_rows(study), 2, selection, final_data, fused=fused)
    assert len(finals) == (2 if out["answer_is_baseline"] else 4)
    assert all(decay == "plateau" and len(losses) == 3 for decay, losses in finals)


def test_the_baseline_is_a_candidate_and_can_be_the_answer(mnist_dir) -> None:
    selection, final_data = _small(mnist_dir)
    study = _study((SLOW, 0.01), (GOOD, 0.02), baseline=GOOD)  # the slow one looked best in the study
    out = final_module.final_word(study, findings.decay_rows(study), 2, selection, final_data, fused=False)
    base = next(r for r in out["candidates"] if r["baseline"])
    assert base["labels"][0] == "baseline" and base["trial"] == 1 and base["selected"]
    assert out["answer_is_baseline"] and out["answer"]["config"] == asdict(GOOD)
    assert out["baseline"]["test_accuracies"] == out["answer"]["test_accuracies"]  # trained once, not twice
    assert out["paired_test"]["mean"] == 0.0
    lines = verdict_lines(out)
    assert lines[0].startswith("The study found nothing better than your baseline")
    md = answer_markdown(out)
    assert md[2].startswith("**The study found nothing better than your baseline")


@pytest.mark.slow
def test_a_better_answer_is_paired_with_the_baseline_on_the_same_seeds(mnist_dir) -> None:
    selection, final_data = _small(mnist_dir)
    study = _study((GOOD, 0.01), (SLOW, 0.5), baseline=None)
    study.set_user_attr("baseline", asdict(SLOW))  # a baseline with no trial in the study: retrained all the same
    out = final_module.final_word(study, findings.decay_rows(study), 3, selection, final_data, fused=False)
    assert not out["answer_is_baseline"] and out["answer"]["config"] == asdict(GOOD)
    base_row = next(r for r in out["candidates"] if r["baseline"])
    assert base_row["trial"] is None and base_row["study_value"] is None
    answer_row = next(r for r in out["candidates"] if r["selected"])
    pv, pt = out["paired_validation"], out["paired_test"]
    assert pv["differences"] == pytest.approx([a - b for a, b in zip(answer_row["val_values"], base_row["val_values"])])
    assert pt["differences"] == pytest.approx([a - b for a, b in zip(out["answer"]["test_accuracies"],
                                                                   out["baseline"]["test_accuracies"])])
    assert pt["n"] == 3 and pt["mean"] > 0 and pt["low"] < pt["mean"] < pt["high"]
    words = " ".join(verdict_lines(out))
    assert "beats your baseline" in words and "answer - baseline" in words and "95 % interval" in words
    # a lower mean whose interval holds 0 is not said to beat the baseline (seed 2's study, measured:
    # -0.07 points, -0.20 to +0.06, and +0.02 on test)
    unresolved = {**out, "paired_validation": {**pv, "low": pv["mean"] - 1.0, "high": 0.001}}
    first = verdict_lines(unresolved)[0]
    assert "beats" not in first and "did better than your baseline" in first and "noise" in first


def test_one_seed_shows_no_spread() -> None:
    out = {"seeds": [1], "metric": "last_val_error", "precision": "fp32", "selection_images": 10, "validation_images": 10,
           "train_images": 10, "test_images": 10, "answer_is_baseline": False, "baseline": None,
           "candidates": [{"labels": ["best"], "trial": 3, "optimizer": "adam", "lr": 1e-3, "lr_mults": [1, 1, 1],
                           "decay": "cosine", "warmup_epochs": 0, "study_value": 0.1, "val_mean": 0.1,
                           "val_sd": 0.0, "val_values": [0.1], "selected": True}],
           "answer": {"trial": 3, "labels": ["best"], "recipe": "r", "config_line": "c", "pytorch": "p", "epochs": 3,
                      "test_accuracy_mean": 0.98, "test_accuracy_sd": 0.0, "test_accuracies": [0.98],
                      "diverged": [False]}}
    text = "\n".join(answer_markdown(out)) + final_html(out)
    assert "± 0.00" not in text and "± nan" not in text and "one seed" in text
    assert not re.search(r"\b1 (new )?(seeds|candidates|runs|trials)\b", text), text
    # five seeds, four diverged: the mean is of one run, and says so
    five = {**out, "seeds": [1, 2, 3, 4, 5],
            "answer": {**out["answer"], "test_accuracies": [0.98] + [0.1] * 4, "diverged": [False] + [True] * 4}}
    text = "\n".join(answer_markdown(five)) + final_html(five)
    assert "± 0.00" not in text and "one run in the mean: no sd" in text and "(4 of 5 runs diverged" in text


def test_the_final_words_lines_count_one_seed_and_one_candidate_in_the_singular(mnist_dir) -> None:
    """"1 candidates x 1 seeds = 1 runs of 3 epochs": the counts of the log, singular where one."""
    selection, final_data = _small(mnist_dir)
    study = _study((GOOD, 0.01), baseline=None)
    said: list[str] = []
    out = final_module.final_word(study, findings.decay_rows(study), 1, selection, final_data, fused=False,
                                  log=said.append)
    text = "\n".join([*said, *verdict_lines(out)])
    assert "1 candidate x 1 seed = 1 run of 3 epochs" in text and "x 1 seed = 1 run on" in text, text
    assert not re.search(r"\b1 (new )?(seeds|candidates|runs|epochs)\b", text), text


def test_the_paired_interval_on_a_constructed_example() -> None:
    p = final_module.paired([0.3, 0.5, 0.7], [0.2, 0.3, 0.4])  # differences 0.1, 0.2, 0.3
    assert p["mean"] == pytest.approx(0.2) and p["sd"] == pytest.approx(0.1) and p["n"] == 3
    half = 4.303 * 0.1 / math.sqrt(3)  # Student's t, 2 degrees of freedom
    assert (p["low"], p["high"]) == pytest.approx((0.2 - half, 0.2 + half))
    assert p["seeds_needed"] == 2  # ((1.96 + 0.84) * 0.1 / 0.2)^2 = 1.96
    small = final_module.paired([0.01, -0.02, 0.03, 0.0, 0.01], [0.0] * 5)
    assert small["low"] < 0 < small["high"]  # not resolved
    assert small["seeds_needed"] == math.ceil((2.801585 * statistics.stdev([0.01, -0.02, 0.03, 0.0, 0.01])
                                              / statistics.fmean([0.01, -0.02, 0.03, 0.0, 0.01])) ** 2)
    one = final_module.paired([0.5, math.nan], [0.4, 0.3])  # a diverged run leaves its pair out
    assert one["n"] == 1 and one["low"] is None and one["seeds_needed"] is None


def test_t_quantile_matches_scipy() -> None:
    from scipy import stats

    for df in (1, 2, 4, 9, 30, 31, 45, 99, 1000):
        assert final_module.t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3), df


def test_the_fused_final_word_halves_its_runs_at_once_on_out_of_memory(mnist_dir, monkeypatch) -> None:
    """Its fused runs had no cap (``slots`` = every run of the stage): out of memory ended the
    report in a traceback. Now the runs not yet ended start again with half as many at once, and
    every run gives the value it gives alone."""
    import torch

    selection, final_data = _small(mnist_dir)
    study = _study((GOOD, 0.01), (SLOW, 0.5), baseline=GOOD)
    real_stream = final_module.train_stream
    slots_seen: list[int] = []

    def short_of_memory(jobs, data, epochs, *, slots, **kw):
        slots_seen.append(slots)
        for n, item in enumerate(real_stream(jobs, data, epochs, slots=slots, **kw)):
            if slots > 1 and n == 1:  # the second run to end finds the memory gone
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            yield item

    monkeypatch.setattr(final_module, "train_stream", short_of_memory)
    fused = final_module.final_word(study, findings.decay_rows(study), 2, selection, final_data, fused=True)
    monkeypatch.undo()
    alone = final_module.final_word(study, findings.decay_rows(study), 2, selection, final_data, fused=False)
    assert slots_seen[:3] == [4, 2, 1]  # 2 candidates x 2 seeds, halved twice in the selection
    for a, b in zip(fused["candidates"], alone["candidates"], strict=True):
        assert a["val_values"] == pytest.approx(b["val_values"], rel=1e-9)
    assert fused["answer"]["test_accuracies"] == pytest.approx(alone["answer"]["test_accuracies"], abs=1e-4)
