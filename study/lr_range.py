"""`python -m study.lr_range`: the learning-rate range test for one optimizer, as a plotly page.

    python -m study.lr_range --optimizer sgd --out reports/lr_range_sgd.html

Trains a fresh model on the training split while the LR grows exponentially, stops when the
smoothed loss diverges, and suggests an initial LR (fastai's valley rule) and a search range
(a tenth of the suggestion up to the LR of the lowest smoothed loss). Nothing stored is read or
changed. Exit codes: 0 done, 2 bad input, 130 interrupted (one line on stderr).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from study.files import check_writable_folder, write_atomically
from study.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Parser, add_device_arguments, float_in, int_at_least, set_threads
from study.constants import MIN_LR, OPTIMIZERS, PRECISIONS, TRAIN_SIZE
from study.interrupt import freeze_imports, raise_on_interrupt, run_main

if TYPE_CHECKING:
    from objectives.lr_range import LRRangeResult


def range_figure(result: LRRangeResult):
    """Loss against LR on a log axis: raw and smoothed, the suggestion and the range marked."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=result.lrs, y=result.losses, mode="lines", name="loss per step",
                             line={"color": "rgba(120,120,120,0.45)", "width": 1}))
    fig.add_trace(go.Scatter(x=result.lrs, y=result.smoothed, mode="lines", name="smoothed (EMA)",
                             line={"color": "#1f77b4", "width": 2.5}))
    fig.add_vrect(x0=result.low, x1=result.high, fillcolor="#2ca02c", opacity=0.12, line_width=0)
    fig.add_vline(x=result.suggestion, line_color="#d62728", line_dash="dash")
    # annotations on a log axis take log10 positions (add_vline's own annotation misplaces them)
    fig.add_annotation(x=math.log10(result.suggestion), y=1.0, yref="paper", showarrow=False, xanchor="left",
                       text=f" suggestion {result.suggestion:.3g}", font={"color": "#d62728"})
    fig.add_annotation(x=math.log10(result.low), y=0.93, yref="paper", showarrow=False, xanchor="left",
                       text=f" search range {result.low:.3g} .. {result.high:.3g}", font={"color": "#2ca02c"})
    finite = [s for s in result.smoothed if s == s and s != float("inf")]
    top = min(max(finite), 3 * finite[0]) if finite else None
    fig.update_layout(title=f"LR range test, {result.optimizer}: loss vs learning rate",
                      xaxis={"title": "learning rate", "type": "log"},
                      yaxis={"title": "training loss", "range": [0, top] if top else None},
                      template="plotly_white", legend={"x": 0.01, "y": 0.01})
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m study.lr_range", description="Learning-rate range test for one optimizer.",
               epilog="exit codes: 0 done, 2 bad input, 130 interrupted (one line on stderr)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="the optimizer to test")
    p.add_argument("--start-lr", type=float_in(1e3, MIN_LR), default=1e-7, help=f"LR of the first step, in [{MIN_LR:g}, 1000]")
    p.add_argument("--end-lr", type=float_in(1e3, MIN_LR), default=10.0, help=f"LR of the last step, in [{MIN_LR:g}, 1000]")
    p.add_argument("--steps", type=int_at_least(10, 100_000), default=200, help="steps from start to end LR")
    p.add_argument("--out", type=Path, default=None, help="HTML figure (default: lr_range_<optimizer>.html)")
    add_device_arguments(p)
    p.add_argument("--train-samples", type=int_at_least(1, TRAIN_SIZE), default=None, help="train on a subset (default: all)")
    p.add_argument("--batch-size", type=int_at_least(1, TRAIN_SIZE), default=128, help="examples per step")
    p.add_argument("--seed", type=int_at_least(0, 2**32 - 1), default=0, help="seeds the initial weights and the batch order")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32, bf16 (mixed precision) or tf32 (CUDA), as the study's")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torch only now: --help and a bad flag answer before its seconds of importing
    from objectives import MnistDataError, load_mnist, resolve_device
    from objectives.lr_range import DIVERGE_FACTOR, lr_range_test

    freeze_imports()  # the modules it needs are imported (study.interrupt)
    raise_on_interrupt()  # from here a Ctrl-C is the test's to stop cleanly (before: the start's)

    set_threads(1, args.threads)
    out = args.out or Path(f"lr_range_{args.optimizer}.html")
    try:
        if args.start_lr >= args.end_lr:
            raise ValueError(f"--start-lr must be below --end-lr, but got {args.start_lr} >= {args.end_lr}")
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; give the figure's file name (e.g. {out / out.name}.html)")
        check_writable_folder(out.parent, "--out's folder")  # before the test's minutes, not after
        device = resolve_device(args.device)
        data = load_mnist(args.data_dir, device=device, train_samples=args.train_samples)
        print(f"range test: {args.optimizer}, {args.steps} steps from LR {args.start_lr:.3g} to {args.end_lr:.3g} on "
              f"{data.train_x.shape[0]:,} images, batch {args.batch_size}, on {device} (Ctrl-C stops it)", flush=True)
        result = lr_range_test(args.optimizer, data, start_lr=args.start_lr, end_lr=args.end_lr,
                               steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                               precision=args.precision)
        write_atomically(out, range_figure(result).to_html(include_plotlyjs=True))
    except (ValueError, MnistDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # the figure's write (a disk that filled during the test)
        print(f"error: --out {out} could not be written ({e.strerror or e}); nothing was written", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: the range test stopped; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    # stopping where the loss blows up is the test working as meant, not a failure
    ended = (f"stopped there as planned: the smoothed loss rose above {DIVERGE_FACTOR:g}x its lowest, so larger LRs "
             "only diverge" if result.diverged else
             f"reached --end-lr before the loss rose {DIVERGE_FACTOR:g}x: the useful range may go higher")
    print(f"{args.optimizer}: {len(result.lrs)} steps from LR {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}; {ended}")
    print(f"suggested initial LR: {result.suggestion:.3g}")
    print(f"suggested search range: {result.low:.3g} .. {result.high:.3g}")
    for problem in result.problems:  # the figure is still written: it shows why
        print(f"warning: the suggestion means nothing here: {problem}", file=sys.stderr)
    print(f"figure: {out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main, "study.lr_range"))
