"""The LR range test: a sane suggestion for SGD, early stop on divergence, the CLI, --lr-range."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from cli_helpers import SMALL, load, run_here
from objectives.lr_range import lr_range_test, valley
from study.run import main


def test_sgd_on_2000_samples_suggests_a_sane_lr_and_stops_when_it_diverges(mnist_2k) -> None:
    result = lr_range_test("sgd", mnist_2k, start_lr=1e-7, end_lr=10.0, steps=200)
    assert 1e-3 <= result.suggestion <= 1.0
    assert result.low < result.suggestion < result.high
    assert result.diverged and len(result.lrs) < 200  # stopped early, before reaching 10
    assert result.lrs[0] == pytest.approx(1e-7)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)  # exponential growth
    assert ratios[0] == pytest.approx((10.0 / 1e-7) ** (1 / 199), rel=1e-9)


def test_valley_is_not_fooled_by_an_early_spike() -> None:
    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    curve = [2.3] * 15 + [5.0, 6.0] + [2.3 - 1.8 * i / 59 for i in range(60)] + [0.5 + 0.4 * i for i in range(23)]
    index = valley(lrs, curve)
    assert 17 <= index <= 76 and curve[index] < 2.0  # inside the long descent, not at the spike
    assert valley(lrs[:2], curve[:2]) == 1


def test_bad_arguments_name_the_value(mnist_2k) -> None:
    with pytest.raises(ValueError, match="start_lr"):
        lr_range_test("sgd", mnist_2k, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="steps="):
        lr_range_test("sgd", mnist_2k, steps=3)


def test_cli_writes_the_figure_prints_the_suggestion_and_stores_nothing(tmp_path: Path) -> None:
    done = run_here("--optimizer", "adam", "--train-samples", "2000", "--device", "cpu", "--out", "figs/adam.html",
                   cwd=tmp_path, module="study.lr_range")
    assert done.returncode == 0, done.stderr
    assert "suggested initial LR:" in done.stdout and "suggested search range:" in done.stdout
    # what it does is said before the minutes it takes on all 50k images
    assert done.stdout.startswith("range test: adam, 200 steps from LR 1e-07 to 10 on 2,000 images, batch 128, on cpu")
    # stopping where the loss blows up is the test's rule, not a failure, and the line says so
    assert "diverged" not in done.stdout
    assert "stopped there as planned: the smoothed loss rose above 4x its lowest" in done.stdout
    page = (tmp_path / "figs" / "adam.html").read_text()
    assert "LR range test, adam: loss vs learning rate" in page and '"type":"log"' in page
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["adam.html", "figs"]  # nothing else written


def test_cli_bad_range_is_one_line(tmp_path: Path) -> None:
    done = run_here("--start-lr", "1", "--end-lr", "0.1", "--device", "cpu", cwd=tmp_path, module="study.lr_range")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "--start-lr" in done.stderr


def test_an_out_that_cannot_be_written_is_one_line_naming_it_before_the_test(tmp_path: Path, monkeypatch) -> None:
    """--out under a regular file, or a folder: found after the whole range test, in a line that
    did not name --out ("[Errno 20] Not a directory"). A disk that fills during the test: the
    same one line, naming --out."""
    import errno

    import study.lr_range as command

    import objectives.lr_range

    def never(*args, **kwargs):
        raise AssertionError("the range test ran before --out was checked")

    (tmp_path / "file").write_text("x")
    args = ["--train-samples", "2000", "--device", "cpu", "--steps", "20"]
    with monkeypatch.context() as patch:
        patch.setattr(objectives.lr_range, "lr_range_test", never)
        for out in ("file/f.html", "."):
            done = run_here(*args, "--out", out, cwd=tmp_path, module="study.lr_range")
            assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
            assert "--out" in done.stderr and "Traceback" not in done.stderr, done.stderr

    def full(path, data, encoding="utf-8"):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(command, "write_atomically", full)
    done = run_here(*args, "--out", "f.html", cwd=tmp_path, module="study.lr_range")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --out f.html could not be written (No space left on device); nothing was written"], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.slow
def test_study_run_lr_range_narrows_and_records_and_resumes(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert main(["--trials", "4", "--storage", url, "--lr-range", *SMALL]) == 0
    assert capsys.readouterr().out.count("LR range test,") == 5
    study = load(url)
    ranges = study.user_attrs["lr_range"]
    assert set(ranges) == {"sgd", "adam", "adamw", "rmsprop", "adagrad"}
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.WAITING:
            continue
        opt = trial.params["optimizer"]
        low, high = ranges[opt]["low"], ranges[opt]["high"]  # lr_position is the place in this range
        assert trial.user_attrs["lr"] == pytest.approx(low * (high / low) ** trial.params["lr_position"])
        assert math.isclose(ranges[opt]["low"], ranges[opt]["suggestion"] / 10)
    # resuming reuses the stored ranges (no new range test): the same experiment
    assert main(["--trials", "5", "--storage", url, "--lr-range", *SMALL]) == 0
    assert "LR range test," not in capsys.readouterr().out
    assert len(load(url).trials) == 5



def test_a_meaningless_range_says_why_and_a_good_one_does_not(mnist_2k, tmp_path: Path) -> None:
    good = lr_range_test("sgd", mnist_2k, steps=100)
    assert good.problems == []
    at_once = lr_range_test("sgd", mnist_2k, start_lr=5.0, end_lr=1000.0, steps=100)
    assert len(at_once.problems) == 1 and "diverged after" in at_once.problems[0] and "lower the start LR" in at_once.problems[0]
    no_valley = lr_range_test("sgd", mnist_2k, start_lr=1e-9, end_lr=1e-7, steps=100)
    assert len(no_valley.problems) == 1 and "never fell" in no_valley.problems[0]
    # the command line says so on stderr, and still writes the figure
    done = run_here("--optimizer", "sgd", "--device", "cpu", "--train-samples", "2000", "--start-lr", "1e-9",
                   "--end-lr", "1e-7", "--steps", "50", "--out", str(tmp_path / "f.html"), cwd=tmp_path,
                   module="study.lr_range")
    assert done.returncode == 0 and "warning: the suggestion means nothing here" in done.stderr
    assert (tmp_path / "f.html").exists()


def test_a_study_keeps_the_default_range_of_an_optimizer_whose_test_means_nothing(monkeypatch, capsys) -> None:
    # study.run --lr-range: an optimizer whose curve diverged at once narrows nothing, says why,
    # and records the default range it kept; the others take their suggested range
    from objectives.lr_range import LRRangeResult
    from study import experiment
    from study.run import build_parser

    def fake_test(optimizer, data, **kwargs):
        if optimizer == "adam":  # diverged after 3 of 200 steps: the range starts too high
            return LRRangeResult(optimizer, [1e-7, 1e-6, 1e-5], [2.3, 9.0, 50.0], [2.3, 9.0, 50.0], 1e-6, 1e-7, 3e-6,
                                 diverged=True, steps=200)
        lrs = [10 ** (e / 10) for e in range(-70, 0)]
        loss = [2.3 - 2.0 * i / 69 for i in range(70)]
        return LRRangeResult(optimizer, lrs, loss, loss, 0.01, 0.001, 0.05, diverged=False, steps=70)

    monkeypatch.setattr(experiment, "lr_range_test", fake_test)
    monkeypatch.setattr(experiment, "load_mnist", lambda *args, **kwargs: None)
    s = experiment.Settings(**vars(build_parser().parse_args(["--lr-range", "--device", "cpu"])))
    space, ranges = experiment.lr_range_space(s, None, None)
    assert space.lr_range("adam") == s.space.lr_range("adam") == (ranges["adam"]["low"], ranges["adam"]["high"])
    assert "starts too high" in ranges["adam"]["problems"][0]
    assert space.lr_range("sgd") == (0.001, 0.05) and "problems" not in ranges["sgd"]
    err = capsys.readouterr().err
    assert "LR range test, adam:" in err and "keeping the default range" in err
