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
from optuna.trial import FrozenTrial, TrialState

from objectives import LAYERS, MnistData, TrainConfig, TrainResult, evaluate, metric_value, train, train_stream
from study.experiment import study_metric
from study.findings import DecayRow, trial_config
from study.recipe import config_line, pytorch_snippet, recipe_words

__all__ = ["FINAL_SEED_BASE", "REFERENCE", "REFERENCE_LABEL", "candidates", "final_word"]

FINAL_SEED_BASE = 1_000_000  # final retraining seeds: far from any trial's seed (base + trial number)

#: A good hand-picked recipe, trained and tested beside the answer: AdamW 2e-3 with weight decay
#: 0.05 and a cosine decay to zero over the study's epochs (every layer at the same LR).
REFERENCE = TrainConfig(optimizer="adamw", lr=2e-3, weight_decay=0.05, decay="cosine", cosine_eta_min_ratio=0.0)
REFERENCE_LABEL = "reference: AdamW 2e-3, weight decay 0.05, cosine"

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
        yield from train_stream(((c, s, s, *rest) for c, s, *rest in jobs), data, epochs, slots=len(jobs),
                                precision=precision, cuda_graphs=cuda_graphs,
                                report=lambda index, epoch, _loss: epoch >= stops[index])
        return
    for i, (config, seed, *rest) in enumerate(jobs):
        yield i, train(config, data, epochs, seed=seed, precision=precision, cuda_graphs=cuda_graphs,
                       plateau_losses=rest[0] if rest else None,
                       report=lambda epoch, _loss, stop=stops[i]: epoch >= stop)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sd; inf when any value is not finite (a recipe that diverged with one seed is not
    one to recommend)."""
    if not all(math.isfinite(v) for v in values):
        return math.inf, 0.0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def final_word(study: optuna.Study, rows: list[DecayRow], seeds: int, data: MnistData, final_data: MnistData, *,
               fused: bool, limit: int | None = None, reference: bool = True, cuda_graphs: bool = True,
               log: Callable[[str], None] | None = None) -> dict:
    """Choose the answer among :func:`candidates` on ``data`` (the 50k/10k split) with ``seeds``
    new seeds, then train it (and :data:`REFERENCE`, unless ``reference`` is False) with the same
    seeds on ``final_data`` (all 60k training images: ``MnistData.for_final_training``) and test
    each model once. Returns what ``main`` stores in the study's user attrs (``final_test``)."""
    say = log or (lambda line: None)
    epochs = int(study.user_attrs.get("epochs", 20))
    batch_size = int(study.user_attrs.get("batch_size", 128))
    precision = study.user_attrs.get("precision", "fp32")  # the study's arithmetic, fp32 before --precision
    metric = study_metric(study)
    chosen = candidates(study, rows, limit)
    final_seeds = [FINAL_SEED_BASE + i for i in range(seeds)]
    how = "all at once (train_stream)" if fused else "one after another"
    started = time.perf_counter()

    # 1. selection: every candidate with every seed on the validation split
    configs = [trial_config(t, batch_size) for t, _ in chosen]
    jobs = [(c, s) for c in configs for s in final_seeds]
    say(f"final word, 1/2: choosing on validation: {len(chosen)} candidates x {seeds} seeds = {len(jobs)} runs of "
        f"{epochs} epochs on {data.train_x.shape[0]:,} images ({metric}), on {data.device}, {how}")
    runs: list[TrainResult | None] = [None] * len(jobs)
    for done, (i, result) in enumerate(_run_all(jobs, data, epochs, fused=fused, precision=precision,
                                                  cuda_graphs=cuda_graphs), 1):
        runs[i] = result
        value, _ = metric_value(result, metric)
        say(f"  {done}/{len(jobs)}: trial {chosen[i // seeds][0].number}, seed {jobs[i][1]}: {metric} {value:.4f} "
            f"({time.perf_counter() - started:.0f} s)")
    rows_out = []
    for j, ((trial, labels), config) in enumerate(zip(chosen, configs)):
        mine = runs[j * seeds:(j + 1) * seeds]
        values = [metric_value(r, metric)[0] for r in mine]
        mean, sd = _mean_sd(values)
        best_epochs = [r.best_epoch for r in mine if r.best_epoch is not None]
        rows_out.append({
            "trial": trial.number, "labels": labels, "decay": config.decay, "optimizer": config.optimizer,
            "lr": config.lr, "lr_mults": [config.lr_mult(layer) for layer in LAYERS],
            "warmup_epochs": config.warmup_epochs, "study_value": trial.value,
            "val_values": values, "val_mean": mean, "val_sd": sd,
            # the epoch its model is taken at: the whole schedule, or the median best epoch
            "stop_epoch": (int(statistics.median_low(best_epochs)) if metric == "min_val_loss" and best_epochs
                           else epochs),
            "selected": False,
        })
    answer_j = min(range(len(rows_out)), key=lambda j: (rows_out[j]["val_mean"], rows_out[j]["study_value"]))
    answer_row = rows_out[answer_j]
    answer_row["selected"] = True
    answer = configs[answer_j]
    stop = answer_row["stop_epoch"]
    say(f"  the answer: trial {answer_row['trial']} ({', '.join(answer_row['labels'])}), mean {metric} "
        f"{answer_row['val_mean']:.4f} over {seeds} seeds")

    # 2. test, once: the answer (and the reference) with the same seeds on all 60k images
    plateau = [runs[answer_j * seeds + k].val_losses for k in range(seeds)] if answer.decay == "plateau" else None
    if plateau and min(map(len, plateau)) < stop:  # a selection run that diverged has no losses to replay
        plateau = None
    final_jobs: list[tuple] = [(answer, s, plateau[k]) if plateau else (answer, s) for k, s in enumerate(final_seeds)]
    if reference:  # trained beside the answer: the study's batch size (train_stream needs one)
        final_jobs += [(replace(REFERENCE, batch_size=batch_size), s) for s in final_seeds]
    stops = [stop] * seeds + [epochs] * (len(final_jobs) - seeds)
    say(f"final word, 2/2: testing once: the answer{' and the reference' if reference else ''} x {seeds} seeds = "
        f"{len(final_jobs)} runs on {final_data.train_x.shape[0]:,} images, {how}")
    accuracy = [math.nan] * len(final_jobs)
    for done, (i, result) in enumerate(_run_all(final_jobs, final_data, epochs, fused=fused, precision=precision,
                                                  cuda_graphs=cuda_graphs, stops=stops), 1):
        accuracy[i] = evaluate(result.model, final_data.test_x, final_data.test_y, precision)[1]
        who = "answer" if i < seeds else "reference"
        say(f"  {done}/{len(final_jobs)}: {who}, seed {final_jobs[i][1]}: {result.epochs_run} epochs, test accuracy "
            f"{100 * accuracy[i]:.2f} % ({time.perf_counter() - started:.0f} s)")

    def tested(config: TrainConfig, accs: list[float], stop_epoch: int) -> dict:
        mean, sd = _mean_sd(accs)
        return {"config": asdict(config), "recipe": recipe_words(config, epochs, stop_epoch),
                "config_line": config_line(config), "epochs": stop_epoch, "schedule_epochs": epochs,
                "test_accuracies": accs, "test_accuracy_mean": mean, "test_accuracy_sd": sd}

    out = {
        "metric": metric, "seeds": final_seeds, "precision": precision, "study_epochs": epochs,
        "selection_images": int(data.train_x.shape[0]), "validation_images": int(data.val_x.shape[0]),
        "train_images": int(final_data.train_x.shape[0]), "test_images": int(final_data.test_x.shape[0]),
        "answer": {"trial": answer_row["trial"], "labels": answer_row["labels"], "val_mean": answer_row["val_mean"],
                   "val_sd": answer_row["val_sd"], **tested(answer, accuracy[:seeds], stop),
                   "pytorch": pytorch_snippet(answer, epochs, int(final_data.train_x.shape[0]), stop)},
        "candidates": rows_out,
        "reference": ({"label": REFERENCE_LABEL, **tested(final_jobs[-1][0], accuracy[seeds:], epochs)}
                      if reference else None),
        "seconds": time.perf_counter() - started,
    }
    return out
