"""Every example in a public docstring runs (and prints what it shows), so that examples cannot rot.

The examples share one namespace: ``fxai``, ``torch``, ``model_fn, params`` (a small CNN in eval mode with
blocks ``layer1`` … ``layer4`` and 5 classes), ``x`` (a ``[2, 3, 32, 32]`` batch), ``masks`` (``[2, 32, 32]``
bool), ``vit_fn, vit_params`` (a small torchvision ViT, 8×8 patches), maps of ``x`` (``amap``: the gradient for the top-1 classes; ``g``: for class 3; ``ig``; ``cam``: Grad-CAM
``[2, 32, 32]``), and the module's own names. Examples that need files on disk (dataset loaders) are marked
``+SKIP``; their loading is tested on files the tests write.
"""

from __future__ import annotations

import doctest
import inspect
import sys

import pytest
import torch
import torchvision
from torch import nn

import fxai
from fxai import data, metrics, postprocess, registry, viz
from fxai.app import evaluate, loading
from fxai._core import discovery, docs, functional, layers, targets
from fxai.rules import relu as rules
from fxai.attribution import cam_driver, cam_variants, features, integrated, paths, transformers, xrai
from fxai.rules import attention
from fxai.metrics import registry as metric_registry

MODULES = [fxai, metrics, postprocess, viz, registry, metric_registry, data, loading, evaluate, fxai._core.grids,
           cam_driver, cam_variants, integrated, features, discovery, docs, functional, layers, rules, targets, paths,
           xrai, transformers, attention, sys.modules["fxai.metrics.pic"]]


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1, self.layer2 = _Block(3, 8, 1), _Block(8, 16, 2)
        self.layer3, self.layer4 = _Block(16, 16, 1), _Block(16, 32, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.pool(self.layer4(self.layer3(self.layer2(self.layer1(x))))).flatten(1))


def _examples():
    seen, found = set(), []
    for module in MODULES:
        names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        objs = [(f"{module.__name__}", module)] + [(f"{module.__name__}.{n}", getattr(module, n)) for n in names]
        for qualname, obj in objs:
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj) or callable(obj)):
                continue
            if inspect.ismodule(obj) and obj is not module:
                continue
            if not (getattr(obj, "__module__", None) or getattr(obj, "__name__", "")).startswith("fxai"):
                continue  # names a module imported from elsewhere
            doc = inspect.getdoc(obj) or ""
            if ">>>" not in doc or id(obj) in seen:
                continue
            seen.add(id(obj))
            found.append((qualname, obj, doc))
    return found


EXAMPLES = _examples()


@pytest.fixture
def namespace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model_fn, params = fxai.functional(_Net().eval())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 8:20, 10:24] = True
    maps = {"amap": fxai.gradient(model_fn, params, x), "g": fxai.gradient(model_fn, params, x, 3),
            "ig": fxai.integrated_gradients(model_fn, params, x, 3, steps=8),
            "cam": fxai.grad_cam(model_fn, params, x, 3, layer="layer4")}
    torch.manual_seed(0)
    vit_fn, vit_params = fxai.functional(torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5).eval())
    return {"fxai": fxai, "torch": torch, "model_fn": model_fn, "params": params, "x": x, "masks": masks,
            "vit_fn": vit_fn, "vit_params": vit_params,
            "registry": registry, "metrics": metrics, **maps}


def test_there_are_examples():
    assert len(EXAMPLES) > 60


@pytest.mark.parametrize("qualname, obj, doc", EXAMPLES, ids=[q for q, _, _ in EXAMPLES])
def test_example_runs(qualname, obj, doc, namespace):
    module = inspect.getmodule(obj) or fxai
    globs = {**vars(module), **namespace}
    test = doctest.DocTestParser().get_doctest(doc, globs, qualname, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)
