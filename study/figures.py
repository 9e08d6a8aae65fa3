"""The report's figures: Optuna's plots (on a view of the study with the LR as one parameter),
the learning curves, the decay comparison and the LR schedules of the best trials."""

from __future__ import annotations

import math

import optuna
import plotly.graph_objects as go
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from objectives import LRSchedule
from objectives.data import TRAIN_SIZE
from study.findings import DecayRow, trial_config

__all__ = ["decay_comparison", "learning_curves", "lr_schedules", "lr_view", "report_figures"]


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


def report_figures(study: optuna.Study, rows: list[DecayRow]) -> list[tuple[str, go.Figure]]:
    """The page's figures, ``(heading, figure)`` in order: Optuna's history, learning curves,
    importances, parallel coordinates, slice and timeline, then the decay comparison and the LR
    schedules of the best trials (the best overall and the best of each decay)."""
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
    return figures
