"""The datasets of a ROAR run, held as tensors: the synthetic shapes, MNIST, CIFAR-10 or an image folder.

ROAR retrains many networks on altered copies of one dataset, so the images are read once into
tensors ``[N, C, H, W]`` (saved as safetensors in the run folder, where every worker reads them).
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import datasets as local
from ..data.synthetic import Shapes
from .._core.files import write_atomic

DATASETS = ("shapes", "mnist", "cifar10", "folder")
TEST_START = 1 << 30  # synthetic test samples: indices no training set reaches


def collate(items):
    """A batch from dataset items ``(image, label)`` or ``(image, label, mask)``: stacked tensors."""
    first = items[0]
    if not isinstance(first, (tuple, list)) or len(first) < 2:
        raise TypeError("dataset items must be (image, label) or (image, label, mask) tuples")
    images = torch.stack([torch.as_tensor(it[0]) for it in items])
    labels = torch.as_tensor([int(it[1]) for it in items], dtype=torch.long)
    masks = torch.stack([torch.as_tensor(it[2]) for it in items]) if len(first) > 2 else None
    return images, labels, masks


class TensorData(Dataset):
    """``(image, label)`` or ``(image, label, mask)`` items from tensors ``[N, ...]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None = None,
                 name: str = "tensors"):
        self.images, self.labels, self.masks, self.name = images, labels, masks, name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        item = (self.images[i], int(self.labels[i]))
        return item if self.masks is None else (*item, self.masks[i])

    def __getitems__(self, indices):
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return self.name


def to_tensors(dataset: Dataset, *, limit: int | None = None, batch_size: int = 256):
    """``(images, labels, masks or None)`` of the first ``limit`` samples of a map-style dataset."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    loader = DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size, collate_fn=collate)
    parts = list(loader)
    images = torch.cat([p[0] for p in parts]).float()
    labels = torch.cat([p[1] for p in parts])
    masks = torch.cat([p[2] for p in parts]).bool() if parts[0][2] is not None else None
    return images, labels, masks


def load(name: str, *, root: str | None = None, size: int = 32, classes: int = 4, train_count: int | None = None,
         test_count: int | None = None, seed: int = 0) -> dict:
    """``{"train": TensorData, "test": TensorData, "classes": int}`` for a dataset by name.

    ``shapes``: ``train_count`` and ``test_count`` synthetic images of side ``size`` (seeded by ``seed``;
    the test images are drawn from far indices), with masks. ``mnist``, ``cifar10``: the standard files
    under ``root`` (see :mod:`fxai.data`), the first ``train_count``/``test_count`` samples of each split.
    ``folder``: ``root/train/<class>/...`` and ``root/test/<class>/...``, resized to ``size × size``.
    """
    if name == "shapes":
        tr = Shapes(train_count or 2000, seed=seed, size=size, classes=classes)
        te = Shapes(test_count or 500, seed=seed, start=TEST_START, size=size, classes=classes)
        splits, count = {"train": tr, "test": te}, classes
    elif name in ("mnist", "cifar10", "folder"):
        if root is None:
            raise ValueError(f"dataset {name!r} needs a data folder (root / --data-dir)")
        if name == "folder":
            folders = {s: os.path.join(os.path.expanduser(root), s) for s in ("train", "test")}
            for split, path in folders.items():
                if not os.path.isdir(path):
                    raise FileNotFoundError(f"image folder split not found: {path} (expected "
                                            f"{root}/train/<class>/<images> and {root}/test/<class>/<images>)")
            splits = {s: local.image_folder(p, size=(size, size)) for s, p in folders.items()}
        else:
            reader = local.mnist if name == "mnist" else local.cifar10
            splits = {"train": reader(root, train=True), "test": reader(root, train=False)}
        count = len(splits["train"].classes)
    else:
        raise ValueError(f"dataset must be one of {', '.join(map(repr, DATASETS))}; got {name!r}")
    limits = {"train": train_count, "test": test_count}
    out = {"classes": count}
    for split, data in splits.items():
        images, labels, masks = to_tensors(data, limit=limits[split])
        out[split] = TensorData(images, labels, masks, name=f"{name}:{split}")
    return out


def save(data: dict, folder: str) -> None:
    """Write ``data`` (from :func:`load`) as ``folder/{train,test}.safetensors``, atomically."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    for split in ("train", "test"):
        d = data[split]
        tensors = {"images": d.images.contiguous(), "labels": d.labels.contiguous()}
        if d.masks is not None:
            tensors["masks"] = d.masks.contiguous()
        path = os.path.join(folder, f"{split}.safetensors")
        write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"name": d.name,
                                                                          "classes": str(data["classes"])}))


def read(folder: str) -> dict | None:
    """The data saved by :func:`save`, or ``None`` when it is not there."""
    from safetensors import safe_open

    out = {}
    for split in ("train", "test"):
        path = os.path.join(folder, f"{split}.safetensors")
        if not os.path.exists(path):
            return None
        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata()
            t = {k: fh.get_tensor(k) for k in fh.keys()}
        out[split] = TensorData(t["images"], t["labels"], t.get("masks"), name=meta["name"])
        out["classes"] = int(meta["classes"])
    return out
