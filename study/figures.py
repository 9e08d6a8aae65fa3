"""The report's figures: Optuna's plots (on a view of the study with the LR as one parameter),
the learning curves, the decay comparison and the LR schedules of the best trials."""

from __future__ import annotations

import math

import optuna
import plotly.colors
import plotly.graph_objects as go
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from objectives import LRSchedule
from objectives.data import TRAIN_SIZE
from objectives.space import trial_lr
from study.findings import DecayRow, trial_config

__all__ = ["METRIC_WORDS", "decay_comparison", "learning_curves", "lr_schedules", "lr_slice", "lr_view",
           "report_figures"]

#: A study's value in words, for axis titles (Optuna's plots call it "Objective Value").
METRIC_WORDS = {"last_val_error": "validation error (after the last epoch)",
                "last_val_loss": "validation loss (after the last epoch)",
                "min_val_loss": "lowest validation loss", "val_loss": "lowest validation loss"}


def log_axis(values: list[float], title: str) -> dict:
    """A log axis over ``values`` with ticks at 1, 2 and 5 of each decade, labelled in full
    (plotly's own labels are bare digits, ``9 8 … 2`` in every decade: 0.2 and 2 look alike)."""
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    if not finite:
        return {"title": title, "type": "log"}
    low, high = math.floor(math.log10(min(finite))), math.ceil(math.log10(max(finite)))
    ticks = [m * 10.0**e for e in range(low, high + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if min(finite) / 2.5 <= t <= max(finite) * 2.5]
    return {"title": title, "type": "log", "tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]}


def epoch_axis(epochs: int) -> dict:
    """Whole epochs only (plotly labels 1.5 on a short run)."""
    return {"title": "epoch", "tickmode": "linear", "tick0": 1, "dtick": max(1, math.ceil(epochs / 20))}


def lr_view(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of the complete trials with the initial LR itself as one ``lr`` param.

    Optuna's importances, parallel coordinates and slices use the parameters that every trial
    has; the study samples the LR as its position in the optimizer's range (``lr_position``;
    older studies as ``lr_sgd``, ``lr_adam``, …, conditional), which does not say the LR. Here
    it is one log-scaled parameter over the LRs the trials had (:func:`objectives.space.trial_lr`).
    """
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if math.isfinite(trial_lr(t)) and trial_lr(t) > 0]
    view = optuna.create_study(direction="minimize")
    if not complete:
        return view
    lrs = [trial_lr(t) for t in complete]
    lr = FloatDistribution(min(lrs), max(lrs) * (1 + 1e-9), log=True)
    for t in complete:
        keep = {n: t.params[n] for n in ("optimizer", "decay", "lr_mult_fc1", "lr_mult_fc2", "lr_mult_fc3") if n in t.params}
        dists = {n: t.distributions[n] for n in keep}
        keep["lr"], dists["lr"] = trial_lr(t), lr
        view.add_trial(optuna.trial.create_trial(params=keep, distributions=dists, value=t.value))
    return view


def learning_curves(study: optuna.Study) -> go.Figure:
    """Optuna's intermediate-values plot, pruned trials drawn faint and dotted, on a log axis of
    the validation loss and whole epochs."""
    fig = optuna.visualization.plot_intermediate_values(study)
    values = [v for t in study.get_trials(deepcopy=False) for v in t.intermediate_values.values()]
    epochs = max((s for t in study.get_trials(deepcopy=False) for s in t.intermediate_values), default=1)
    states = {f"Trial{t.number}": t.state for t in study.get_trials(deepcopy=False)}
    for trace in fig.data:
        if states.get(trace.name) == TrialState.PRUNED:
            trace.update(line={"dash": "dot", "width": 1, "color": "rgba(150,150,150,0.5)"},
                         marker={"size": 3, "color": "rgba(150,150,150,0.5)"}, name=f"{trace.name} (pruned)")
    fig.update_layout(title="Learning curves: validation loss per epoch (pruned: dotted grey)",
                      xaxis=epoch_axis(epochs), yaxis=log_axis(values, "validation loss"))
    return fig


def history(study: optuna.Study) -> go.Figure:
    """Optuna's optimisation history with the metric named and, where every value is positive,
    a log axis, so that a few diverged or poor trials do not flatten the rest."""
    fig = optuna.visualization.plot_optimization_history(study)
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    words = METRIC_WORDS.get(_metric(study), _metric(study))
    fig.update_layout(title="Optimisation history", xaxis_title="trial",
                      yaxis=log_axis(values, words) if values and min(values) > 0 else {"title": words})
    return fig


def _metric(study: optuna.Study) -> str:
    names = study.metric_names
    return names[0] if names else "val_loss"


def lr_slice(study: optuna.Study) -> go.Figure:
    """The study's value against the initial LR of every complete trial, one colour per
    optimizer, each point named by its real trial number (Optuna's slice of a copied study
    coloured by the copy's indices, 0-12 for trials up to 23)."""
    fig = go.Figure()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    words = METRIC_WORDS.get(_metric(study), _metric(study))
    lrs, values = [], []
    for optimizer in sorted({t.params.get("optimizer") for t in complete if "optimizer" in t.params}):
        trials = [t for t in complete if t.params.get("optimizer") == optimizer and math.isfinite(trial_lr(t))]
        x = [trial_lr(t) for t in trials]
        y = [t.value for t in trials]
        lrs += x
        values += y
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name=optimizer, customdata=[t.number for t in trials],
                                 hovertemplate="trial %{customdata}<br>LR %{x:.3g}<br>value %{y:.4f}<extra>" + optimizer
                                 + "</extra>"))
    fig.update_layout(title="Slice: the study's value against the initial learning rate, by optimizer",
                      xaxis=log_axis(lrs, "initial learning rate"),
                      yaxis=log_axis(values, words) if values and min(values) > 0 else {"title": words},
                      template="plotly_white")
    return fig


def decay_comparison(rows: list[DecayRow]) -> go.Figure:
    fig = go.Figure()
    for row in rows:
        if row.best is None:
            continue
        steps = sorted(row.best.intermediate_values)
        fig.add_trace(go.Scatter(x=steps, y=[row.best.intermediate_values[s] for s in steps], mode="lines+markers",
                                 name=f"{row.decay} (trial {row.best.number}, {row.best.params['optimizer']})"))
    values = [v for row in rows if row.best is not None for v in row.best.intermediate_values.values()]
    epochs = max((s for row in rows if row.best is not None for s in row.best.intermediate_values), default=1)
    fig.update_layout(title="Decay strategies: validation-loss curve of the best trial of each",
                      xaxis=epoch_axis(epochs), yaxis=log_axis(values, "validation loss"), template="plotly_white")
    return fig


def lr_schedules(trials: list[FrozenTrial], steps_per_epoch: int, epochs: int) -> go.Figure:
    """Each layer's LR over the training steps, recomputed from the trial's config with the same
    torch schedulers that trained it (plateau fed with the trial's own validation losses)."""
    fig = go.Figure()
    dashes = {"fc1": "solid", "fc2": "dash", "fc3": "dot"}
    palette = plotly.colors.qualitative.Plotly
    lrs: list[float] = []
    for i, trial in enumerate(trials):
        config = trial_config(trial)
        schedule = LRSchedule(config, steps_per_epoch, epochs)
        factors, val = [], trial.intermediate_values
        for epoch in range(1, epochs + 1):
            factors.extend(schedule.factors(steps_per_epoch))
            if epoch in val:
                schedule.epoch_end(val[epoch])
        x = list(range(len(factors)))
        for layer, lr0 in config.initial_lrs().items():  # a trial's layers share its colour
            lrs += [lr0 * f for f in factors]
            fig.add_trace(go.Scatter(x=x, y=[lr0 * f for f in factors], mode="lines",
                                     line={"dash": dashes[layer], "color": palette[i % len(palette)]},
                                     legendgroup=str(trial.number),
                                     name=f"trial {trial.number} ({config.decay}, {config.optimizer}) {layer}"))
    fig.update_layout(title="LR schedule per layer of the best trials (fc1 solid, fc2 dashed, fc3 dotted)",
                      xaxis_title="training step", yaxis=log_axis(lrs, "learning rate"), template="plotly_white")
    return fig


def report_figures(study: optuna.Study, rows: list[DecayRow]) -> list[tuple[str, go.Figure | str]]:
    """The page's figures, ``(heading, figure)`` in order: Optuna's history, learning curves,
    importances, parallel coordinates, slice and timeline, then the decay comparison and the LR
    schedules of the best trials (the best overall and the best of each decay). A figure left out
    for lack of trials is ``(heading, why)``, said on the page in its place."""
    view = lr_view(study)
    epochs = int(study.user_attrs.get("epochs", max(max(t.intermediate_values, default=1) for t in study.trials)))
    train_images = int(study.user_attrs.get("data", {}).get("train_samples", TRAIN_SIZE))
    steps_per_epoch = math.ceil(train_images / int(study.user_attrs.get("batch_size", 128)))
    best_trials = [study.best_trial] + [r.best for r in rows if r.best is not None and r.best.number != study.best_trial.number]

    vis = optuna.visualization
    figures: list[tuple[str, go.Figure | str]] = [
        ("Optimisation history", history(study)),
        ("Learning curves", learning_curves(study)),
    ]
    if len(view.trials) >= 2:
        words = METRIC_WORDS.get(_metric(study), _metric(study))
        figures += [
            ("Parameter importances", vis.plot_param_importances(view).update_layout(
                title="Hyperparameter importances (fANOVA, the LR as one parameter)")),
            ("Parallel coordinates", vis.plot_parallel_coordinate(view, target_name=words).update_layout(
                title="Parallel coordinates")),
        ]
    else:
        why = f"left out: they need 2 complete trials, and the study has {len(view.trials)}"
        figures += [("Parameter importances", why), ("Parallel coordinates", why)]
    figures.append(("Slice of the initial LR", lr_slice(study)))
    figures += [
        ("Timeline", vis.plot_timeline(study).update_layout(title="Timeline")),
        ("Decay-strategy comparison", decay_comparison(rows)),
        ("LR schedules", lr_schedules(best_trials, steps_per_epoch, epochs)),
    ]
    return figures
