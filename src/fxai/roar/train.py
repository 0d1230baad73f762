"""Seeded training from scratch on in-memory tensors, on one device or under ``torchrun`` (DDP).

Every random choice comes from the seed: the initial weights (drawn under a forked global generator),
the order of the samples and the augmentation (explicit generators). The same seed on the same
device and thread count gives the same weights, bit for bit. Under DDP each of ``w`` ranks takes every
``w``-th sample of each global batch, so the global batch and the number of steps are those of one process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._core.checks import check_choice, check_positive_int
from . import dist
from .nets import build

OPTIMIZERS = ("sgd", "adamw")
AUGMENTATIONS = ("none", "flip", "crop", "crop+flip")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a network is (re)trained: ``arch`` (``smallcnn``, ``resnet8``, ``resnet20``) of ``width``;
    ``epochs`` of mini-batches of ``batch_size``; ``optimizer`` ``"adamw"`` (one-cycle schedule to ``lr``) or
    ``"sgd"`` (Nesterov momentum 0.9, cosine decay from ``lr``); ``augment``: random horizontal flips and/or
    random translations by up to ``pad`` pixels (zero padding, then a crop)."""

    arch: str = "smallcnn"
    width: int = 8
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 6e-3
    weight_decay: float = 1e-4
    augment: str = "flip"
    pad: int = 2

    def __post_init__(self):
        check_positive_int(self.width, name="width")
        check_positive_int(self.epochs, name="epochs")
        check_positive_int(self.batch_size, name="batch_size")
        check_choice(self.optimizer, OPTIMIZERS, name="optimizer")
        check_choice(self.augment, AUGMENTATIONS, name="augment")
        if not isinstance(self.lr, (int, float)) or self.lr <= 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")


def augment(x: torch.Tensor, how: str, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random flips / translations of a batch ``[B, C, H, W]``, one draw per image from ``gen``."""
    b, _, h, w = x.shape
    if "crop" in how and pad > 0:
        off = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (off[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (off[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(b, device=x.device)[:, None, None, None],
                   torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    if "flip" in how:
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device).view(b, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
    return x


def _optimizer(model: nn.Module, config: TrainConfig, steps: int):
    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                          weight_decay=config.weight_decay)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)


def fit(images: torch.Tensor, labels: torch.Tensor, *, classes: int, config: TrainConfig = TrainConfig(),
        seed: int = 0, device=None, on_epoch: Callable[[int], None] | None = None) -> nn.Module:
    """A network trained from scratch on ``images [N, C, H, W]``, ``labels [N]``; returned in eval mode.

    Runs data-parallel (DDP) when a ``torchrun`` process group is active. ``on_epoch(e)`` is called
    after each epoch (e.g. to show that a job is alive).

    Example:
        >>> net = fxai.roar.fit(x, torch.tensor([0, 1]), classes=2, config=fxai.roar.TrainConfig(epochs=1))
    """
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(f"images must be [N, C, H, W] and labels [N], got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    device = images.device if device is None else torch.device(device)
    n = images.shape[0]
    per_epoch = max(1, n // config.batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(config.arch, classes, channels=images.shape[1], width=config.width).to(device)
    opt, schedule = _optimizer(model, config, config.epochs * per_epoch)
    net = model
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist.active() else (0, 1)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    for epoch in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(per_epoch):
            idx = perm[s * config.batch_size:(s + 1) * config.batch_size]
            x = augment(images[idx.to(images.device)].to(device), config.augment, config.pad, gen)
            y = labels[idx.to(labels.device)].to(device)
            x, y = x[rank::world], y[rank::world]
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        if on_epoch is not None:
            on_epoch(epoch)
    return model.eval()


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 512,
             device=None) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``images``, ``labels``."""
    device = next(model.parameters()).device if device is None else device
    correct = 0
    with torch.no_grad():
        for a in range(0, images.shape[0], batch_size):
            pred = model(images[a:a + batch_size].to(device)).argmax(-1)
            correct += int((pred == labels[a:a + batch_size].to(device)).sum())
    return correct / images.shape[0]
