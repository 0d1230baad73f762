"""Retraining: seeded to the bit, the networks, and the leak of the mean fill that noisy linear imputation closes."""

from __future__ import annotations

import os

import pytest
import torch

import fxai
from fxai.roar import removal
from fxai.roar.train import augment


def _tiny():
    data = fxai.data.shapes(96, seed=3, size=16, classes=3)
    return data.images, data.labels


def test_same_seed_same_weights_other_seed_other_weights():
    x, y = _tiny()
    cfg = fxai.roar.TrainConfig(epochs=2, width=4, batch_size=16, augment="crop+flip")
    a = fxai.roar.fit(x, y, classes=3, config=cfg, seed=5)
    b = fxai.roar.fit(x, y, classes=3, config=cfg, seed=5)
    c = fxai.roar.fit(x, y, classes=3, config=cfg, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert fxai.roar.accuracy(a, x, y) == fxai.roar.accuracy(b, x, y)
    assert not a.training
    before = torch.get_rng_state()
    fxai.roar.fit(x, y, classes=3, config=cfg, seed=5)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left alone


def test_sgd_resnet_and_accuracy_counts():
    x, y = _tiny()
    net = fxai.roar.fit(x, y, classes=3, config=fxai.roar.TrainConfig(arch="resnet8", epochs=1, width=4,
                                                                      optimizer="sgd", lr=0.05), seed=0)
    assert isinstance(net, fxai.roar.ResNet) and net(x[:2]).shape == (2, 3)
    pred = net(x).argmax(1)
    assert fxai.roar.accuracy(net, x, y, batch_size=7) == int((pred == y).sum()) / 96
    assert fxai.roar.ResNet(4, depth=20).layer3[2] is not None
    with pytest.raises(ValueError, match="depth"):
        fxai.roar.ResNet(4, depth=10)
    with pytest.raises(ValueError, match="optimizer"):
        fxai.roar.TrainConfig(optimizer="lbfgs")


def test_augment_translates_and_flips():
    x = torch.arange(2 * 1 * 4 * 5.0).view(2, 1, 4, 5)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, "crop", 0, gen), x)
    flipped = augment(x, "flip", 0, torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    moved = augment(x, "crop", 2, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each image is a window of its zero-padded self
        windows = padded[i, 0].unfold(0, 4, 1).unfold(1, 5, 1)
        assert (windows == moved[i, 0]).flatten(2).all(-1).any()


def _sigma(p: float, n: int) -> float:
    """The binomial standard deviation of an accuracy ``p`` measured on ``n`` test images."""
    return max(p * (1 - p), 0.25 * 0.75) ** 0.5 / n ** 0.5


def test_mean_fill_of_the_object_leaks_the_class_noisy_linear_does_not():
    """Rong et al.'s point, on data whose class is the object's shape: replacing exactly the object by the
    dataset mean leaves its silhouette, and a retrained network reads the class from it; noisy linear
    imputation from the background leaves nothing to read (chance is 0.25). Keeping only the object (KAR
    with the ideal map) keeps the class. Scenes without distractor blobs, so that a small network learns the
    silhouettes in a few hundred steps; the same training budget for both fills.

    Measured (seed 0; torch 2.14, two-core CPU): leak 0.477 with one thread, 0.537 with two (seed 1: 0.457);
    hidden 0.223-0.250; kept 0.983-0.993. The thresholds are margins over the test's own measurements (binomial
    standard deviations of its 300 test images), not absolute accuracies, which depend on the CPU's kernels
    and thread count. ``FXAI_TEST_SEED`` runs it with another seed."""
    seed = int(os.environ.get("FXAI_TEST_SEED", "0"))
    train = fxai.data.shapes(2000, seed=seed, size=24, classes=4, distractors=0)
    test = fxai.data.shapes(300, seed=seed, start=1 << 30, size=24, classes=4, distractors=0)
    mean = train.images.mean((0, 2, 3))
    cfg = fxai.roar.TrainConfig(epochs=10, width=8, batch_size=64, lr=6e-3)
    n, chance = test.labels.shape[0], 0.25

    def retrained(fill, keep=False):
        xs = []
        for split, key in ((train, 1), (test, 2)):
            mask = ~split.masks if keep else split.masks
            xs.append(removal.fill_with(split.images, mask, fill, mean=mean, key=key))
        net = fxai.roar.fit(xs[0], train.labels, classes=4, config=cfg, seed=seed)
        return fxai.roar.accuracy(net, xs[1], test.labels)

    leak, hidden, kept = retrained("mean"), retrained("noisy_linear"), retrained("mean", keep=True)

    assert abs(hidden - chance) < 4 * _sigma(chance, n), (hidden, chance)    # nothing left to read
    gap = (_sigma(leak, n) ** 2 + _sigma(hidden, n) ** 2) ** 0.5
    assert leak - hidden > 4 * gap, (leak, hidden, gap)                       # the silhouette carries the class
    assert kept - leak > 4 * gap, (kept, leak, gap)                           # the object itself carries more
