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
from objectives.space import trial_lr
from study.files import write_atomically
from study.findings import DecayRow, warmup_rows
from study.progress import metric_name
from study.words import count

__all__ = ["answer_markdown", "verdict_lines", "decay_table_html", "final_html", "markdown_html", "summary_markdown", "write_page"]


def _accuracy(r: dict) -> str:
    """A tested row's mean test accuracy ± sd over the runs in its mean (those that did not diverge)."""
    mean, sd, n = r["test_accuracy_mean"], r["test_accuracy_sd"], len(r["test_accuracies"]) - sum(r.get("diverged", []))
    if n > 1:
        return f"{100 * mean:.2f} % ± {100 * sd:.2f}"
    if n == 1:
        return f"{100 * mean:.2f} % ({'one seed' if len(r['test_accuracies']) == 1 else 'one run in the mean'}: no sd)"
    return "none: every run diverged"


def _interval(p: dict | None, scale: float, unit: str, digits: int = 2) -> str:
    """A paired difference in words: ``+0.08 points (95 % interval -0.02 to +0.18, 5 seeds)``."""
    if not p or not p["n"]:
        return "no pair of finite runs"
    text = f"{scale * p['mean']:+.{digits}f}{unit}"
    if p["low"] is None:
        return f"{text} (one seed: no interval)"
    return (f"{text} (95 % interval {scale * p['low']:+.{digits}f} to {scale * p['high']:+.{digits}f}, "
            f"{count(p['n'], 'seed')})")


def verdict_lines(final: dict) -> list[str]:
    """The final word's verdict, first on the terminal, the summary and the page: whether the study
    found anything better than the baseline, with the paired differences over the same seeds."""
    seeds, n = len(final["seeds"]), len(final["candidates"])
    base, a = final.get("baseline"), final.get("answer")
    if a is None:
        return [f"No answer: {'every one of the ' + count(n, 'candidate') if n > 1 else 'the one candidate'} diverged with at least one of the {count(seeds, 'new seed')}; "
                "nothing was tested."]
    if final.get("answer_is_baseline"):
        return [f"The study found nothing better than your baseline ({base['label']}): it had the lowest mean "
                f"{final['metric']} over {count(seeds, 'new seed')} among the {count(n, 'candidate')}. Keep it; its test accuracy: "
                f"{_accuracy(a)}."]
    if base is None:
        gone = next((r for r in final["candidates"] if r.get("baseline")), None)
        if gone is not None:  # the baseline was a candidate, and diverged with some seed
            return [f"Your baseline diverged with {gone.get('diverged_seeds') or 'some'} of the {count(seeds, 'new seed')}: the "
                    f"answer is the best of the other candidates on validation, and no paired comparison is made."]
        return [f"The answer is the best of the {count(n, 'candidate')} on validation (no baseline was trained beside it)."]
    pv, pt = final.get("paired_validation"), final.get("paired_test")
    # "beats" only where the paired interval on validation lies below 0 (every metric is minimised);
    # a lower mean within the seeds' noise is said as such: a study's best on 5 seeds is often that
    clear = bool(pv) and pv.get("high") is not None and pv["high"] < 0
    found = f"beats your baseline ({base['label']}) on validation" if clear else \
        f"did better than your baseline ({base['label']}) on validation, by less than the seeds' noise resolves"
    lines = [f"The study found a recipe that {found}: mean "
             f"{final['metric']} {a['val_mean']:.4f} against {base['val_mean']:.4f}, paired over the same seeds "
             f"{_interval(pv, 100.0, ' points') if final['metric'] == 'last_val_error' else _interval(pv, 1.0, '', 4)}."]
    if pt and pt["n"]:
        resolved = pt["low"] is not None and (pt["low"] > 0 or pt["high"] < 0)
        better = pt["mean"] > 0
        if resolved:
            judged = "the answer tests better" if better else "the answer tests worse: keep your baseline"
        else:
            need = f"; about {pt['seeds_needed']} seeds would tell a difference of this size" if pt["seeds_needed"] else ""
            judged = f"not resolved at {count(pt['n'], 'seed')}: the interval holds 0{need}"
        lines.append(f"On the test set, once: {_accuracy(a)} against "
                     f"{_accuracy(base)}; answer - baseline "
                     f"{_interval(pt, 100.0, ' points')}: {judged}.")
    return lines


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
    return [row.decay, opt, f"{trial_lr(b):.3g}", mults, f"{b.value:.4f}",
            f"{100 * b.user_attrs.get('val_accuracy', math.nan):.2f} %", str(b.user_attrs.get("epochs_run", "?")),
            behind, str(row.n_trials), str(row.n_pruned), str(b.number)]


