"""The final word: the answer chosen on validation with fresh seeds, then trained on all 60k
training images and tested once, the test set's only use.

1. **Candidates**: the best trial of each decay strategy and the study's best few, in order of
   value (``--candidates`` caps how many).
2. **Selection, on validation**: each candidate is trained again with ``--final-seeds`` new seeds
   (new initial weights and batch orders) on the study's 50k/10k split, for the study's epochs,
   and measured by the study's metric. The value of a trial in the study is the best of many
   noisy draws (the winner's curse); the mean over fresh seeds is not. The candidate with the
   lowest mean is *the answer*; the others are kept as "not selected".
3. **Test, once**: the answer is trained with the same seeds on all 60k training images (its
   whole schedule, or up to the epoch the metric selects, ``min_val_loss``), and each model is
   evaluated once on the 10k test images: test accuracy mean ± sd. A hand-picked reference recipe
   (:data:`REFERENCE`) is trained and tested beside it; it decides nothing either.

Nothing of the test set reaches a choice: the candidates and the answer come from validation
values only, and a ``plateau`` decay in the 60k runs, whose "validation" set is the test set,
replays the drops its seed's selection run saw on the validation images (``plateau_losses``).
On a GPU each stage is one ``train_stream`` (every run of it at once); on a CPU the runs go one
after another, where fusing is correct but not faster.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from objectives import LAYERS, MnistData, TrainConfig, TrainResult, evaluate, metric_value, train, train_stream
from objectives.device import as_out_of_memory
from objectives.memory import auto_slots
from study.baseline import baseline_label
from study.experiment import study_metric
from study.findings import DecayRow, trial_config
from study.recipe import config_line, pytorch_snippet, recipe_words
from study.words import count

__all__ = ["FINAL_SEED_BASE", "REFERENCE", "REFERENCE_LABEL", "candidates", "final_word", "paired", "study_baseline",
           "t_quantile"]

FINAL_SEED_BASE = 1_000_000  # final retraining seeds: far from any trial's seed (base + trial number)

#: The baseline of a study made before ``--baseline`` (it has no ``baseline`` attr): the hand-picked
#: recipe that was trained beside its answer, AdamW 2e-3 with weight decay 0.05 and a cosine decay
#: to zero over the study's epochs (every layer at the same LR).
REFERENCE = TrainConfig(optimizer="adamw", lr=2e-3, weight_decay=0.05, decay="cosine", cosine_eta_min_ratio=0.0)
REFERENCE_LABEL = "AdamW 2e-3, weight decay 0.05, cosine"


def study_baseline(study: optuna.Study) -> TrainConfig | None:
    """The recipe the study must beat: its ``baseline`` attr (None: ``--baseline none``), or for a
    study made before ``--baseline``, :data:`REFERENCE`."""
    if "baseline" not in study.user_attrs:
        return replace(REFERENCE, batch_size=int(study.user_attrs.get("batch_size", 128)))
    stored = study.user_attrs["baseline"]
    return TrainConfig(**stored) if stored is not None else None


#: The two-sided 95 % quantile of Student's t for 1..30 degrees of freedom (beyond: the
#: Cornish-Fisher expansion, within 2e-3 of scipy). Written here because scipy is not a dependency of the
#: study (only of its samplers extra) and torch's StudentT has no quantile function.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975, _Z80 = 1.959964, 0.841621  # the normal's 97.5 % and 80 % quantiles


def t_quantile(df: int) -> float:
    """Student's t quantile at 97.5 % for ``df`` degrees of freedom (a 95 % two-sided interval)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, but got {df=}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """The paired difference ``a - b`` over the same seeds: its mean, sd, 95 % interval (Student's
    t; None for one pair) and about how many seeds would tell a difference of this size from zero
    (a two-sided 5 % test with 80 % power; None when the difference is 0 or has no spread). Pairs
    where either side is not finite are left out (``n`` says how many remain)."""
    d = [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if not d:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "low": None, "high": None, "seeds_needed": None}
    mean = statistics.fmean(d)
    sd = statistics.stdev(d) if len(d) > 1 else math.nan
    half = t_quantile(len(d) - 1) * sd / math.sqrt(len(d)) if len(d) > 1 else None
    needed = (max(2, math.ceil(((_Z975 + _Z80) * sd / abs(mean)) ** 2))
              if len(d) > 1 and mean != 0 and sd > 0 else None)
    return {"n": len(d), "mean": mean, "sd": sd, "low": None if half is None else mean - half,
            "high": None if half is None else mean + half, "seeds_needed": needed, "differences": d}

#: How many of the best trials overall join the best of each strategy as candidates.
TOP_OVERALL = 3


def candidates(study: optuna.Study, rows: list[DecayRow], limit: int | None = None) -> list[tuple[FrozenTrial, list[str]]]:
    """``(trial, labels)`` to retrain, in order of value: the best of each decay strategy and the
    :data:`TOP_OVERALL` best trials, each once, at most ``limit`` (None: all of them)."""
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    by_number = {t.number: t for t in complete}
    labels: dict[int, list[str]] = {}
    for rank, t in enumerate(complete[:TOP_OVERALL], 1):
        labels.setdefault(t.number, []).append("best" if rank == 1 else f"#{rank}")
    for row in rows:
        if row.best is not None:
            labels.setdefault(row.best.number, []).append(f"best {row.decay}")
    # the best of each strategy before the next best overall: they are near-duplicates of the best
    order = sorted(labels, key=lambda n: (not any(label.startswith("best") for label in labels[n]),
                                          by_number[n].value))
    chosen = order if limit is None else order[:limit]
    return [(by_number[n], labels[n]) for n in chosen]


def _run_all(jobs: Sequence[tuple], data: MnistData, epochs: int, *, fused: bool, precision: str, cuda_graphs: bool,
             stops: Sequence[int] | None = None) -> Iterator[tuple[int, TrainResult]]:
    """Train ``(config, seed[, plateau_losses])`` jobs, each shuffling with its own seed; yield
    ``(index, result)`` as each ends. ``stops``: the epoch each job stops after (default: all)."""
    stops = stops or [epochs] * len(jobs)
    if fused:  # each pair with its own seed for the weights and the batch order, as train uses
        # at once as many as the study's memory check allows on a GPU (up to 100 candidates x 100
        # seeds by flags); out of memory, the runs not yet ended start again with half as many, as
        # the study halves (a run's result depends on its own seeds only, not on its neighbours)
        slots = len(jobs) if data.device.type != "cuda" else \
            auto_slots(data.device, jobs[0][0].batch_size, data.dtype, cap=len(jobs))
        left = list(range(len(jobs)))
        while left:
            order = list(left)
            stream = train_stream(((c, s, s, *rest) for c, s, *rest in (jobs[j] for j in order)), data, epochs,
                                  slots=slots, precision=precision, cuda_graphs=cuda_graphs,
                                  report=lambda index, epoch, _loss, order=order: epoch >= stops[order[index]])
            try:
                for index, result in stream:
                    left.remove(order[index])
                    yield order[index], result
            except Exception as e:
                if as_out_of_memory(e) is None or slots == 1:
                    raise
                stream.close()
                if data.device.type == "cuda":
                    torch.cuda.empty_cache()
                slots //= 2
        return
    for i, (config, seed, *rest) in enumerate(jobs):
        yield i, train(config, data, epochs, seed=seed, precision=precision, cuda_graphs=cuda_graphs,
                       plateau_losses=rest[0] if rest else None,
                       report=lambda epoch, _loss, stop=stops[i]: epoch >= stop)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sd (0 for one value: the page says "one seed" instead); inf when any value is not
    finite (a recipe that diverged with one seed is not one to recommend)."""
    if not all(math.isfinite(v) for v in values):
        return math.inf, 0.0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def final_word(study: optuna.Study, rows: list[DecayRow], seeds: int, data: MnistData, final_data: MnistData, *,
               fused: bool, limit: int | None = None, baseline: bool = True, cuda_graphs: bool = True,
               log: Callable[[str], None] | None = None) -> dict:
    """Choose the answer among :func:`candidates` and the study's baseline (:func:`study_baseline`,
    unless ``baseline`` is False) on ``data`` (the 50k/10k split) with ``seeds`` new seeds, then
    train it and the baseline with the same seeds on ``final_data`` (all 60k training images:
    ``MnistData.for_final_training``) and test each model once. Returns what ``main`` stores in
    the study's user attrs (``final_test``): the candidates, the answer (None when every
    candidate diverged with some seed), the baseline, and their paired differences."""
    say = log or (lambda line: None)
    epochs = int(study.user_attrs.get("epochs", 20))
    batch_size = int(study.user_attrs.get("batch_size", 128))
    precision = study.user_attrs.get("precision", "fp32")  # the study's arithmetic, fp32 before --precision
    metric = study_metric(study)
    chosen = candidates(study, rows, limit)
    final_seeds = [FINAL_SEED_BASE + i for i in range(seeds)]
    how = "all at once (train_stream)" if fused else "one after another"
    started = time.perf_counter()

    # the baseline is a candidate like the others, with the same seeds: its study trial if it has one
    base = study_baseline(study) if baseline else None
    configs = [trial_config(t, batch_size) for t, _ in chosen]
    entries: list[dict] = [{"trial": t.number, "labels": list(labels), "study_value": t.value} for t, labels in chosen]
    base_j = None
    if base is not None:
        base = replace(base, batch_size=batch_size)
        base_trial = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                           if t.user_attrs.get("start") == "baseline"), None)
        for j, (t, _) in enumerate(chosen):
            if base_trial is not None and t.number == base_trial.number:
                base_j = j  # among the candidates already: trained as given, labelled as the baseline
                entries[j]["labels"].insert(0, "baseline")
                configs[j] = base
        if base_j is None:
            base_j = len(configs)
            configs.append(base)
            entries.append({"trial": base_trial.number if base_trial is not None else None, "labels": ["baseline"],
                            "study_value": base_trial.value if base_trial is not None else None})

    # 1. selection: every candidate with every seed on the validation split
    jobs = [(c, s) for c in configs for s in final_seeds]
    say(f"final word, 1/2: choosing on validation: {count(len(configs), 'candidate')}"
        f"{' (the baseline among them)' if base else ''} x {count(seeds, 'seed')} = {count(len(jobs), 'run')} of "
        f"{count(epochs, 'epoch')} on {data.train_x.shape[0]:,} images ({metric}), on "
        f"{data.device}, {how}")
    runs: list[TrainResult | None] = [None] * len(jobs)
    for done, (i, result) in enumerate(_run_all(jobs, data, epochs, fused=fused, precision=precision,
                                                  cuda_graphs=cuda_graphs), 1):
        runs[i] = result
        value, _ = metric_value(result, metric)
        who = entries[i // seeds]
        name = f"trial {who['trial']}" if "baseline" not in who["labels"] else "the baseline"
        say(f"  {done}/{len(jobs)}: {name}, seed {jobs[i][1]}: {metric} {value:.4f}"
            f"{' (diverged)' if result.diverged else ''} ({time.perf_counter() - started:.0f} s)")
    rows_out = []
    for j, (entry, config) in enumerate(zip(entries, configs)):
        mine = runs[j * seeds:(j + 1) * seeds]
        values = [metric_value(r, metric)[0] for r in mine]
        mean, sd = _mean_sd(values)
        best_epochs = [r.best_epoch for r in mine if r.best_epoch is not None]
        rows_out.append({
            **entry, "decay": config.decay, "optimizer": config.optimizer,
            "lr": config.lr, "lr_mults": [config.lr_mult(layer) for layer in LAYERS],
            "warmup_epochs": config.warmup_epochs, "val_values": values, "val_mean": mean, "val_sd": sd,
            "diverged_seeds": sum(r.diverged for r in mine),
            # the epoch its model is taken at: the whole schedule, or the median best epoch
            "stop_epoch": (int(statistics.median_low(best_epochs)) if metric == "min_val_loss" and best_epochs
                           else epochs),
            "selected": False, "baseline": j == base_j,
        })
    # a candidate that diverged with any seed is no answer (its mean is inf): never tested, and its
    # plateau drops, had it any, are never replayed short on the test set
    eligible = [j for j, r in enumerate(rows_out) if math.isfinite(r["val_mean"])]
    for j, r in enumerate(rows_out):
        if j not in eligible:
            say(f"  left out: {'the baseline' if r['baseline'] else 'trial %s' % r['trial']} diverged or did not "
                f"finish with {r['diverged_seeds'] or 'some'} of {count(seeds, 'seed')}")
    answer_j = min(eligible, key=lambda j: (rows_out[j]["val_mean"], not rows_out[j]["baseline"],
                                            rows_out[j]["study_value"] if rows_out[j]["study_value"] is not None
                                            else math.inf), default=None)
    out = {
        "metric": metric, "seeds": final_seeds, "precision": precision, "study_epochs": epochs,
        # on a CPU the sums of a matrix product are split by thread: with another count, the same
        # seed trains other weights (0.9808 against 0.9818 test accuracy, 2 epochs on 60k)
        "threads": torch.get_num_threads(),
        "selection_images": int(data.train_x.shape[0]), "validation_images": int(data.val_x.shape[0]),
        "train_images": int(final_data.train_x.shape[0]), "test_images": int(final_data.test_x.shape[0]),
        "candidates": rows_out, "answer": None, "baseline": None, "answer_is_baseline": False,
        "paired_validation": None, "paired_test": None,
    }
    if answer_j is None:
        say("  no answer: every candidate diverged with at least one new seed; nothing is tested")
        out["seconds"] = time.perf_counter() - started
        return out
    answer_row = rows_out[answer_j]
    answer_row["selected"] = True
    answer = configs[answer_j]
    out["answer_is_baseline"] = answer_j == base_j
    stop = answer_row["stop_epoch"]
    say(f"  the answer: {'the baseline' if answer_j == base_j else 'trial %s' % answer_row['trial']} "
        f"({', '.join(answer_row['labels'])}), mean {metric} {answer_row['val_mean']:.4f} over {count(seeds, 'seed')}")

    # 2. test, once: the answer and the baseline with the same seeds on all 60k images. A plateau
    # decay, whose "validation" set is now the test set, replays its seed's selection losses.
    def final_jobs_of(j: int) -> list[tuple]:
        config, mine = configs[j], runs[j * seeds:(j + 1) * seeds]
        if config.decay != "plateau":
            return [(config, s) for s in final_seeds]
        return [(config, s, r.val_losses) for s, r in zip(final_seeds, mine)]  # all epochs: an eligible run

    tested_js = [answer_j] + ([base_j] if base_j is not None and base_j != answer_j and base_j in eligible else [])
    final_jobs = [job for j in tested_js for job in final_jobs_of(j)]
    stops = [stop] * seeds + [epochs] * (len(final_jobs) - seeds)
    with_base = len(tested_js) > 1
    say(f"final word, 2/2: testing once: the answer{' and the baseline' if with_base else ''} x "
        f"{count(seeds, 'seed')} = {count(len(final_jobs), 'run')} on {final_data.train_x.shape[0]:,} images, {how}")
    accuracy = [math.nan] * len(final_jobs)
    diverged = [False] * len(final_jobs)
    for done, (i, result) in enumerate(_run_all(final_jobs, final_data, epochs, fused=fused, precision=precision,
                                                  cuda_graphs=cuda_graphs, stops=stops), 1):
        diverged[i] = result.diverged
        accuracy[i] = evaluate(result.model, final_data.test_x, final_data.test_y, precision)[1]
        who = "answer" if i < seeds else "baseline"
        say(f"  {done}/{len(final_jobs)}: {who}, seed {final_jobs[i][1]}: {count(result.epochs_run, 'epoch')}, test accuracy "
            f"{100 * accuracy[i]:.2f} %{' (diverged: left out of the mean)' if result.diverged else ''} "
            f"({time.perf_counter() - started:.0f} s)")

    def tested(config: TrainConfig, accs: list[float], gone: list[bool], stop_epoch: int) -> dict:
        # a run that diverged is flagged and left out of the mean, never averaged in silently
        mean, sd = _mean_sd([a for a, d in zip(accs, gone) if not d]) if not all(gone) else (math.nan, math.nan)
        return {"config": asdict(config), "recipe": recipe_words(config, epochs, stop_epoch),
                "config_line": config_line(config), "epochs": stop_epoch, "schedule_epochs": epochs,
                "test_accuracies": accs, "diverged": gone, "test_accuracy_mean": mean, "test_accuracy_sd": sd}

    out["answer"] = {"trial": answer_row["trial"], "labels": answer_row["labels"], "val_mean": answer_row["val_mean"],
                     "val_sd": answer_row["val_sd"], **tested(answer, accuracy[:seeds], diverged[:seeds], stop),
                     "pytorch": pytorch_snippet(answer, epochs, int(final_data.train_x.shape[0]), stop)}
    if base_j is not None:
        b = rows_out[base_j]
        if answer_j == base_j:
            out["baseline"] = {"label": _baseline_label(base), **out["answer"]}
        elif with_base:
            out["baseline"] = {"label": _baseline_label(base), "val_mean": b["val_mean"], "val_sd": b["val_sd"],
                               **tested(base, accuracy[seeds:], diverged[seeds:], epochs)}
        if out["baseline"] is not None:
            # answer - baseline over the same seeds: validation (the metric; lower is better) and test
            # accuracy (higher is better), a diverged run leaving its pair out
            out["paired_validation"] = paired(answer_row["val_values"], b["val_values"])
            test_a = [a if not d else math.nan for a, d in zip(out["answer"]["test_accuracies"], out["answer"]["diverged"])]
            test_b = [a if not d else math.nan for a, d in zip(out["baseline"]["test_accuracies"],
                                                              out["baseline"]["diverged"])]
            out["paired_test"] = paired(test_a, test_b)
    out["seconds"] = time.perf_counter() - started
    return out


def _baseline_label(config: TrainConfig) -> str:
    return REFERENCE_LABEL + " (to 0)" if config == replace(REFERENCE, batch_size=config.batch_size) else \
        baseline_label(config)
