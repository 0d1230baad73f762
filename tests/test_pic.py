"""PIC metrics (SIC, AIC) against PAIR's ``saliency.metrics.pic`` 0.2 (test-only oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_cnn
from scipy import ndimage

import fxai
from fxai.metrics.pic import THRESHOLDS, aic, blurred_image, compressed_size, pic, random_pixel_mask, sic

pair_pic = pytest.importorskip("saliency.metrics.pic")


@pytest.fixture
def numpy2_trapz(monkeypatch):
    """PAIR's compute_pic_metric calls ``np.trapz``, removed in numpy 2.4 (``np.trapezoid``)."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


def _image(seed=0, size=(48, 40)):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((*size, 3)), [2, 2, 0])
    return ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)


@pytest.mark.parametrize("fraction", [0.0, 0.01, pytest.param(0.3, marks=pytest.mark.slow)])
def test_blurred_image_and_size_are_pairs(fraction):
    img = _image()
    mask = np.random.default_rng(1).random(img.shape[:2]) < fraction
    ours, theirs = blurred_image(img, mask), pair_pic.create_blurred_image(img, mask)
    assert ours.dtype == np.uint8 and np.array_equal(ours, theirs)
    assert compressed_size(ours) == pair_pic.estimate_image_entropy(theirs)
    gray = img[:, :, 0]
    assert np.array_equal(blurred_image(gray, mask), pair_pic.create_blurred_image(gray, mask))


@pytest.mark.parametrize("score", [pytest.param("softmax", marks=pytest.mark.slow), "accuracy"])
def test_curves_equal_pairs(numpy2_trapz, score):
    img = _image()
    model = make_tiny_cnn().double()
    model_fn, params = fxai.functional(model)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255
    saliency = torch.randn(1, 48, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = random_pixel_mask((48, 40), key=0)
    valid, thresholds = 0, (0.02, 0.1, 0.3, 0.6)
    for t in (0, 3, 4):  # class 3's blurred image scores higher than the original: PAIR refuses it
        ours = pic(model_fn, params, x, t, saliency, random_mask=mask, score=score, thresholds=thresholds)

        def pred(batch, t=t):
            logits = model(torch.from_numpy(batch).permute(0, 3, 1, 2).double() / 255)
            out = torch.softmax(logits, -1)[:, t] if score == "softmax" else (logits.argmax(-1) == t).double()
            return out.detach().numpy()

        try:
            ref = pair_pic.compute_pic_metric(img, saliency[0].numpy(), mask.numpy(), pred, thresholds,
                                              min_pred_value=0.0)
        except pair_pic.ComputePicMetricError:
            assert torch.isnan(ours).all()
            continue
        valid += 1
        np.testing.assert_allclose(ours[0].numpy(), ref.curve_y, rtol=0, atol=1e-12)
        assert abs(float(fxai.metrics.auc(ours)[0]) - ref.auc) < 1e-12
    assert valid == (2 if score == "softmax" else 0)


def test_aic_on_a_valid_image(numpy2_trapz):
    # A model that answers class 1 exactly when the image's centre is bright: the fully blurred image loses it.
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[12:20, 12:20] = 255

    def model_fn(params, x):
        centre = x[:, :, 14:18, 14:18].mean((1, 2, 3))
        return torch.stack([0.5 - centre, centre - 0.5], 1) * 10

    x = torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255
    sal = x[:, 0].clone()
    mask = torch.zeros(32, 32, dtype=torch.bool)
    ours = aic(model_fn, {}, x, 1, sal, random_mask=mask, num_data_points=50)

    def pred(batch):
        return (model_fn({}, torch.from_numpy(batch).permute(0, 3, 1, 2).double() / 255).argmax(-1) == 1).numpy()

    ref = pair_pic.compute_pic_metric(img, sal[0].numpy(), mask.numpy(), lambda b: pred(b).astype(float),
                                      THRESHOLDS, min_pred_value=0.5, num_data_points=50)
    np.testing.assert_allclose(ours[0].numpy(), ref.curve_y, rtol=0, atol=1e-12)
    assert ours[0, -1] == 1 and ours[0, 0] == 0


def test_invalid_images_are_nan_and_options_are_checked():
    model_fn, params = fxai.functional(make_tiny_cnn().double())
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = fxai.gradient(model_fn, params, x, 1)
    assert torch.isnan(sic(model_fn, params, x, 1, g, key=0, min_pred_value=1.1)).all()
    with pytest.raises(TypeError, match="key"):
        sic(model_fn, params, x, 1, g)
    with pytest.raises(ValueError, match="thresholds"):
        sic(model_fn, params, x, 1, g, key=0, thresholds=(0.5, 0.1))
    with pytest.raises(ValueError, match="score"):
        pic(model_fn, params, x, 1, g, key=0, score="logit")
    with pytest.raises(ValueError, match="random_mask"):
        sic(model_fn, params, x, 1, g, random_mask=torch.ones(8, 8, dtype=torch.bool))
