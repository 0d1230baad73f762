"""fxai explain on torchvision detectors (each box's map) and segmentation models (a category's predicted mask)."""

import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from fxai.app.cli import main
from fxai.app.segment import categories_of


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.mark.slow  # a ResNet-50 detector at its own 800-pixel input size
def test_explain_detector(image, tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "frcnn.pt"
    torch.save(torchvision.models.get_model("fasterrcnn_resnet50_fpn", weights=None,
                                            weights_backbone=None).state_dict(), weights)
    out = tmp_path / "out"
    assert main(["explain", image, "--model", "fasterrcnn_resnet50_fpn", "--weights", str(weights), "--method",
                 "eigen_cam", "--option", "box_threshold=0.6", "--out", str(out)]) == 0
    saved = torch.load(out / "img_eigen_cam.pt")
    assert len(saved["boxes"]) >= 1 and saved["maps"].shape == (len(saved["boxes"]), 48, 64)
    assert (saved["scores"] >= 0.6).all() and os.path.isfile(out / "img_eigen_cam.png")
    assert "boxes with score >= 0.6" in capsys.readouterr().out


@pytest.mark.slow
def test_explain_segmenter(image, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "lraspp.pt"
    module = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None, weights_backbone=None).eval()
    torch.save(module.state_dict(), weights)
    out = tmp_path / "out"
    assert main(["explain", image, "--model", "lraspp_mobilenet_v3_large", "--weights", str(weights), "--method",
                 "grad_cam", "--target", "3", "--out", str(out)]) == 0
    amap = torch.load(out / "img_grad_cam_c3.pt")
    assert amap.shape == (48, 64) and os.path.isfile(out / "img_grad_cam_c3.png")


def test_categories_of():
    pred = torch.tensor([[0, 0, 2], [2, 5, 5], [5, 0, 0]])
    assert categories_of("top", 2, pred, 6) == [5, 2]
    assert categories_of("top", 5, pred, 6) == [5, 2]
    assert categories_of("top", 1, torch.zeros(2, 2, dtype=torch.long), 6) == [0]
    assert categories_of("index", 4, pred, 6) == [4]