def answer_markdown(final: dict) -> list[str]:
    """The verdict first, then the answer: its recipe, its test accuracy beside the baseline's, the
    code that reproduces it, and the candidates it was chosen from on validation (the others
    marked as not selected)."""
    a, seeds = final["answer"], len(final["seeds"])
    lines = ["## The answer", "", *[f"**{line}**" if i == 0 else line for i, line in enumerate(verdict_lines(final))]]
    if a is not None:
        lines += [
            "", f"**{a['recipe']}**", "",
            f"Test accuracy **{_accuracy(a)}** over {count(seeds, 'seed')}"
            f"{_diverged(a)}, trained on all {final['train_images']:,} training images and tested once on the "
            f"{final['test_images']:,} test images ({_who(a)}).",
        ]
        base = final.get("baseline")
        if base and not final.get("answer_is_baseline"):
            lines += ["", f"Beside it, your baseline, {base['label']} ({base['epochs']} epochs), trained and tested the "
                          f"same way with the same seeds: {_accuracy(base)}"
                          f"{_diverged(base)}."]
        lines += ["", f"As a config of this library: `{a['config_line']}`", "", "In plain PyTorch:", "", "```python",
                  *a["pytorch"].splitlines(), "```"]
    lines += ["", "How it was chosen: the candidates below, the baseline among them, were trained again with new seeds "
              f"on the {final['selection_images']:,}/{final['validation_images']:,} split and the lowest mean "
              f"{final['metric']} on the validation images was chosen (a candidate that diverged with any seed is "
              "left out); the test set decided nothing.", "",
              f"| candidate | trial | optimizer | LR | multipliers | decay | warm-up | study's {final['metric']} | "
              f"mean {final['metric']} over {count(seeds, 'new seed')} | |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in final["candidates"]:
        lines.append("| " + " | ".join(_candidate_cells(r)) + " |")
    return lines


def _who(a: dict) -> str:
    return "the baseline" if a["trial"] is None else f"trial {a['trial']}: {', '.join(a['labels'])}"


def _diverged(r: dict) -> str:
    gone = sum(r.get("diverged", []))
    return f" ({gone} of {count(len(r['diverged']), 'run')} diverged: left out of the mean)" if gone else ""


def _candidate_cells(r: dict) -> list[str]:
    study_value = "–" if r.get("study_value") is None else f"{r['study_value']:.4f}"
    val = (f"diverged with {r.get('diverged_seeds') or 'some'} seed(s): left out" if not math.isfinite(r["val_mean"])
           else f"{r['val_mean']:.4f} (one seed: no sd)" if len(r.get("val_values", [])) == 1
           else f"{r['val_mean']:.4f} ± {r['val_sd']:.4f}")
    return [", ".join(r["labels"]), "–" if r["trial"] is None else str(r["trial"]), r["optimizer"], f"{r['lr']:.3g}",
            _mults(r), r["decay"], f"{r['warmup_epochs']} ep", study_value, val,
            "**the answer**" if r["selected"] else "not selected"]


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
        f"{count(len(states), 'trial')}: {states.count(TrialState.COMPLETE)} complete, {states.count(TrialState.PRUNED)} pruned, "
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
    """The answer as the page's opening: the verdict (``#verdict``), the recipe, its test accuracy,
    the candidates it was chosen from on validation (``#final-candidates``; the others marked as
    not selected), the test accuracies (``#final-test``) and the code that reproduces it."""
    a, seeds = final["answer"], len(final["seeds"])
    verdict = verdict_lines(final)
    parts = [f'<p id="verdict"><strong>{html.escape(verdict[0])}</strong></p>',
             *(f"<p>{html.escape(line)}</p>" for line in verdict[1:])]
    if a is not None:
        parts += [f'<p id="answer"><strong>{html.escape(a["recipe"])}</strong></p>',
                  f"<p>Test accuracy <strong>{html.escape(_accuracy(a))}"
                  f"</strong> over {count(seeds, 'seed')}{html.escape(_diverged(a))}: trained on all {final['train_images']:,} "
                  f"training images in {html.escape(final['precision'])} and evaluated once on the "
                  f"{final['test_images']:,} test images, the test set's only use.</p>"]
    head = ("<tr><th>candidate</th><th>trial</th><th>optimizer</th><th>LR</th><th>multipliers</th><th>decay</th>"
            f"<th>warm-up</th><th>study's value</th><th>mean {html.escape(final['metric'])} over {count(seeds, 'new seed')} "
            "(validation)</th><th></th></tr>")
    body = []
    for r in final["candidates"]:
        cells = [c.replace("**", "") for c in _candidate_cells(r)]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    parts.append(f"<p>Chosen among these, the baseline among them, on the {final['selection_images']:,}/"
                 f"{final['validation_images']:,} split, by the lowest mean {html.escape(final['metric'])} on the "
                 f'validation images:</p><table id="final-candidates">{head}{"".join(body)}</table>')
    if a is None:
        return "".join(parts)
    tested = [("the answer" + ("" if a["trial"] is None else " (trial %d)" % a["trial"]), a)]
    base = final.get("baseline")
    if base and not final.get("answer_is_baseline"):
        tested.append(("your baseline: " + base["label"], base))
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{r['epochs']}</td>"
                   f"<td>{html.escape(_accuracy(r))}</td>"
                   f"<td>{' '.join(f'{100 * x:.2f}' + ('*' if d else '') for x, d in zip(r['test_accuracies'], r.get('diverged', [False] * seeds)))}</td></tr>"
                   for label, r in tested)
    parts.append('<table id="final-test"><tr><th>trained on 60k, tested once</th><th>epochs</th>'
                 f"<th>test accuracy (mean ± sd)</th><th>per seed (%; * diverged)</th></tr>{rows}</table>")
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
    write_atomically(path, "\n".join(parts))
