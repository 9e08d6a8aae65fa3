"""Studies validate their trials on the first 2,000 of the 10k validation images, in every
Python process started with this folder on ``PYTHONPATH`` (``cli_helpers.VALIDATE_ON_2K``): a
command and the workers it spawns, as ``conftest.validating_on_2k`` does for studies run in the
test process. For the tests of processes (workers, kills, signals, the bar), where what a trial's
value is does not matter and validating 10k images at every epoch was over half of each trial's
work (6 epochs on 2,000 images, one thread: 1.25 s a trial, 0.55 s so). A command forked by the
zygote (tests/zygote.py) runs this file as a fresh interpreter's ``site`` would."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

IMAGES = 2000
MODULE = "objectives.objective"  # where the objective gets its data (what validating_on_2k patches)


def _patch(module) -> None:
    from objectives import MnistData

    load = module.load_mnist

    def load_mnist(*args, **kwargs):
        data = load(*args, **kwargs)
        return MnistData(train_x=data.train_x, train_y=data.train_y, val_x=data.val_x[:IMAGES],
                         val_y=data.val_y[:IMAGES], test_x=data.test_x, test_y=data.test_y, source=data.source)

    module.load_mnist = load_mnist


class _WhenImported(importlib.abc.MetaPathFinder):
    """Patches the module once it has run: importing it here would import torch into every
    process of the run, the resource tracker's too."""

    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if MODULE in sys.modules:
    _patch(sys.modules[MODULE])
else:
    sys.meta_path.insert(0, _WhenImported())
