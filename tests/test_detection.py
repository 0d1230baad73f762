"""Detectors explained per box: fxai.detections (the output), fxai.box_target (pytorch-grad-cam's
FasterRCNNBoxScoreTarget), CAMs against pytorch-grad-cam's detection pipeline on the same model and boxes."""

import copy

import numpy as np
import pytest
import torch
from torchvision.models import detection

import fxai
from fxai.postprocess import normalize

DETECTORS = {  # random weights, tiny inputs; a zero score threshold keeps detections from an untrained head
    "fasterrcnn_resnet50_fpn": ("backbone.body.layer4", dict(min_size=64, max_size=96)),
    "retinanet_resnet50_fpn": ("backbone.body.layer4", dict(min_size=64, max_size=96)),
    "fcos_resnet50_fpn": ("backbone.body.layer4", dict(min_size=64, max_size=96)),
}


def make(name):
    layer, sizes = DETECTORS[name]
    torch.manual_seed(0)
    thresh = {"box_score_thresh": 0.0} if "rcnn" in name else {"score_thresh": 0.0}
    kwargs = dict(weights=None, weights_backbone=None, num_classes=7, **thresh, **sizes)
    kwargs["box_detections_per_img" if "rcnn" in name else "detections_per_img"] = 4
    model = getattr(detection, name)(**kwargs).eval()
    x = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    return model, layer, x


def _pgc(cls, model, layer, x, boxes, labels):
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
    oracle_model = copy.deepcopy(model)
    with cls(oracle_model, [oracle_model.get_submodule(layer)]) as oracle:
        return oracle(x.clone(), targets=[FasterRCNNBoxScoreTarget(labels=labels, bounding_boxes=boxes)])


def _check(name):
    from pytorch_grad_cam import EigenCAM, GradCAM
    model, layer, x = make(name)
    with torch.no_grad():
        out = model(x.clone())
    boxes, labels = out[0]["boxes"][:2], out[0]["labels"][:2]
    assert len(boxes) == 2
    model_fn, params = fxai.functional(model, output=fxai.detections)
    target = fxai.box_target(boxes, labels)
    got = fxai.grad_cam(model_fn, params, x, target, layer=layer)
    assert fxai.grad_cam(model_fn, params, x, target, layer=layer, relu=False).abs().max() > 0
    np.testing.assert_allclose(normalize(got).numpy(), _pgc(GradCAM, model, layer, x, boxes, labels), rtol=0,
                               atol=1e-5)
    # per box: the sum of the boxes' scores is the sum of their maps' gradients, so Grad-CAM's weights add up
    single = [fxai.grad_cam(model_fn, params, x, fxai.box_target(boxes[k:k + 1], labels[k:k + 1]), layer=layer,
                            relu=False, upsample=False) for k in range(2)]
    both = fxai.grad_cam(model_fn, params, x, target, layer=layer, relu=False, upsample=False)
    torch.testing.assert_close(both, single[0] + single[1], rtol=1e-4, atol=1e-6)
    eigen = fxai.eigen_cam(model_fn, params, x, layer=layer, relu=True)
    want = _pgc(EigenCAM, model, layer, x, boxes, labels)
    flipped = np.abs(normalize(eigen).numpy() - want).max()
    assert flipped < 1e-5 or np.abs(normalize(fxai.eigen_cam(model_fn, params, x, layer=layer) * -1).clamp(min=0)
                                     .numpy() - want).max() < 1e-5  # the SVD's sign is free in pytorch-grad-cam


@pytest.mark.slow  # a few seconds each, on 64×80 inputs
@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn"])
def test_detectors_match_pytorch_grad_cam(name):
    _check(name)


def test_box_target_semantics():
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
    pred = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10]], requires_grad=True),
            "scores": torch.tensor([0.8, 0.6, 0.9], requires_grad=True), "labels": torch.tensor([1, 2, 1])}
    given, labels = torch.tensor([[0.0, 0, 10, 10], [21, 20, 30, 30], [50, 50, 60, 60]]), torch.tensor([1, 3, 1])
    got = fxai.box_target(given, labels)(fxai.detections([pred]))
    want = FasterRCNNBoxScoreTarget(labels, given)(pred)
    torch.testing.assert_close(got, want.reshape(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(got, torch.tensor([1.8]))  # box 2 matches a label-2 detection: 0; box 3 matches none
    g_ours = torch.autograd.grad(got.sum(), pred["scores"])[0]
    assert g_ours.tolist() == [1.0, 0.0, 0.0]
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    assert fxai.detections([pred, empty]).shape == (2, 3, 6)
    torch.testing.assert_close(fxai.box_target(given, labels)(fxai.detections([pred, empty])), torch.tensor([1.8, 0.0]))
    with pytest.raises(ValueError, match="labels must be"):
        fxai.box_target(given, labels[:2])
    with pytest.raises(ValueError, match="iou_threshold"):
        fxai.box_target(given, labels, iou_threshold=1.5)
    with pytest.raises(ValueError, match="detections"):
        fxai.box_target(given, labels)(torch.zeros(2, 5))
    with pytest.raises(TypeError, match="list of dicts"):
        fxai.detections(torch.zeros(2, 5))
