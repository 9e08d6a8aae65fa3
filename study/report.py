"""`python -m study.report`: one self-contained HTML page and a markdown summary of a study.

    python -m study.report --storage sqlite:///studies/lr-study.db --out reports/lr-study

Writes ``OUT/index.html`` (plotly figures: optimisation history, learning curves with pruned
trials drawn faintly, importances, parallel coordinates, slice of the initial LR, timeline,
the decay-strategy comparison and the per-layer LR schedules of the best trials) and
``OUT/summary.md``. With ``--final-seeds K`` (default 3) the best configuration, and the best
of each decay strategy, are retrained on all 60k training images with K seeds and their test
accuracy is reported as mean ± sd: the test set's only use. The results go into the study's
user attrs, the summary becomes the study's note in optuna-dashboard, and the page is uploaded
as a study artifact (``--artifact-dir``; open the dashboard with the same
``--artifact-dir`` to see it). Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import html
import math
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from objectives import (DECAYS, LRSchedule, MnistData, MnistDataError, TrainConfig, evaluate, load_mnist,
                        resolve_device, suggest_config, train, train_stream)
from objectives.data import TRAIN_SIZE
from storage import DEFAULT_STORAGE, StorageError, open_storage, sqlite_path
from study.cli import (EXIT_OK, EXIT_USAGE, Parser, add_cuda_graphs_argument, add_device_arguments, int_at_least,
                       set_threads, study_name)
from study.experiment import DEFAULT_STUDY_NAME
from study.export import write_trials_csv
from study.progress import edge_warnings

FINAL_SEED_BASE = 1_000_000  # final retraining seeds: far from any trial's seed (base + trial number)


@dataclass(frozen=True)
class DecayRow:
    decay: str
    best: FrozenTrial | None  # best COMPLETE trial of this strategy
    n_trials: int
    n_pruned: int


def decay_rows(study: optuna.Study) -> list[DecayRow]:
    """One row per decay strategy present in the study."""
    rows = []
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    for decay in DECAYS:
        trials = [t for t in finished if t.params.get("decay") == decay]
        if not trials:
            continue
        rows.append(DecayRow(decay, *_best_and_counts(trials)))
    return rows


def _best_and_counts(trials: list[FrozenTrial]) -> tuple[FrozenTrial | None, int, int]:
    """Of finished trials: the best complete one (None if none), how many, how many pruned."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return (min(complete, key=lambda t: t.value) if complete else None, len(trials),
            sum(t.state == TrialState.PRUNED for t in trials))


def trial_config(trial: FrozenTrial, batch_size: int = 128) -> TrainConfig:
    """The configuration a trial trained, from its params. A trial of a study made before the
    warm-up existed has no ``warmup_epochs``: it had none."""
    with warnings.catch_warnings():  # an older study's values may lie outside today's ranges
        warnings.simplefilter("ignore")
        return suggest_config(optuna.trial.FixedTrial({"warmup_epochs": 0, **trial.params}), batch_size=batch_size)


@dataclass(frozen=True)
class WarmupRow:
    label: str  # "without warm-up" / "with warm-up"
    best: FrozenTrial | None
    n_trials: int
    n_pruned: int


