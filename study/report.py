"""`python -m study.report`: one self-contained HTML page and a markdown summary of a study.

    python -m study.report --storage sqlite:///studies/lr-study.db --out reports/lr-study

Writes ``OUT/index.html`` (plotly figures: optimisation history, learning curves with pruned
trials drawn faintly, importances, parallel coordinates, slice of the initial LR, timeline,
the decay-strategy comparison and the per-layer LR schedules of the best trials) and
``OUT/summary.md``. With ``--final-seeds K`` (default 5) the best configuration, and the best
of each decay strategy, are retrained on all 60k training images with K seeds and their test
accuracy is reported as mean ± sd: the test set's only use. The results go into the study's
user attrs, the summary becomes the study's note in optuna-dashboard, and the page is uploaded
as a study artifact (``--artifact-dir``; open the dashboard with the same
``--artifact-dir`` to see it). Exit codes: 0 done, 2 bad input, 3 the storage failed, 130 interrupted
(one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.cli import Parser, add_cuda_graphs_argument, add_device_arguments, int_at_least, study_name
from study.constants import CPU_CANDIDATES, DEFAULT_STORAGE, DEFAULT_STUDY_NAME
from study.interrupt import freeze_imports, raise_on_interrupt, run_main

__all__ = ["CPU_CANDIDATES", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m study.report", description="Report of an lr-study study: figures, comparison, final word.",
               epilog="exit codes: 0 done, 2 bad input, 3 the storage failed, 130 interrupted (one line on stderr)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL of the study, as given to study.run")
    p.add_argument("--study-name", type=study_name, default=DEFAULT_STUDY_NAME, help="study name in the storage")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for index.html, summary.md and trials.csv (default: reports/STUDY_NAME, any character but "
                        "letters, digits, '.', '_', '-' made '_'); a folder of other files is refused")
    p.add_argument("--final-seeds", type=int_at_least(0, 100), default=5,
                   help="new seeds for the final word: each candidate is retrained with them on the 50k/10k split to choose "
                        "the answer on validation, then the answer is trained on all 60k images and tested; 0 skips it")
    p.add_argument("--candidates", type=int_at_least(1, 100), default=None,
                   help="how many configurations the final word chooses the answer from (the best of each decay "
                        "strategy, then the study's 3 best, in order of value); default: all of them on a GPU, "
                        f"{CPU_CANDIDATES} on a CPU")
    p.add_argument("--no-baseline", "--no-reference", dest="baseline", action="store_false",
                   help="do not retrain the study's baseline (study.run --baseline) as a candidate, nor test it beside "
                        "the answer")
    add_device_arguments(p, device_help="device for the final retraining: auto|cpu|cuda|cuda:N")
    add_cuda_graphs_argument(p)
    p.add_argument("--artifact-dir", type=Path, default=None,
                   help="artifact store for the page (default: artifacts/ beside a SQLite file, else ./artifacts)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torch, Optuna and plotly only now: --help and a bad flag answer before their seconds of importing
    from study.reporter import report

    freeze_imports()  # the modules it needs are imported (study.interrupt)
    raise_on_interrupt()  # from here a Ctrl-C is the report's to stop cleanly (before: the start's)
    return report(args)


if __name__ == "__main__":
    sys.exit(run_main(main, "study.report"))
