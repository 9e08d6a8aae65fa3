"""The report's words: the summary in markdown (the study's note in optuna-dashboard), its
tables in HTML, and the self-contained page that holds them with the figures."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import optuna
from optuna.trial import TrialState

from storage import hide_password
from study.findings import DecayRow, warmup_rows
from study.progress import metric_name

__all__ = ["answer_markdown", "decay_table_html", "final_html", "markdown_html", "summary_markdown", "write_page"]


def _pct(mean: float, sd: float, n: int) -> str:
    return f"{100 * mean:.2f} % ± {100 * sd:.2f}" if n > 1 else f"{100 * mean:.2f} % (one seed: no sd)"


def _mults(r: dict) -> str:
    return "/".join(f"{m:.3g}" for m in r["lr_mults"])


def _decay_cells(row: DecayRow) -> list[str]:
    """A decay row's cells: strategy, the best trial's optimizer, LR and multipliers, its value,
    accuracy and epochs, the complete trials behind it (one alone says so), trials, pruned, trial."""
    b = row.best
    complete = row.n_trials - row.n_pruned
    behind = f"{complete}" + (" (one trial: no spread)" if complete == 1 else "")
    if b is None:
        return [row.decay, "–", "–", "–", "–", "–", "–", behind, str(row.n_trials), str(row.n_pruned), "–"]
    opt = str(b.params.get("optimizer", "?"))
    mults = "/".join(f"{b.params[k]:.3g}" for k in sorted(b.params) if k.startswith("lr_mult_")) or "1"
    return [row.decay, opt, f"{b.params.get(f'lr_{opt}', math.nan):.3g}", mults, f"{b.value:.4f}",
            f"{100 * b.user_attrs.get('val_accuracy', math.nan):.2f} %", str(b.user_attrs.get("epochs_run", "?")),
            behind, str(row.n_trials), str(row.n_pruned), str(b.number)]


def answer_markdown(final: dict) -> list[str]:
    """The answer first: its recipe, its test accuracy, the code that reproduces it, and the
    candidates it was chosen from on validation (the others marked as not selected)."""
    a, seeds = final["answer"], len(final["seeds"])
    lines = [
        "## The answer", "",
        f"**{a['recipe']}**", "",
        f"Test accuracy **{_pct(a['test_accuracy_mean'], a['test_accuracy_sd'], seeds)}** over {seeds} seeds, "
        f"trained on all {final['train_images']:,} training images and tested once on the {final['test_images']:,} "
        f"test images (trial {a['trial']}: {', '.join(a['labels'])}).",
    ]
    ref = final.get("reference")
    if ref:
        lines += ["", f"Beside it, the hand-picked {ref['label'].split(': ', 1)[-1]} ({ref['epochs']} epochs), trained "
                      f"and tested the same way: {_pct(ref['test_accuracy_mean'], ref['test_accuracy_sd'], seeds)} "
                      "(not selected: a yardstick)."]
    lines += ["", f"As a config of this library: `{a['config_line']}`", "",
              "How it was chosen: the candidates below were trained again with new seeds on the "
              f"{final['selection_images']:,}/{final['validation_images']:,} split and the lowest mean "
              f"{final['metric']} on the validation images was chosen; the test set decided nothing.", "",
              f"| candidate | trial | optimizer | LR | multipliers | decay | warm-up | study's {final['metric']} | "
              f"mean {final['metric']} over {seeds} new seeds | |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in final["candidates"]:
        lines.append(f"| {', '.join(r['labels'])} | {r['trial']} | {r['optimizer']} | {r['lr']:.3g} | {_mults(r)} | "
                     f"{r['decay']} | {r['warmup_epochs']} ep | {r['study_value']:.4f} | "
                     f"{r['val_mean']:.4f} ± {r['val_sd']:.4f} | {'**the answer**' if r['selected'] else 'not selected'} |")
    return lines


def unfinished(study: optuna.Study) -> list[str]:
    """A banner, when the study has fewer finished trials than the last run's ``--trials``."""
    target = study.user_attrs.get("target_trials")
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    if not isinstance(target, int) or done >= target:
        return []
    return [f"An unfinished study: {done} of the {target} finished trials it was run for; what follows rests on "
            "fewer trials than planned (the same study.run command finishes it)."]