def warmup_rows(study: optuna.Study) -> list[WarmupRow]:
    """The trials with and without a linear warm-up, as the decay rows count them."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    rows = []
    for label, test in (("without warm-up", lambda n: not n), ("with warm-up", bool)):
        rows.append(WarmupRow(label, *_best_and_counts([t for t in finished if test(t.params.get("warmup_epochs", 0))])))
    return rows


def lr_view(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of the complete trials with the per-optimizer LR as one ``lr`` param.

    Optuna's importances, parallel coordinates and slices use the parameters that every trial
    has; ``lr_sgd``, ``lr_adam``, … are conditional, so the LR itself would be left out. Here
    it is one log-scaled parameter over the union of the ranges.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    lr_dists = [d for t in complete for n, d in t.distributions.items() if n.startswith("lr_") and not n.startswith("lr_mult")]
    view = optuna.create_study(direction="minimize")
    if not lr_dists:
        return view
    lr = FloatDistribution(min(d.low for d in lr_dists), max(d.high for d in lr_dists), log=True)
    for t in complete:
        opt = t.params["optimizer"]
        keep = {n: t.params[n] for n in ("optimizer", "decay", "lr_mult_fc1", "lr_mult_fc2", "lr_mult_fc3") if n in t.params}
        dists = {n: t.distributions[n] for n in keep}
        keep["lr"], dists["lr"] = t.params[f"lr_{opt}"], lr
        view.add_trial(optuna.trial.create_trial(params=keep, distributions=dists, value=t.value))
    return view


def learning_curves(study: optuna.Study) -> go.Figure:
    """Optuna's intermediate-values plot, pruned trials drawn faint and dotted."""
    fig = optuna.visualization.plot_intermediate_values(study)
    states = {f"Trial{t.number}": t.state for t in study.get_trials(deepcopy=False)}
    for trace in fig.data:
        if states.get(trace.name) == TrialState.PRUNED:
            trace.update(line={"dash": "dot", "width": 1, "color": "rgba(150,150,150,0.5)"},
                         marker={"size": 3, "color": "rgba(150,150,150,0.5)"}, name=f"{trace.name} (pruned)")
    fig.update_layout(title="Learning curves: validation loss per epoch (pruned: dotted grey)",
                      xaxis_title="epoch", yaxis_title="validation loss", yaxis_type="log")
    return fig


def decay_comparison(rows: list[DecayRow]) -> go.Figure:
    fig = go.Figure()
    for row in rows:
        if row.best is None:
            continue
        steps = sorted(row.best.intermediate_values)
        fig.add_trace(go.Scatter(x=steps, y=[row.best.intermediate_values[s] for s in steps], mode="lines+markers",
                                 name=f"{row.decay} (trial {row.best.number}, {row.best.params['optimizer']})"))
    fig.update_layout(title="Decay strategies: validation-loss curve of the best trial of each",
                      xaxis_title="epoch", yaxis_title="validation loss", yaxis_type="log", template="plotly_white")
    return fig


def lr_schedules(trials: list[FrozenTrial], steps_per_epoch: int, epochs: int) -> go.Figure:
    """Each layer's LR over the training steps, recomputed from the trial's config with the same
    torch schedulers that trained it (plateau fed with the trial's own validation losses)."""
    fig = go.Figure()
    dashes = {"fc1": "solid", "fc2": "dash", "fc3": "dot"}
    for trial in trials:
        config = trial_config(trial)
        schedule = LRSchedule(config, steps_per_epoch, epochs)
        factors, val = [], trial.intermediate_values
        for epoch in range(1, epochs + 1):
            factors.extend(schedule.factors(steps_per_epoch))
            if epoch in val:
                schedule.epoch_end(val[epoch])
        x = list(range(len(factors)))
        for layer, lr0 in config.initial_lrs().items():
            fig.add_trace(go.Scatter(x=x, y=[lr0 * f for f in factors], mode="lines", line={"dash": dashes[layer]},
                                     legendgroup=str(trial.number),
                                     name=f"trial {trial.number} ({config.decay}, {config.optimizer}) {layer}"))
    fig.update_layout(title="LR schedule per layer of the best trials (fc1 solid, fc2 dashed, fc3 dotted)",
                      xaxis_title="training step", yaxis_title="learning rate", yaxis_type="log",
                      template="plotly_white")
    return fig


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


def _pct(mean: float, sd: float, n: int) -> str:
    return f"{100 * mean:.2f} % ± {100 * sd:.2f}" if n > 1 else f"{100 * mean:.2f} % (one seed: no sd)"


