"""The synthetic ground-truth dataset (masks are exactly the decisive pixels) and the local dataset readers."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from fxai.data import CLASS_NAMES, Shapes, cifar10, image_folder, mnist, shapes, shapes_at

# ---------------------------------------------------------------- synthetic shapes


def test_shapes_batch_types_and_ranges():
    images, labels, masks = shapes(64, seed=3, size=(24, 40))
    assert images.shape == (64, 3, 24, 40) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.long and set(labels.tolist()) <= {0, 1, 2, 3}
    assert masks.shape == (64, 24, 40) and masks.dtype == torch.bool
    assert 0 <= images.min() and images.max() <= 1
    area = masks.flatten(1).float().mean(1)
    assert area.min() > 0.02 and area.max() < 0.4
    assert len(set(labels.tolist())) == 4


def test_mask_is_exactly_the_pixels_the_object_changes():
    """Re-rendering the same scenes without their objects changes exactly the mask's pixels."""
    batch = shapes(128, seed=7, size=32)
    empty = shapes(128, seed=7, size=32, draw_object=False)
    changed = (batch.images != empty.images).any(1)
    assert torch.equal(changed, batch.masks)
    assert torch.equal(empty.labels, batch.labels) and torch.equal(empty.masks, batch.masks)


def test_pixels_outside_the_mask_do_not_decide_the_class():
    """Another background (other distractors, colours, noise) keeps the label and every pixel inside the mask,
    and changes pixels outside it."""
    a = shapes(64, seed=11, size=32)
    b = shapes(64, seed=11, size=32, background_seed=99)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.masks, b.masks)
    inside = a.masks[:, None].expand_as(a.images)
    assert torch.equal(a.images[inside], b.images[inside])
    changed = (a.images != b.images).any(1)
    assert (changed & ~a.masks).sum() / (~a.masks).sum() > 0.99


def _rule(mask: torch.Tensor) -> int:
    """The class of a mask from its geometry alone (independent of the renderer): the share of its bounding box it
    fills (square 1, disc pi/4, triangle and cross about 1/2) and its bottom row (the triangle's base fills it)."""
    rows, cols = torch.nonzero(mask, as_tuple=True)
    crop = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    fill = crop.float().mean()
    if fill > 0.93:
        return 0
    if 0.7 < fill < 0.88:
        return 1
    return 2 if crop[-1].float().mean() > 0.7 else 3


def test_the_mask_alone_gives_the_class():
    """The mask is the object: a geometric rule on the mask recovers every label."""
    _, labels, masks = shapes(200, seed=5, size=48)
    assert torch.equal(torch.tensor([_rule(m) for m in masks]), labels)


def test_shapes_is_deterministic_and_index_addressable():
    full = shapes(40, seed=2, size=20)
    again = shapes(40, seed=2, size=20)
    part = shapes(10, seed=2, start=25, size=20)
    picked = shapes_at([39, 0, 25], seed=2, size=20)
    for t_full, t_again, t_part, t_pick in zip(full, again, part, picked):
        assert torch.equal(t_full, t_again)
        assert torch.equal(t_full[25:35], t_part)
        assert torch.equal(t_full[[39, 0, 25]], t_pick)
    other = shapes(40, seed=3, size=20)
    assert not torch.equal(full.images, other.images)


def test_shapes_dataset_matches_the_function_and_batches():
    data = Shapes(50, seed=4, size=16, start=100)
    batch = shapes(50, seed=4, size=16, start=100)
    image, label, mask = data[7]
    assert torch.equal(image, batch.images[7]) and label == int(batch.labels[7]) and torch.equal(mask, batch.masks[7])
    assert len(data) == 50 and data.classes == CLASS_NAMES[:4]
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=False)
    images, labels, masks = next(iter(loader))
    assert torch.equal(images, batch.images[:16]) and torch.equal(labels, batch.labels[:16])
    assert torch.equal(data[-1][0], batch.images[-1])
    with pytest.raises(IndexError, match="out of range"):
        data[50]


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=4), "size"), (dict(classes=7), "classes"), (dict(noise=0.2), "noise"),
    (dict(seed=-1), "seed"), (dict(distractors=-1), "distractors"),
])
def test_shapes_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shapes(2, **kwargs)


# ---------------------------------------------------------------- local datasets in their real formats


def _write_idx(path, array: np.ndarray):
    code = {np.uint8: 0x08}[array.dtype.type]
    with open(path, "wb") as fh:
        fh.write(struct.pack(">HBB", 0, code, array.ndim))
        fh.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        fh.write(array.tobytes())


def test_mnist_reads_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    data = mnist(tmp_path, train=False)
    assert len(data) == 5
    image, label = data[2]
    assert image.shape == (1, 28, 28) and label == 4
    assert torch.equal(image, torch.from_numpy(images[2]).float()[None] / 255)


def test_mnist_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST not found: missing .*train-images-idx3-ubyte"):
        mnist(tmp_path)


def test_cifar10_reads_pickle_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=3).tolist()
        batches[name] = (data, labels)
        with open(folder / name, "wb") as fh:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": ["x.png"] * 3}, fh, protocol=2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_cases_per_batch": 3, "num_vis": 3072}, fh)
    test = cifar10(tmp_path, train=False)
    train = cifar10(tmp_path, train=True)
    assert len(test) == 3 and len(train) == 15 and test.classes == names
    image, label = test[1]
    data, labels = batches["test_batch"]
    assert label == labels[1]
    assert torch.equal(image, torch.from_numpy(data[1].reshape(3, 32, 32)).float() / 255)


def test_cifar10_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found: missing .*data_batch_1"):
        cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="could not be read"):
        cifar10(tmp_path)


def test_image_folder_reads_pngs(tmp_path):
    rng = np.random.default_rng(2)
    pixels = {}
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for k in range(2):
            arr = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{k}.png")
            pixels[(cls, k)] = arr
    Image.fromarray(pixels[("dogs", 1)][..., 0]).save(tmp_path / "dogs" / "2.png")   # grayscale becomes RGB
    data = image_folder(tmp_path)
    assert data.classes == ["cats", "dogs"] and len(data) == 5
    image, label = data[3]
    assert label == 1 and torch.equal(image, torch.from_numpy(pixels[("dogs", 1)]).permute(2, 0, 1).float() / 255)
    gray, _ = data[4]
    assert gray.shape == (3, 12, 10) and torch.equal(gray[0], gray[2])
    resized = image_folder(tmp_path, size=(8, 6))
    assert resized[0][0].shape == (3, 8, 6)


def test_image_folder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        image_folder(tmp_path / "empty")
