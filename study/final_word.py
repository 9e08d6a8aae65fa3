"""The final word: the chosen configurations retrained on all 60k training images with several
seeds and tested once, the test set's only use."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import optuna

from objectives import MnistData, evaluate, train, train_stream
from study.findings import DecayRow, trial_config

__all__ = ["FINAL_SEED_BASE", "final_word"]

FINAL_SEED_BASE = 1_000_000  # final retraining seeds: far from any trial's seed (base + trial number)


def final_word(study: optuna.Study, rows: list[DecayRow], seeds: int, data: MnistData, *, fused: bool,
               cuda_graphs: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Retrain the best config and the best of each decay strategy with ``seeds`` seeds on
    ``data`` (all 60k training images: ``MnistData.for_final_training``), each with its schedule
    as searched (over the study's epochs), and test the model the search chose: the one after
    the trial's ``best_epoch``, where its validation loss, the trial's value, was reached
    (training stops there). Test accuracy mean ± sd; ``main`` stores it in the study's user attrs
    (``final_test``) once the report's files are written.

    ``fused``: train every (configuration, seed) pair at once with ``train_stream`` (on a GPU
    about the time of one retraining; trial i of it is ``train`` on its own, to rounding), else
    one ``train`` after another (the CPU, where fusing is correct but not faster). ``log`` gets a
    line saying what will train, and one as each run ends."""
    epochs = int(study.user_attrs.get("epochs", 20))
    batch_size = int(study.user_attrs.get("batch_size", 128))
    precision = study.user_attrs.get("precision", "fp32")  # the study's arithmetic, fp32 before --precision
    chosen = {"best": study.best_trial}
    chosen.update({f"best {row.decay}": row.best for row in rows if row.best is not None})
    trials = list({t.number: t for t in chosen.values()}.values())  # best overall and of its strategy: once
    final_seeds = [FINAL_SEED_BASE + i for i in range(seeds)]
    # a trial of a study made before best_epoch was recorded: its best epoch from its curve
    best_epochs = [int(t.user_attrs.get("best_epoch") or min(t.intermediate_values, key=t.intermediate_values.get))
                   for t in trials]
    jobs = [(trial_config(t, batch_size), stop, seed) for t, stop in zip(trials, best_epochs) for seed in final_seeds]
    if log is not None:
        log(f"final word: retraining {len(jobs)} runs (configuration × seed) of up to {epochs} epochs on "
            f"{data.train_x.shape[0]:,} images on {data.device}, "
            f"{'all at once (train_stream)' if fused else 'one after another'}")
    # the runs' "validation" is the test set here: its values are never looked at, the stop is
    # the trial's best epoch, chosen on validation during the search
    if fused:  # each pair with its own seed for the weights and the batch order, as train uses
        runs = train_stream(((c, s, s) for c, _, s in jobs), data, epochs, slots=len(jobs), precision=precision,
                            cuda_graphs=cuda_graphs, report=lambda index, epoch, _loss: epoch >= jobs[index][1])
    else:
        runs = ((i, train(config, data, epochs, seed=seed, precision=precision, cuda_graphs=cuda_graphs,
                          report=lambda epoch, _loss, stop=stop: epoch >= stop))
                for i, (config, stop, seed) in enumerate(jobs))
    accuracy: list[float] = [math.nan] * len(jobs)
    started = time.perf_counter()
    for finished, (i, result) in enumerate(runs, 1):
        accuracy[i] = evaluate(result.model, data.test_x, data.test_y, precision)[1]
        if log is not None:
            log(f"  {finished}/{len(jobs)}: trial {trials[i // seeds].number}, seed {jobs[i][2]}: "
                f"{result.epochs_run} epochs, test accuracy {100 * accuracy[i]:.2f} % "
                f"({time.perf_counter() - started:.1f} s)")
    done: dict[int, dict] = {}
    for j, (t, best_epoch) in enumerate(zip(trials, best_epochs)):
        config = jobs[j * seeds][0]
        accs = accuracy[j * seeds : (j + 1) * seeds]
        done[t.number] = {
            "trial": t.number, "decay": config.decay, "warmup_epochs": config.warmup_epochs,
            "optimizer": config.optimizer, "best_epoch": best_epoch,
            "val_loss": t.value, "epochs": epochs, "precision": precision, "train_images": int(data.train_x.shape[0]),
            "seeds": final_seeds, "test_accuracies": accs,
            "test_accuracy_mean": statistics.fmean(accs),
            "test_accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        }
    results_by_label = {label: done[t.number] for label, t in chosen.items()}
    return results_by_label