def summary_markdown(study: optuna.Study, rows: list[DecayRow], final: dict | None, warnings_: list[str]) -> str:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    best = study.best_trial
    lines = [
        f"# Study `{study.study_name}`", "",
        f"{len(states)} trials: {states.count(TrialState.COMPLETE)} complete, {states.count(TrialState.PRUNED)} pruned, "
        f"{states.count(TrialState.FAIL)} failed. Command: `{study.user_attrs.get('command', '?')}`", "",
        f"**Best**: trial {best.number}, validation loss {best.value:.4f}, validation accuracy "
        f"{100 * best.user_attrs.get('val_accuracy', math.nan):.2f} % (epoch {best.user_attrs.get('best_epoch', '?')})", "",
        "| parameter | value |", "|---|---|",
        *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in best.params.items()], "",
        "## Decay strategies", "",
        "| strategy | best val loss | val accuracy | epochs | trials | pruned | best trial |", "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        b = row.best
        if b is None:
            lines.append(f"| {row.decay} | – | – | – | {row.n_trials} | {row.n_pruned} | – |")
        else:
            lines.append(f"| {row.decay} | {b.value:.4f} | {100 * b.user_attrs.get('val_accuracy', math.nan):.2f} % | "
                         f"{b.user_attrs.get('epochs_run', '?')} | {row.n_trials} | {row.n_pruned} | {b.number} |")
    lines += ["", "## Warm-up", "", "| | best val loss | trials | pruned | best trial |", "|---|---|---|---|---|"]
    for w in warmup_rows(study):
        best_cells = "– | " if w.best is None else f"{w.best.value:.4f} | "
        lines.append(f"| {w.label} | {best_cells}{w.n_trials} | {w.n_pruned} | "
                     f"{'–' if w.best is None else w.best.number} |")
    if final:
        lines += ["", "## Final word: test accuracy", "",
                  "Each retrained on all 60k training images with its schedule as searched and evaluated once on "
                  "the 10k test images after its trial's best epoch (the model the search chose).", "",
                  "| configuration | trial | best epoch | test accuracy (mean ± sd) | seeds |", "|---|---|---|---|---|"]
        for label, r in final.items():
            lines.append(f"| {label} | {r['trial']} | {r.get('best_epoch', r['epochs'])} | {_pct(r['test_accuracy_mean'], r['test_accuracy_sd'], len(r['seeds']))} | {len(r['seeds'])} |")
    if warnings_:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in warnings_]]
    return "\n".join(lines) + "\n"


def _table_html(rows: list[DecayRow]) -> str:
    head = "<tr><th>strategy</th><th>best val loss</th><th>val accuracy</th><th>epochs</th><th>n trials</th><th>n pruned</th><th>best trial</th></tr>"
    body = []
    for row in rows:
        b = row.best
        cells = ([row.decay, "–", "–", "–"] if b is None else
                 [row.decay, f"{b.value:.4f}", f"{100 * b.user_attrs.get('val_accuracy', math.nan):.2f} %",
                  str(b.user_attrs.get("epochs_run", "?"))])
        cells += [str(row.n_trials), str(row.n_pruned), "–" if b is None else str(b.number)]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f'<table id="decay-table">{head}{"".join(body)}</table>'


def _final_html(final: dict) -> str:
    """The final word as the page's first table: it is the answer the study gives."""
    head = "<tr><th>configuration</th><th>trial</th><th>optimizer</th><th>decay</th><th>warm-up</th>" \
           "<th>val loss</th><th>best epoch</th><th>test accuracy (mean ± sd)</th><th>seeds</th></tr>"
    body = []
    for label, r in final.items():
        cells = [label, str(r["trial"]), r["optimizer"], r["decay"], f"{r.get('warmup_epochs', 0)} ep",
                 f"{r['val_loss']:.4f}", str(r.get("best_epoch", r["epochs"])),
                 _pct(r["test_accuracy_mean"], r["test_accuracy_sd"], len(r["seeds"])), str(len(r["seeds"]))]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    some = next(iter(final.values()))
    note = (f"<p>Each configuration retrained on all {some['train_images']:,} training images in "
            f"{html.escape(some['precision'])} with its schedule as searched ({some['epochs']} epochs), once per seed, and "
            "evaluated once on the 10k test images after its trial's best epoch, the model the search chose: the "
            "test set's only use.</p>")
    return f'{note}<table id="final-test">{head}{"".join(body)}</table>'