def summary_markdown(study: optuna.Study, rows: list[DecayRow], final: dict | None, warnings_: list[str]) -> str:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    best = study.best_trial
    metric = metric_name(study)
    lines = [f"# Study `{study.study_name}`", ""]
    lines += [f"**{line}**" for line in unfinished(study)] + ([""] if unfinished(study) else [])
    if final:
        lines += [*answer_markdown(final), ""]
    lines += [
        f"{len(states)} trials: {states.count(TrialState.COMPLETE)} complete, {states.count(TrialState.PRUNED)} pruned, "
        f"{states.count(TrialState.FAIL)} failed; each trial's value is its {metric}. "
        f"Command: `{hide_password(study.user_attrs.get('command', '?'))}`", "",  # old studies stored passwords
        f"**Best trial of the study**: trial {best.number}, {metric} {best.value:.4f}, validation accuracy "
        f"{100 * best.user_attrs.get('val_accuracy', math.nan):.2f} % (epoch "
        f"{best.user_attrs.get('value_epoch', best.user_attrs.get('best_epoch', '?'))})", "",
        "| parameter | value |", "|---|---|",
        *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in best.params.items()], "",
        "## Decay strategies", "",
        f"| strategy | optimizer | LR | multipliers (fc1/fc2) | best {metric} | val accuracy | epochs | complete trials | "
        "trials | pruned | best trial |", "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_decay_cells(row)) + " |")
    lines += ["", "## Warm-up", "", f"| | best {metric} | trials | pruned | best trial |", "|---|---|---|---|---|"]
    for w in warmup_rows(study):
        best_cells = "– | " if w.best is None else f"{w.best.value:.4f} | "
        lines.append(f"| {w.label} | {best_cells}{w.n_trials} | {w.n_pruned} | "
                     f"{'–' if w.best is None else w.best.number} |")
    if warnings_:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in warnings_]]
    return "\n".join(lines) + "\n"


def decay_table_html(rows: list[DecayRow]) -> str:
    head = ("<tr><th>strategy</th><th>optimizer</th><th>LR</th><th>multipliers (fc1/fc2)</th><th>best value</th>"
            "<th>val accuracy</th><th>epochs</th><th>complete trials</th><th>n trials</th><th>n pruned</th>"
            "<th>best trial</th></tr>")
    body = []
    for row in rows:
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _decay_cells(row)) + "</tr>")
    return f'<table id="decay-table">{head}{"".join(body)}</table>'


def final_html(final: dict) -> str:
    """The answer as the page's opening: the recipe, its test accuracy, the candidates it was
    chosen from on validation (``#final-candidates``; the others marked as not selected), the
    test accuracies (``#final-test``) and the code that reproduces it."""
    a, seeds = final["answer"], len(final["seeds"])
    parts = [f'<p id="answer"><strong>{html.escape(a["recipe"])}</strong></p>',
             f"<p>Test accuracy <strong>{html.escape(_pct(a['test_accuracy_mean'], a['test_accuracy_sd'], seeds))}"
             f"</strong> over {seeds} seeds: trained on all {final['train_images']:,} training images in "
             f"{html.escape(final['precision'])} and evaluated once on the {final['test_images']:,} test images, the "
             "test set's only use.</p>"]
    head = ("<tr><th>candidate</th><th>trial</th><th>optimizer</th><th>LR</th><th>multipliers</th><th>decay</th>"
            f"<th>warm-up</th><th>study's value</th><th>mean {html.escape(final['metric'])} over {seeds} new seeds "
            "(validation)</th><th></th></tr>")
    body = []
    for r in final["candidates"]:
        cells = [", ".join(r["labels"]), str(r["trial"]), r["optimizer"], f"{r['lr']:.3g}", _mults(r), r["decay"],
                 f"{r['warmup_epochs']} ep", f"{r['study_value']:.4f}", f"{r['val_mean']:.4f} ± {r['val_sd']:.4f}",
                 "the answer" if r["selected"] else "not selected"]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    parts.append(f"<p>Chosen among these on the {final['selection_images']:,}/{final['validation_images']:,} split, "
                 f"by the lowest mean {html.escape(final['metric'])} on the validation images:</p>"
                 f'<table id="final-candidates">{head}{"".join(body)}</table>')
    tested = [("the answer (trial %d)" % a["trial"], a)]
    if final.get("reference"):
        tested.append((final["reference"]["label"] + " (not selected: a yardstick)", final["reference"]))
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{r['epochs']}</td>"
                   f"<td>{html.escape(_pct(r['test_accuracy_mean'], r['test_accuracy_sd'], seeds))}</td>"
                   f"<td>{' '.join(f'{100 * x:.2f}' for x in r['test_accuracies'])}</td></tr>" for label, r in tested)
    parts.append('<table id="final-test"><tr><th>trained on 60k, tested once</th><th>epochs</th>'
                 f"<th>test accuracy (mean ± sd)</th><th>per seed (%)</th></tr>{rows}</table>")
    parts.append(f"<p>As a config of this library:</p><pre>{html.escape(a['config_line'])}</pre>"
                 f"<p>In plain PyTorch:</p><pre id=\"pytorch\">{html.escape(a['pytorch'])}</pre>")
    return "".join(parts)


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
