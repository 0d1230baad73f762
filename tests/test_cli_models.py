"""What ``fxai explain`` says about the model it explains: random weights (said, and drawn from ``--seed``),
maps that are identically zero, ties between classes, and model files that describe their own network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fxai.app import cli, demo
from fxai.app.explain_notes import RANDOM_WEIGHTS
from fxai.roar import described

ZERO_HEAD = '''
from torch import nn


def zero_head():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 5))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def small():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 7))
'''


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "a.png")
    (root / "nets.py").write_text(ZERO_HEAD)
    return root


def _explain(root, capsys, *extra):
    code = cli.main(["explain", str(root / "a.png"), "--resize", "16", "16", "--device", "cpu", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out + out.err


def test_random_weights_are_said_and_drawn_from_the_seed(root, capsys):
    model = f"{root / 'nets.py'}:small"
    a = _explain(root, capsys, "--model", model, "--method", "gradient", "--out", str(root / "r1"), "--seed", "3")
    b = _explain(root, capsys, "--model", model, "--method", "gradient", "--out", str(root / "r2"), "--seed", "3")
    c = _explain(root, capsys, "--model", model, "--method", "gradient", "--out", str(root / "r3"), "--seed", "4")
    assert RANDOM_WEIGHTS in a
    line = [ln for ln in a.splitlines() if ln.startswith(str(root / "a.png"))]
    assert line == [ln for ln in b.splitlines() if ln.startswith(str(root / "a.png"))]    # same ranking, same p
    assert line != [ln for ln in c.splitlines() if ln.startswith(str(root / "a.png"))]
    assert torch.equal(torch.load(root / "r1" / "a_gradient.pt"), torch.load(root / "r2" / "a_gradient.pt"))


def test_a_zero_head_gives_zero_maps_reported_and_ties_explain_the_lowest_index(root, capsys):
    text = _explain(root, capsys, "--model", f"{root / 'nets.py'}:zero_head", "--method", "gradient,grad_cam",
                    "--out", str(root / "z"), "--target", "top2", "--layer", "0")
    ranking = next(ln for ln in text.splitlines() if ln.startswith(str(root / "a.png")))
    assert ranking.endswith("class 0 (0.200), class 1 (0.200), class 2 (0.200), class 3 (0.200), class 4 (0.200)")
    assert "ties:" in text and "the lowest index is explained" in text
    for method in ("gradient", "grad_cam"):
        assert f"a: {method}: the map is identically zero for class 0, class 1" in text
    assert "zero-initialised head" in text
    assert sorted(p.name for p in (root / "z").glob("a_gradient_c*.png")) == ["a_gradient_c0.png",
                                                                               "a_gradient_c1.png"]


def test_the_demo_checkpoint_rebuilds_itself_with_its_class_names(root, capsys, tmp_path):
    config = demo.DemoConfig(size=16, width=6, steps=2, batch=8, save_every=1)
    demo.train(config, seed=0, device=torch.device("cpu"), checkpoint=str(tmp_path / "model.pt"), progress=False,
               log=lambda _: None)
    for flag in ("--weights", "--model"):
        text = _explain(root, capsys, flag, str(tmp_path / "model.pt"), "--method", "gradient",
                        "--out", str(tmp_path / flag.strip("-")))
        assert RANDOM_WEIGHTS not in text
        ranking = next(ln for ln in text.splitlines() if ln.startswith(str(root / "a.png")))
        assert sum(name in ranking for name in ("square", "disc", "triangle", "cross")) == 4


def test_roar_model_files_carry_their_description(tmp_path):
    from safetensors.torch import save_file

    from fxai.roar.nets import build

    net = build("resnet8", 3, width=4)
    desc = described.description("resnet8", classes=3, width=4, size=12, class_names=["a", "b", "c"])
    save_file(net.state_dict(), tmp_path / "m.safetensors", metadata=described.safetensors_metadata(desc))
    found, state = described.read(str(tmp_path / "m.safetensors"))
    assert found == json.loads(json.dumps(desc))
    again = described.rebuild(found, state)
    x = torch.rand(2, 3, 12, 12)
    assert torch.equal(again(x), net.eval()(x))
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    assert described.read(str(tmp_path / "plain.pt")) is None