def markdown_html(md: str) -> str:
    """The summary's markdown as HTML for the page: headings, paragraphs, tables, lists, bold and
    code, the only constructs :func:`summary_markdown` writes. Written here because none of our
    dependencies renders markdown, and a raw ``<pre>`` hides the tables' structure."""
    def inline(text: str) -> str:
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text, quote=False))
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    out: list[str] = []
    blocks = re.split(r"\n\s*\n", md.strip())
    for block in blocks:
        lines = block.splitlines()
        if lines[0].startswith("#"):
            level = len(lines[0]) - len(lines[0].lstrip("#"))
            out.append(f"<h{level + 2}>{inline(lines[0].lstrip('#').strip())}</h{level + 2}>")
        elif all(line.startswith("|") for line in lines):
            rows = [[inline(c.strip()) for c in line.strip().strip("|").split("|")] for line in lines
                    if not re.fullmatch(r"[|\-: ]+", line)]
            head = "".join(f"<th>{c}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif all(line.startswith("- ") for line in lines):
            out.append("<ul>" + "".join(f"<li>{inline(line[2:])}</li>" for line in lines) + "</ul>")
        else:
            out.append(f"<p>{inline(' '.join(lines))}</p>")
    return "\n".join(out)


# After load: how many figures plotly drew, and any script error, as attributes a headless browser can read.
_RENDER_CHECK = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });
window.addEventListener('load', function () { setTimeout(function () {
  document.body.setAttribute('data-figures', document.querySelectorAll('.plotly-graph-div').length);
  document.body.setAttribute('data-rendered', document.querySelectorAll('.plotly-graph-div .main-svg').length > 0 ?
    Array.from(document.querySelectorAll('.plotly-graph-div')).filter(function (d) { return d.querySelector('.main-svg'); }).length : 0);
  document.body.setAttribute('data-errors', window.__errors.join(' | '));
}, 500); });
</script>"""


def write_page(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
             "th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;white-space:pre-wrap}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{style}</style>{_RENDER_CHECK}</head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<section><h2>{html.escape(heading)}</h2>{body}</section>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


def _check_writable(folder: Path, flag: str) -> None:
    """``folder`` exists (made if need be) and takes a new file, else a one-line ValueError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {folder} cannot be written ({e.strerror or e})") from None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m study.report", description="Report of an lr-study study: figures, comparison, final word.",
               epilog="exit codes: 0 done, 2 bad input (one line on stderr)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL of the study, as given to study.run")
    p.add_argument("--study-name", type=study_name, default=DEFAULT_STUDY_NAME, help="study name in the storage")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for index.html and summary.md (default: reports/STUDY_NAME)")
    p.add_argument("--final-seeds", type=int_at_least(0, 100), default=3,
                   help="seeds for retraining the best configs on all 60k images and testing them; 0 skips it")
    add_device_arguments(p, device_help="device for the final retraining: auto|cpu|cuda|cuda:N")
    add_cuda_graphs_argument(p)
    p.add_argument("--artifact-dir", type=Path, default=None,
                   help="artifact store for the page (default: artifacts/ beside a SQLite file, else ./artifacts)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out = args.out or Path("reports") / args.study_name
    set_threads(1, args.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        storage = open_storage(args.storage, create=False)
        try:
            study = optuna.load_study(study_name=args.study_name, storage=storage)
        except KeyError:
            raise ValueError(f"no study {args.study_name!r} in {args.storage}") from None
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            raise ValueError(f"study {args.study_name!r} has no complete trial yet")
        device = resolve_device(args.device) if args.final_seeds else None
        # every place written to is checked before minutes of retraining, not after
        artifact_dir = args.artifact_dir
        if artifact_dir is None:
            db = sqlite_path(args.storage)
            artifact_dir = (db.parent if db is not None else Path(".")) / "artifacts"
        for folder, flag in ((args.out, "--out"), (artifact_dir, "--artifact-dir")):
            _check_writable(folder, flag)
    except (ValueError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    rows = decay_rows(study)
    view = lr_view(study)
    epochs = int(study.user_attrs.get("epochs", max(max(t.intermediate_values, default=1) for t in study.trials)))
    train_images = int(study.user_attrs.get("data", {}).get("train_samples", TRAIN_SIZE))
    steps_per_epoch = math.ceil(train_images / int(study.user_attrs.get("batch_size", 128)))
    best_trials = [study.best_trial] + [r.best for r in rows if r.best is not None and r.best.number != study.best_trial.number]

    vis = optuna.visualization
    figures = [
        ("Optimisation history", vis.plot_optimization_history(study).update_layout(title="Optimisation history")),
        ("Learning curves", learning_curves(study)),
    ]
    if len(view.trials) >= 2:
        figures += [
            ("Parameter importances", vis.plot_param_importances(view).update_layout(
                title="Hyperparameter importances (fANOVA, the LR as one parameter)")),
            ("Parallel coordinates", vis.plot_parallel_coordinate(view).update_layout(title="Parallel coordinates")),
            ("Slice of the initial LR", vis.plot_slice(view, params=["lr"]).update_layout(
                title="Slice: validation loss against the initial learning rate")),
        ]
    figures += [
        ("Timeline", vis.plot_timeline(study).update_layout(title="Timeline")),
        ("Decay-strategy comparison", decay_comparison(rows)),
        ("LR schedules", lr_schedules(best_trials, steps_per_epoch, epochs)),
    ]

    final = None
    if args.final_seeds:
        try:
            data = load_mnist(args.data_dir, device=device).for_final_training()
            final = final_word(study, rows, args.final_seeds, data, fused=device.type == "cuda",
                               cuda_graphs=args.cuda_graphs, log=lambda line: print(line, flush=True))
        except (ValueError, MnistDataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE

    edge = edge_warnings(study.best_trial)
    md = summary_markdown(study, rows, final, edge)
    # the answer first: the final word, then the summary (its final-word table is the one above)
    sections = [("Final word: test accuracy", _final_html(final))] if final else []
    sections.append(("Summary", markdown_html(summary_markdown(study, rows, None, edge))))
    for i, (heading, fig) in enumerate(figures):
        body = fig.to_html(full_html=False, include_plotlyjs=(i == 0))  # plotly.js once, inline: offline
        if heading == "Decay-strategy comparison":
            body += _table_html(rows)
        sections.append((heading, body))
    page = args.out / "index.html"
    write_page(page, f"lr-study report: {study.study_name}", sections)
    (args.out / "summary.md").write_text(md, encoding="utf-8")
    write_trials_csv(study, args.out / "trials.csv")

    # the dashboard shows the summary as the study's note and offers the page as an artifact
    from optuna_dashboard import save_note

    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    artifact_id = upload_artifact(artifact_store=FileSystemArtifactStore(str(artifact_dir)), file_path=str(page),
                                  study_or_trial=study, mimetype="text/html")
    # the study's own records last, once every file is written
    save_note(study, md)
    if final:
        study.set_user_attr("final_test", final)
    print(md)
    for w in edge:
        print(f"warning: {w}", file=sys.stderr)
    print(f"files:\n  report: {page.resolve()}\n  summary: {(args.out / 'summary.md').resolve()}\n"
          f"  trials (CSV, one row per trial): {(args.out / 'trials.csv').resolve()}\n"
          f"  artifact {artifact_id} in {artifact_dir.resolve()}\n"
          f"inspect: optuna-dashboard {args.storage} --artifact-dir {artifact_dir}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
