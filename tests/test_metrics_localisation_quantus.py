"""Localisation and complexity metrics against Quantus 0.6 (test-only oracle) and their definitions."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fxai import metrics as M

quantus = pytest.importorskip("quantus")

CASES = {"mnist": (4, 1, 28, 28), "hidden": (3, 3, 10, 12)}


def data(case, seed=0):
    b, c, h, w = CASES[case]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    a = torch.randn(b, h, w, generator=g, dtype=torch.float64)  # no ties
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    for i in range(b):
        r, s = torch.randint(0, h // 2, (2,), generator=g).tolist()
        mask[i, r:r + h // 2, s:s + w // 3] = True
    return x, a, mask


def run(metric, x, a, mask=None, **call):
    net = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 3)).double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(model=net, x_batch=x.numpy(), y_batch=np.zeros(x.shape[0], dtype=int),
                     a_batch=a[:, None].numpy(), s_batch=None if mask is None else mask[:, None].numpy(),
                     device="cpu", **call)
    return np.asarray(out, dtype=np.float64)


COMMON = dict(abs=False, normalise=False, disable_warnings=True)


@pytest.mark.parametrize("case", list(CASES))
def test_localisation_equals_quantus(case):
    x, a, mask = data(case)
    for k in (1, 17):
        for ci in (False, True):
            q = run(quantus.TopKIntersection(k=k, concept_influence=ci, **COMMON), x, a, mask)
            np.testing.assert_allclose(M.top_k_intersection(a, mask, k=k, concept_influence=ci).numpy(), q,
                                       rtol=1e-12)
    q = run(quantus.AttributionLocalisation(abs=True, normalise=False, disable_warnings=True), x, a, mask)
    np.testing.assert_allclose(M.attribution_localisation(a, mask).numpy(), q, rtol=1e-8)
    q = run(quantus.AttributionLocalisation(positive_attributions=True, **COMMON), x, a, mask)
    np.testing.assert_allclose(M.attribution_localisation(a, mask, positive=True).numpy(), q, rtol=1e-8)
    q = run(quantus.AUC(**COMMON), x, a, mask)
    np.testing.assert_allclose(M.mask_auc(a, mask).numpy(), q, rtol=1e-12)
    quantised = (a * 2).round() / 2  # many ties: each counts one half
    q = run(quantus.AUC(**COMMON), x, quantised, mask)
    np.testing.assert_allclose(M.mask_auc(quantised, mask).numpy(), q, rtol=1e-12)


def test_mask_auc_by_its_definition_and_undefined_cases():
    a = torch.tensor([[[3.0, 1.0, 2.0, 2.0]]])
    mask = torch.tensor([[[True, False, True, False]]])
    # pairs (in, out): (3,1) win, (3,2) win, (2,1) win, (2,2) half -> 3.5 / 4
    torch.testing.assert_close(M.mask_auc(a, mask), torch.tensor([0.875]))
    assert M.mask_auc(a, torch.zeros_like(mask)).isnan().all() and M.mask_auc(a, torch.ones_like(mask)).isnan().all()
    assert M.top_k_intersection(a, torch.zeros_like(mask), k=2).isnan().all()
    with pytest.raises(ValueError, match="k"):
        M.top_k_intersection(a, mask, k=5)


def test_focus_equals_quantus_on_mosaics():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(8, 3, 6, 7, generator=g, dtype=torch.float64), torch.tensor([0, 1, 0, 2, 0, 1, 1, 2])
    x, quadrants = M.mosaics(images, labels, 0, count=3, key=1)
    assert x.shape == (3, 3, 12, 14) and quadrants.sum(1).tolist() == [2, 2, 2]
    for i in range(3):  # the flagged quadrants hold images of class 0
        tiles = [x[i, :, :6, :7], x[i, :, :6, 7:], x[i, :, 6:, :7], x[i, :, 6:, 7:]]
        for tile, flag in zip(tiles, quadrants[i]):
            cls = labels[[j for j in range(8) if torch.equal(images[j], tile)][0]]
            assert (cls == 0) == bool(flag)
    a = torch.randn(3, 12, 14, generator=g, dtype=torch.float64)
    q = run(quantus.Focus(**COMMON), x, a, custom_batch=quadrants.int().numpy().tolist())
    np.testing.assert_allclose(M.focus(a, quadrants).numpy(), q, rtol=1e-8)
    odd = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)  # quadrants split at floor(H/2), floor(W/2)
    flags = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]])
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[0, :2, :3] = mask[0, 2:, 3:] = mask[1, :2, 3:] = mask[1, 2:, :3] = True
    torch.testing.assert_close(M.focus(odd, flags), M.relevance_mass(odd, mask), rtol=0, atol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_complexity_equals_quantus(case):
    x, a, _ = data(case)
    a[0, :3] = 0.0
    a[1] *= (a[1].abs() > 1).double()  # sparse
    per_image = a / a.flatten(1).abs().amax(1)[:, None, None]
    # Quantus's sparseness adds 1e-7 to every |a|: equal within that offset on max-normalised maps
    q = run(quantus.Sparseness(abs=True, normalise=False, disable_warnings=True), x, per_image)
    np.testing.assert_allclose(M.sparseness(a).numpy(), q, rtol=1e-5)
    a[2, 0, 0] = 1e-6 * per_image[2].abs().max()  # below eps after normalising
    per_image = a / a.flatten(1).abs().amax(1)[:, None, None]
    q = run(quantus.EffectiveComplexity(abs=True, normalise=False, disable_warnings=True), x, per_image)
    np.testing.assert_array_equal(M.effective_complexity(a).numpy(), q)


def test_quantus_normalises_by_the_batch_maximum():
    # Quantus's default normalise_by_max divides by the largest value of the whole batch: a map's effective
    # complexity then changes with its neighbours. fxai normalises each map by its own maximum.
    x, a, _ = data("hidden")
    a = a.abs() + 1e-3
    a[1] *= 1e-6
    alone = run(quantus.EffectiveComplexity(disable_warnings=True), x[1:2], a[1:2])
    together = run(quantus.EffectiveComplexity(disable_warnings=True), x, a)
    assert together[1] < alone[0] == a[1].numel()
    ours = M.effective_complexity(a)
    assert ours[1] == a[1].numel() and torch.equal(M.effective_complexity(a[1:2]), ours[1:2])


def test_quantus_weighted_attribution_localisation_depends_on_the_batch():
    # Quantus weights by |GT| / x_batch[2:].size: a slice of images, not of pixels. The same image scores
    # differently in a batch of 3 and of 4 (fxai does not offer the weighting).
    x, a, mask = data("mnist")
    metric = quantus.AttributionLocalisation(weighted=True, abs=True, normalise=False, disable_warnings=True)
    three, four = run(metric, x[:3], a[:3], mask[:3]), run(metric, x, a, mask)
    assert not np.isclose(three[0], four[0])
    plain = M.attribution_localisation(a, mask)
    torch.testing.assert_close(M.attribution_localisation(a[:3], mask[:3]), plain[:3], rtol=0, atol=0)
