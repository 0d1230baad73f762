"""ROAR and KAR: remove and retrain, keep and retrain (Hooker et al., NeurIPS 2019), end to end.

- :func:`extract`: maps of a whole dataset as sharded safetensors with a manifest (resumable, by rank).
- :func:`alter`: the altered dataset (mean fill or ROAD's noisy linear imputation).
- :func:`fit`: seeded retraining (DDP under ``torchrun``).
- :mod:`~fxai.roar.jobs`: a grid of retrains shared by any number of workers.
- :func:`run`: the whole benchmark and its report (``fxai roar`` on the command line).

The submodules are imported on first use of one of their names, so that ``import fxai`` does not pay for
the data readers (torchvision), the process group and the training loop.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "QUICK": "pipeline", "ResNet": "nets", "RoarConfig": "pipeline", "TrainConfig": "train", "accuracy": "train",
    "alter": "removal", "extract": "extraction", "fit": "train", "load_maps": "extraction",
    "params_hash": "extraction", "prepare": "pipeline", "random_map": "methods", "removal_mask": "removal",
    "run": "runner", "run_job": "pipeline", "sobel_map": "methods", "work": "pipeline", "write_report": "report",
}
_RENAMED = {"write_report": "write"}
_SUBMODULES = ("cli", "datasets", "dist", "extraction", "jobs", "methods", "nets", "pipeline", "removal", "report",
               "runner", "train")

__all__ = sorted([*_NAMES, "jobs"])


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})
