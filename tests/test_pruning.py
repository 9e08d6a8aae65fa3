"""Pruning with trials in flight: the in-flight median rule, decisions of a whole epoch boundary
from one read (the same as the pruner's one at a time), one write per boundary whatever K, and
a fused study that prunes its first wave before any trial completes."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from cli_helpers import load
from storage import open_storage
from storage.batch import TrialWrites, rdb_backend, storage_of, trial_id, write_trials
from study import parallel as parallel_module
from study.choices import make_pruner
from study.pruning import InFlightMedianPruner, judge_boundary
from study.run import main


def _running(study: optuna.Study, values_by_step: list[dict[int, float]]) -> list[optuna.Trial]:
    trials = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ask() outside optimize on a heartbeat storage
        for values in values_by_step:
            trial = study.ask()
            for step, value in values.items():
                trial.report(value, step)
            trials.append(trial)
    return trials


def test_in_flight_median_by_hand() -> None:
    study = optuna.create_study(pruner=InFlightMedianPruner(n_startup_trials=3, n_warmup_steps=2))
    finished = _running(study, [{1: 9.0, 2: 1.0, 3: 1.0}, {1: 9.0, 2: 2.0}])
    study.tell(finished[0], 1.0)
    study.tell(finished[1], state=TrialState.PRUNED)  # a pruned trial is a peer at the steps it reached
    failed = _running(study, [{2: 0.1}])[0]
    study.tell(failed, state=TrialState.FAIL)  # a failed one is not
    a, b, c = _running(study, [{2: 3.0}, {2: 4.0}, {}])
    # at step 2 the peers of b are 1.0 (complete), 2.0 (pruned), 3.0 (running a): median 2.0 < 4.0
    assert study.pruner.prune(study, study.trials[b.number]) is True
    # peers of a: 1.0, 2.0, 4.0: median 2.0 < 3.0
    assert study.pruner.prune(study, study.trials[a.number]) is True
    a.report(1.5, 3)  # step 3: one peer (1.0) only, fewer than n_startup_trials = 3
    assert study.pruner.prune(study, study.trials[a.number]) is False
    c.report(100.0, 1)  # before the warm-up (2 steps) nothing is pruned
    assert study.pruner.prune(study, study.trials[c.number]) is False
    c.report(1.5, 2)  # peers 1.0, 2.0, 3.0, 4.0: median 2.5 > 1.5
    assert study.pruner.prune(study, study.trials[c.number]) is False
    c.report(float("nan"), 3)  # judged by its best so far, 1.5, as Optuna's median judges it
    assert study.pruner.prune(study, study.trials[c.number]) is False
    d = _running(study, [{2: float("nan")}])[0]  # NaN at every step so far: pruned
    assert study.pruner.prune(study, study.trials[d.number]) is True
    with pytest.raises(ValueError, match="n_warmup_steps=-1"):
        InFlightMedianPruner(n_warmup_steps=-1)


def test_a_trial_pruned_earlier_counts_with_its_last_value() -> None:
    # otherwise the peers at a later step are only the survivors, and the bar rises step after step
    study = optuna.create_study(pruner=InFlightMedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for value in (5.0, 6.0):  # pruned after step 1
        study.tell(_running(study, [{1: value}])[0], state=TrialState.PRUNED)
    _running(study, [{1: 1.0, 2: 3.0}, {1: 1.0, 2: 3.5}])  # two survivors, running
    x = _running(study, [{1: 1.0, 2: 4.0}])[0]
    # peers at step 2: 5.0 and 6.0 (carried), 3.0, 3.5: median 4.25 > 4.0; among the survivors
    # alone the median would be 3.25 and x would go
    assert study.pruner.prune(study, study.trials[x.number]) is False
    x.report(4.5, 3)  # step 3: 5.0, 6.0 carried; the survivors have not reported it: median 5.5
    assert study.pruner.prune(study, study.trials[x.number]) is False


@pytest.mark.parametrize("name", ["median", "patient", "sha", "hyperband"])
def test_a_boundary_judged_from_one_snapshot_decides_as_the_pruner_one_at_a_time(name: str, tmp_path: Path) -> None:
    epochs, k = 12, 10
    decisions = []
    for way in ("one at a time", "boundary"):
        storage = open_storage(f"sqlite:///{tmp_path / f'{name}-{way}.db'}")
        study = optuna.create_study(storage=storage, study_name="s", pruner=make_pruner(name, epochs, in_flight=True))
        done = _running(study, [{e: 1 / e + 0.01 * i for e in range(1, epochs + 1)} for i in range(6)])
        for trial in done:
            study.tell(trial, 1 / epochs)
        flight = _running(study, [{} for _ in range(k)])
        out = []
        for epoch in range(1, 6):  # the trials in flight report together, epoch after epoch
            # half of them improve, at their own pace; the other half get worse (for the patient pruner)
            values = [(trial_id(t), epoch, 1 / epoch + 0.013 * ((7 * i) % k) - 0.05 if i % 2 else
                       0.5 + 0.01 * i + 0.02 * epoch) for i, t in enumerate(flight)]
            if way == "one at a time":  # Optuna's API: every value reported, then each trial asks
                for trial, (_, _, value) in zip(flight, values):
                    trial.report(value, epoch)
                out.append([trial.should_prune() for trial in flight])
            else:
                writes = TrialWrites(intermediate_values=values)
                pruned = judge_boundary(study, values, {trial_id(t) for t in flight}, writes)
                assert write_trials(storage_of(study), writes) == 1  # values (and rung records) in one transaction
                out.append([trial_id(t) in pruned for t in flight])
        decisions.append((out, [load(f"sqlite:///{tmp_path / f'{name}-{way}.db'}", "s").trials[t.number].system_attrs
                                for t in flight]))
    assert decisions[0] == decisions[1]
    assert any(any(row) for row in decisions[0][0])  # the case does prune something


@pytest.mark.slow
@pytest.mark.parametrize("k", [3, 8])
def test_a_fused_epoch_boundary_is_one_write_and_one_read_whatever_k(k: int, tmp_path: Path, monkeypatch) -> None:
    from optuna.storages._cached_storage import _CachedStorage

    from study.experiment import storage_at

    url = f"sqlite:///{tmp_path / 'tx.db'}"
    commits, reads, boundaries = [0], [0], []
    engine = rdb_backend(storage_at(url, 60)).engine  # the storage study.run opens (once per process)
    sqlalchemy.event.listen(engine, "commit", lambda connection: commits.__setitem__(0, commits[0] + 1))
    real_reads = _CachedStorage.get_all_trials

    def counted_reads(self, *args, **kwargs):
        reads[0] += 1
        return real_reads(self, *args, **kwargs)

    monkeypatch.setattr(_CachedStorage, "get_all_trials", counted_reads)
    real_stream = parallel_module.train_stream

    def stream(*args, report_epoch, **kwargs):
        def counted(reports):
            before = commits[0], reads[0]
            stop = report_epoch(reports)
            boundaries.append((len(reports), commits[0] - before[0], reads[0] - before[1]))
            return stop

        return real_stream(*args, report_epoch=counted, **kwargs)

    monkeypatch.setattr(parallel_module, "train_stream", stream)
    assert main(["--trials", str(k), "--parallel-trials", str(k), "--epochs", "4", "--train-samples", "500",
                 "--device", "cpu", "--storage", url, "--sampler", "random"]) == 0
    assert boundaries[0][0] > k // 2  # the first boundary has the wave (less any trial that diverged at once)
    # per boundary, whatever K: one read of the study (a transaction of its own on SQLite, where every
    # transaction takes the lock) and one write; none for the last epoch's, which judges no trial
    assert [(c, r) for _, c, r in boundaries[:-1]] == [(2, 1)] * (len(boundaries) - 1), boundaries
    assert boundaries[-1][1:] == (1, 0)


@pytest.mark.slow
def test_a_fused_first_wave_is_pruned_before_any_trial_completes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wave.db'}"
    # 24 random trials over 7 strategies: enough of one strategy for its median (3 peers) to judge
    assert main(["--trials", "24", "--parallel-trials", "24", "--epochs", "5", "--train-samples", "1000",
                 "--device", "cpu", "--storage", url, "--sampler", "random"]) == 0
    trials = load(url).trials
    assert len(trials) == 24 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and not t.user_attrs["diverged"]]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete
    assert max(t.datetime_complete for t in pruned) < min(t.datetime_complete for t in complete)
    assert all(t.user_attrs["epochs_run"] < 5 for t in pruned)
    study = load(url)
    assert study.user_attrs["trial_epochs"] == sum(t.user_attrs["epochs_run"] for t in trials) < 24 * 5


def test_auto_parallel_trials_is_a_quarter_of_the_trials_left_within_memory(monkeypatch, tmp_path: Path) -> None:
    import torch

    from dataclasses import replace

    from study import workers
    from study.experiment import Settings
    from study.run import build_parser

    url = f"sqlite:///{tmp_path / 'auto.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    s = Settings(**{**vars(build_parser().parse_args([])), "parallel_trials": "auto"})
    monkeypatch.setattr(workers, "auto_slots", lambda device, batch_size: 64)  # a GPU with room for 64
    cuda = torch.device("cuda")
    assert workers.trials_in_flight(s, cuda, study) == 25  # 100 trials: a quarter
    assert workers.trials_in_flight(replace(s, workers=2), cuda, study) == 12  # shared by 2 workers
    assert workers.trials_in_flight(replace(s, trials=1000), cuda, study) == 64  # memory decides
    for _ in range(80):
        study.add_trial(optuna.trial.create_trial(value=1.0))
    assert workers.trials_in_flight(s, cuda, study) == 5  # 20 left
    assert workers.trials_in_flight(replace(s, trials=81), cuda, study) == 1
    assert math.isclose(workers.AUTO_SHARE_OF_TRIALS, 0.25)


@pytest.mark.parametrize("in_flight", [False, True])
@pytest.mark.parametrize("epochs, warmup", [(20, 4), (5, 2), (1, 2)])
def test_median_pruner_waits_for_three_trials_and_a_fifth_of_the_epochs(in_flight: bool, epochs: int, warmup: int) -> None:
    # The README's median: 3 startup trials (of the trial's strategy); no pruning before epoch
    # ceil(E/5), at least 2.
    def bad_trial_pruned_at(complete: int) -> int | None:
        study = optuna.create_study(pruner=make_pruner("median", epochs, in_flight=in_flight))
        for _ in range(complete):
            trial = study.ask()
            for epoch in range(1, max(epochs, warmup) + 1):
                trial.report(1.0, epoch)
            study.tell(trial, 1.0)
        bad = study.ask()
        for epoch in range(1, max(epochs, warmup) + 1):
            bad.report(10.0, epoch)
            if bad.should_prune():
                return epoch
        return None

    assert bad_trial_pruned_at(complete=2) is None  # fewer than 3 trials to compare with
    assert bad_trial_pruned_at(complete=3) == warmup


# Non-flat peers: at step 3 their values are 0.32, 0.30 and 0.34 (median 0.32)
_PEER_CURVES = [[0.50, 0.40, 0.32, 0.30], [0.50, 0.38, 0.30, 0.28], [0.60, 0.42, 0.34, 0.33]]


@pytest.mark.parametrize("curve, pruned", [
    ([0.40, 0.25, 0.35], False),  # rising: its best so far (0.25) is better than the median
    ([0.45, 0.40, 0.36], True),  # falling, but still worse than the median at every step
    ([0.30, 0.33, 0.31], False),  # down, up, down: best 0.30
])
def test_one_at_a_time_and_in_flight_medians_judge_the_best_value_so_far_alike(curve: list[float], pruned: bool) -> None:
    """Optuna's MedianPruner (one trial at a time) and the in-flight median decide alike on rising
    and falling curves. Fixes a weakness of the old tests: their curves were flat, so they could
    not tell the value at the current step from the best so far (the in-flight median pruned the
    first curve: 0.35 > 0.32)."""
    decisions = []
    for pruner in (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
                   InFlightMedianPruner(n_startup_trials=3, n_warmup_steps=2)):
        study = optuna.create_study(pruner=pruner)
        for peer in _PEER_CURVES:
            study.tell(_running(study, [dict(enumerate(peer, 1))])[0], peer[-1])
        trial = _running(study, [dict(enumerate(curve, 1))])[0]
        decisions.append(study.pruner.prune(study, study.trials[trial.number]))
    assert decisions == [pruned, pruned]


def _with_params(study: optuna.Study, params: dict[str, object], curve: list[float], value: float | None) -> optuna.Trial:
    """A trial of ``params`` that reported ``curve``; told COMPLETE with ``value`` unless it is None."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    distributions = {"decay": CategoricalDistribution(["cosine", "onecycle"]),
                     "onecycle_pct_start": FloatDistribution(0.1, 0.5)}
    study.enqueue_trial(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask({k: d for k, d in distributions.items() if k in params})
    for epoch, v in enumerate(curve, 1):
        trial.report(v, epoch)
    if value is not None:
        study.tell(trial, value)
    return trial


@pytest.mark.parametrize("in_flight", [False, True])
def test_a_one_cycle_trial_is_not_pruned_while_its_lr_rises(in_flight: bool) -> None:
    """The median of the study's pruner (one at a time and in flight) compares a trial with its own
    strategy, and not before its LR peaks: a one-cycle trial whose loss sits above five annealing
    cosine trials while its LR rises (to epoch 6 of 20, pct_start 0.3) runs on; once three
    one-cycle trials have finished, a worse one-cycle is pruned after its peak, not before. The
    old median over all trials pruned it at epoch 4, the first epoch it judged."""
    epochs = 20
    study = optuna.create_study(pruner=make_pruner("median", epochs, in_flight=in_flight))
    cosine = [0.30 - 0.01 * e for e in range(epochs)]
    for _ in range(5):
        _with_params(study, {"decay": "cosine"}, cosine, cosine[-1])
    rising = [0.5 + 0.02 * e for e in range(6)] + [0.10] * (epochs - 6)  # high until the peak, then anneals
    onecycle = {"decay": "onecycle", "onecycle_pct_start": 0.3}
    first = _with_params(study, onecycle, [], None)
    for epoch, v in enumerate(rising, 1):
        first.report(v, epoch)
        assert not first.should_prune(), f"one-cycle pruned at epoch {epoch}"
    study.tell(first, rising[-1])
    for _ in range(2):
        _with_params(study, onecycle, rising, rising[-1])
    worse = _with_params(study, onecycle, [], None)
    for epoch in range(1, epochs + 1):
        worse.report(rising[epoch - 1] + 0.2, epoch)
        if worse.should_prune():
            break
    assert epoch == 7  # the first epoch after its peak (ceil(0.3 * 20) = 6)


def test_patient_pruner_spares_a_bad_trial_while_it_improves() -> None:
    study = optuna.create_study(pruner=make_pruner("patient", 20))
    for _ in range(5):
        trial = study.ask()
        for epoch in range(1, 21):
            trial.report(1.0, epoch)
        study.tell(trial, 1.0)
    slow = study.ask()
    decisions = []
    for epoch, value in enumerate([10, 9, 8, 7, 6, 7, 7, 7, 7], start=1):  # improves to epoch 5, then worse
        slow.report(float(value), epoch)
        decisions.append(slow.should_prune())
    # the median alone prunes it at epoch 4; with 2 epochs of patience it goes on until the best of
    # its last 3 epochs is worse than its best before them (epochs 6 to 8 against epoch 5's 6.0)
    assert decisions.index(True) + 1 == 8, decisions


def test_halving_pruners_have_the_readmes_settings() -> None:
    # Optuna keeps these settings private and offers no getter, so they are read from the objects
    sha = make_pruner("sha", 20)
    assert isinstance(sha, optuna.pruners.SuccessiveHalvingPruner)
    assert (sha._min_resource, sha._reduction_factor) == (4, 3)  # from epoch ceil(E/5), eta = 3
    hyperband = make_pruner("hyperband", 20)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert (hyperband._min_resource, hyperband._max_resource, hyperband._reduction_factor) == (1, 20, 3)
    assert isinstance(make_pruner("none", 20), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="name='asha'"):
        make_pruner("asha", 20)


@pytest.mark.parametrize("name", ["median", "hyperband", "sha"])
def test_a_boundary_costs_one_read_and_one_write_whatever_k_and_the_pruner(name: str, tmp_path: Path) -> None:
    """--pruner hyperband made one more storage query per trial judged: its bracket study's
    constructor asked the storage for the study's id. Counted with the engine's commits (on
    SQLite every statement's transaction takes the lock and commits)."""
    per_boundary = {}
    for k in (3, 9):
        storage = open_storage(f"sqlite:///{tmp_path / f'{name}-{k}.db'}")
        study = optuna.create_study(storage=storage, study_name="s", pruner=make_pruner(name, 12, in_flight=True))
        for trial in _running(study, [{e: 1 / e + 0.01 * i for e in range(1, 13)} for i in range(6)]):
            study.tell(trial, 1 / 12)
        flight = _running(study, [{} for _ in range(k)])
        commits = [0]
        sqlalchemy.event.listen(rdb_backend(storage).engine, "commit", lambda c: commits.__setitem__(0, commits[0] + 1))
        costs = []
        for epoch in range(1, 5):
            values = [(trial_id(t), epoch, 0.5 + 0.1 * i) for i, t in enumerate(flight)]
            before = commits[0]
            writes = TrialWrites(intermediate_values=values)
            judge_boundary(study, values, {trial_id(t) for t in flight}, writes)
            write_trials(storage_of(study), writes)
            costs.append(commits[0] - before)
        per_boundary[k] = costs
    assert per_boundary[3] == per_boundary[9] == [2] * 4, per_boundary


@pytest.mark.parametrize("name", ["median", "patient"])
@pytest.mark.parametrize("in_flight", [False, True])
def test_a_strategy_with_too_few_trials_is_judged_against_all_at_their_worst_quarter(in_flight: bool, name: str) -> None:
    """Before, a trial of a strategy with fewer than 3 trials could not be pruned at all (up to 21
    trials of a study, and every trial of a strategy the sampler rarely tries); under ``patient``
    still so after the median got its fallback. Now it is judged against every strategy's trials,
    past its own LR peak, by the looser 75th percentile (``patient``: once it stops improving)."""
    epochs = 10
    study = optuna.create_study(pruner=make_pruner(name, epochs, in_flight=in_flight))
    for level in (0.20, 0.25, 0.30, 0.35, 0.40):  # five cosine trials: at epoch 4, 75th percentile 0.35
        _with_params(study, {"decay": "cosine"}, [level] * epochs, level)

    def pruned_at(level: float) -> int | None:
        trial = _with_params(study, {"decay": "onecycle", "onecycle_pct_start": 0.3}, [], None)
        for epoch in range(1, epochs + 1):
            trial.report(level + 0.01 * epoch, epoch)  # a little worse each epoch: patience is out at epoch 3
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                return epoch
        study.tell(trial, level)
        return None

    assert pruned_at(5.0) == 4  # among the worst of all: pruned after its rise (ceil(0.3 * 10) = 3)
    assert pruned_at(0.33) is None  # worse than the median of all, not than their worst quarter


def test_one_trial_at_a_time_with_several_workers_prunes_against_running_trials() -> None:
    """--workers N, one trial each: the first N trials are all RUNNING at once. Optuna's
    MedianPruner counts complete trials only, so none of them could be pruned; the study's median
    takes running trials as peers on this path too."""
    study = optuna.create_study(pruner=make_pruner("median", 10, in_flight=False))
    _running(study, [{1: 0.3, 2: 0.3, 3: 0.3}] * 3)  # three workers' trials, still running
    bad = _running(study, [{1: 2.0, 2: 2.0, 3: 2.0}])[0]
    assert study.pruner.prune(study, study.trials[bad.number])


def test_the_queued_start_runs_every_epoch() -> None:
    """The baseline's neighbours are near-copies of it: the median of 3 of them pruned about half on
    noise. A trial of the queued start (its ``start`` attr) is never pruned; the same curve without
    it is."""
    study = optuna.create_study(pruner=make_pruner("median", 10))
    for level in (0.20, 0.21, 0.22):
        _with_params(study, {"decay": "cosine"}, [level] * 10, level)
    for start, pruned in (("baseline, weight decay x 3", False), (None, True)):
        study.enqueue_trial({"decay": "cosine"}, user_attrs={"start": start} if start else None)
        trial = _with_params(study, {"decay": "cosine"}, [0.25] * 4, None)
        assert study.pruner.prune(study, study.trials[trial.number]) is pruned
