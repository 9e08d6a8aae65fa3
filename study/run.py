"""`python -m study.run`: the MNIST-MLP learning-rate study, stored so that optuna-dashboard shows it.

    python -m study.run --trials 100

`--trials N` is the study's total target of finished (COMPLETE + PRUNED) trials: a rerun of
the same command resumes an interrupted study up to N, and on a finished one says so and adds
nothing. Exit codes: 0 done, 2 bad input (one line on stderr, nothing stored is changed),
130 interrupted (Ctrl-C or SIGTERM; the trials in flight are marked FAIL; rerun to resume),
1 a worker failed.
"""

from __future__ import annotations

if __name__ == "__mp_main__":  # a --workers process: spawn imports this first, then the worker's torch, Optuna, ...
    from study.interrupt import pause_collection

    pause_collection()  # ... without the cyclic garbage collector, until they are done (study.interrupt)

import argparse
import sys

from study.cli import (EXIT_CODES, Parser, add_cuda_graphs_argument, add_device_arguments, float_in, int_at_least,
                       int_or_auto, study_name)
from study.constants import (AUTO_SLOTS_MAX, DEFAULT_METRIC, DEFAULT_STORAGE, DEFAULT_STUDY_NAME, METRICS, PRECISIONS,
                             PRUNERS, SAMPLERS, TRAIN_SIZE)
from study.interrupt import run_main

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m study.run", description="Run (or resume) the MNIST-MLP learning-rate study.",
               epilog=f"{EXIT_CODES}. The samplers cmaes, gp and qmc need the [samplers] extra: "
                      "pip install -e '.[samplers]' (scipy, cmaes).")
    p.add_argument("--trials", type=int_at_least(1, 1_000_000), default=100,
                   help="the study's total target of finished (complete + pruned) trials")
    p.add_argument("--epochs", type=int_at_least(1, 1000), default=20, help="epochs per trial")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL (SQLite file or postgresql+psycopg://…)")
    p.add_argument("--study-name", type=study_name, default=DEFAULT_STUDY_NAME, help="study name in the storage")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                   help="Optuna sampler, seeded (cmaes, gp, qmc: the [samplers] extra)")
    p.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC,
                   help="what a trial's value measures on the validation images: last_val_error (the error rate of the "
                        "model the whole schedule delivers), last_val_loss (its loss) or min_val_loss (the lowest loss of "
                        "any epoch, the model of that epoch); part of the experiment. Pruning always judges the per-epoch "
                        "validation loss")
    p.add_argument("--pruner", choices=PRUNERS, default="median", help="Optuna pruner, on the per-epoch validation loss")
    p.add_argument("--seed", type=int_at_least(0, 2**32 - 1), default=0,
                   help="seeds the sampler and the trials (trial n: seed + n)")
    add_device_arguments(p, per="each worker process")
    p.add_argument("--train-samples", type=int_at_least(1, TRAIN_SIZE), default=None,
                   help=f"train on a subset of the {TRAIN_SIZE} training images (default: all)")
    p.add_argument("--batch-size", type=int_at_least(1, TRAIN_SIZE), default=128, help="examples per step")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32; bf16: bfloat16 mixed precision (autocast), about 2x faster on a CPU with AVX512-BF16; "
                        "tf32: TF32 matrix products (CUDA only)")
    add_cuda_graphs_argument(p)
    p.add_argument("--timeout", type=float_in(365 * 86_400), default=None,
                   help="stop starting trials after this many seconds, at most a year (default: no limit)")
    p.add_argument("--workers", type=int_at_least(1, 1024), default=1,
                   help="processes on this machine working on the study (spread over the GPUs; capped at 2 per usable core "
                        "and at what the available memory holds)")
    p.add_argument("--parallel-trials", type=int_or_auto(1, 4096), default=1,
                   help="trials in flight per worker, trained fused in the same kernels (objectives.train_stream); "
                        f"auto: as many as half the free GPU memory holds, at most {AUTO_SLOTS_MAX} and a quarter of "
                        "the trials still to run (per worker), and 1 on the CPU")
    p.add_argument("--heartbeat-interval", type=int_at_least(1, 86_400), default=60,
                   help="seconds between a running trial's heartbeats; a trial silent for twice this is FAIL and retried once")
    p.add_argument("--baseline", dest="baseline_spec", default="default", metavar="RECIPE",
                   help="the recipe the study must beat, trained as its first trial with a few neighbours (LR x1/2, x2, "
                        "weight decay x1/3, x3, a warm-up) and retrained beside the answer by study.report: 'default' "
                        "(AdamW 2e-3, weight decay 0.05, cosine), key=value pairs of TrainConfig fields "
                        "('optimizer=adam,lr=1e-3,decay=step'), a JSON file of them, or 'none'; it must lie in the "
                        "search space; part of the experiment")
    p.add_argument("--lr-range", action="store_true",
                   help="off by default: first run the LR range test for each optimizer and sample each one's initial LR from its "
                        "suggested range (suggestion / 10 .. LR of the lowest smoothed loss); stored in the study")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # torch and Optuna only now: --help and a bad flag answer before their seconds of importing
    from study.runner import run

    return run(args, argv)


if __name__ == "__main__":
    sys.exit(run_main(main, "study.run"))
