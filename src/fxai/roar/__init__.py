"""ROAR and KAR: remove and retrain, keep and retrain (Hooker et al., NeurIPS 2019), end to end.

- :func:`extract`: maps of a whole dataset as sharded safetensors with a manifest (resumable, by rank).
- :func:`alter`: the altered dataset (mean fill or ROAD's noisy linear imputation).
- :func:`fit`: seeded retraining (DDP under ``torchrun``).
- :mod:`~fxai.roar.jobs`: a grid of retrains shared by any number of workers.
- :func:`run`: the whole benchmark and its report (``fxai roar`` on the command line).
"""

from . import jobs as jobs
from .extraction import extract as extract
from .extraction import load_maps as load_maps
from .extraction import params_hash as params_hash
from .methods import random_map as random_map
from .methods import sobel_map as sobel_map
from .nets import ResNet as ResNet
from .pipeline import QUICK as QUICK
from .pipeline import RoarConfig as RoarConfig
from .pipeline import prepare as prepare
from .pipeline import run_job as run_job
from .pipeline import work as work
from .removal import alter as alter
from .removal import removal_mask as removal_mask
from .report import write as write_report
from .runner import run as run
from .train import TrainConfig as TrainConfig
from .train import accuracy as accuracy
from .train import fit as fit

__all__ = ["QUICK", "ResNet", "RoarConfig", "TrainConfig", "accuracy", "alter", "extract", "fit", "jobs",
           "load_maps", "params_hash", "prepare", "random_map", "removal_mask", "run", "run_job", "sobel_map",
           "work", "write_report"]
