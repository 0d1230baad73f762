"""``fxai evaluate`` and :func:`fxai.app.evaluate.evaluate`: the table as data, resuming, the command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fxai
from fxai.app import evaluate as E
from fxai.data.synthetic import shapes
from fxai.models import small_cnn


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = small_cnn(4, width=8).eval()
    return fxai.functional(net)


def test_table_equals_the_metrics_called_directly(model, tmp_path):
    model_fn, params = model
    b = shapes(5, seed=1, size=16)
    out = tmp_path / "o"
    result = E.evaluate(model_fn, params, b.images, b.labels, masks=b.masks, methods=["gradient", "grad_cam"],
                        metrics=["sparseness", "relevance_mass", "deletion", "avg_sensitivity"], quick=True,
                        batch_size=2, out=str(out), seed=3)
    assert result["methods"] == ["gradient", "grad_cam", "random"]
    assert result["metrics"]["avg_sensitivity"] == {"family": "robustness", "higher_is_better": False}
    g = fxai.gradient(model_fn, params, b.images, b.labels)
    gini = fxai.metrics.sparseness(g.abs().sum(1)).double()
    cell = result["table"]["gradient"]["sparseness"]
    assert cell["n"] == 5
    np.testing.assert_allclose(cell["mean"], gini.mean().item(), rtol=1e-6)
    np.testing.assert_allclose(cell["sem"], (gini.std() / 5 ** 0.5).item(), rtol=1e-5)
    mass = fxai.metrics.relevance_mass(g, b.masks).double()
    np.testing.assert_allclose(result["table"]["gradient"]["relevance_mass"]["mean"], mass.mean().item(), rtol=1e-6)
    # avg sensitivity per batch of 2 with key seed + batch index and the method's own map
    sens = torch.cat([fxai.metrics.avg_sensitivity(model_fn, params, b.images[a:a + 2], b.labels[a:a + 2],
                                                   g[a:a + 2], method=fxai.gradient, samples=3, key=3 + i)
                      for i, a in enumerate(range(0, 5, 2))]).double()
    np.testing.assert_allclose(result["table"]["gradient"]["avg_sensitivity"]["mean"], sens.mean().item(), rtol=1e-6)
    for m in ("gradient", "grad_cam"):
        for k, c in result["table"][m].items():
            ref, higher = result["table"]["random"][k], result["metrics"][k]["higher_is_better"]
            worse = c["mean"] <= ref["mean"] if higher else c["mean"] >= ref["mean"]
            assert c["no_better_than_random"] == worse
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["scores"]["grad_cam"]["deletion"]) == 5
    assert {"table.md", "scores_complexity.png", "scores_localisation.png", "scores_faithfulness.png",
            "scores_robustness.png"} <= set(os.listdir(out))
    assert "| random |" in (out / "table.md").read_text()

    # resuming: done pairs are read back, not recomputed; a new metric is added
    calls = []
    original = fxai.metrics.registry.METRICS["sparseness"]
    try:
        fxai.metrics.registry.METRICS["sparseness"] = original.__class__(
            "sparseness", lambda a: calls.append(1) or original.fn(a), "complexity", higher_is_better=True)
        again = E.evaluate(model_fn, params, b.images, b.labels, masks=b.masks, methods=["gradient", "grad_cam"],
                           metrics=["sparseness", "relevance_mass", "deletion", "avg_sensitivity", "complexity"],
                           quick=True, batch_size=2, out=str(out), seed=3)
    finally:
        fxai.metrics.registry.METRICS["sparseness"] = original
    assert calls == [] and again["table"]["gradient"]["sparseness"] == cell
    assert "complexity" in again["table"]["random"]
    with pytest.raises(ValueError, match="another evaluation"):
        E.evaluate(model_fn, params, b.images, b.labels, masks=b.masks, methods=["gradient"], metrics=["sparseness"],
                   quick=True, out=str(out), seed=4)
    with pytest.raises(ValueError, match="masks"):
        E.evaluate(model_fn, params, b.images, b.labels, methods=["gradient"], metrics=["mask_auc"])


def _run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fxai.app.cli", "evaluate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_on_an_image_folder_and_resuming(tmp_path):
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\ndef make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),"
        " nn.Linear(16, 3))\n")
    args = ["imgs", "--model", "net.py:make", "--size", "16", "--methods", "gradient,input_x_gradient", "--metrics", "sparseness,deletion,continuity", "--quick", "--batch-size",
            "2", "--device", "cpu", "--out", "o"]
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| gradient |" in proc.stdout and "| random |" in proc.stdout
    first = json.loads((tmp_path / "o" / "results.json").read_text())
    assert len(first["scores"]["input_x_gradient"]["continuity"]) == 3
    assert (tmp_path / "o" / "scores_robustness.png").exists()
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "o" / "results.json").read_text())["scores"] == first["scores"]
    bad = _run(["imgs", "--model", "net.py:make", "--metrics", "mask_auc", "--out", "p"], tmp_path)
    assert bad.returncode == 2 and "masks" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = _run(["--synthetic", "2", "--metrics", "nope", "--out", "p"], tmp_path)
    assert bad.returncode == 2 and "unknown metric 'nope'" in bad.stderr


@pytest.mark.slow
def test_cli_on_the_synthetic_shapes(tmp_path):
    proc = _run(["--synthetic", "3", "--methods", "grad_cam", "--metrics", "mask_auc,focus,top_k_intersection",
                 "--quick", "--out", "s"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = json.loads((tmp_path / "s" / "results.json").read_text())["table"]
    assert set(table) == {"grad_cam", "random"} and table["grad_cam"]["mask_auc"]["n"] == 3


def test_cli_in_process(tmp_path, capsys):
    from fxai.app import cli

    out = str(tmp_path / "s")
    assert cli.main(["evaluate", "--synthetic", "2", "--methods", "gradient", "--metrics", "mask_auc,sparseness",
                     "--quick", "--device", "cpu", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "| gradient |" in text and "mask_auc ↑" in text
    assert cli.main(["evaluate", "--out", out]) == 2
    assert "--synthetic" in capsys.readouterr().err


def test_a_failing_method_is_reported_not_fatal(model):
    from fxai import registry

    def broken(model_fn, params, x, target):
        raise ValueError("this model has no such layer")

    model_fn, params = model
    b = shapes(2, seed=0, size=16)
    result = E.evaluate(model_fn, params, b.images, None, methods=[registry.MethodInfo("broken", broken), "gradient"],
                        metrics=["sparseness"])
    assert "no such layer" in result["errors"]["broken/sparseness"]
    assert result["table"]["broken"] == {} and result["table"]["gradient"]["sparseness"]["n"] == 2
    assert any("broken/sparseness: not scored" in line for line in E.markdown(result))


def test_cli_takes_the_one_spelling_of_methods_and_options(tmp_path, capsys, model):
    """``--method TRANSFORM:METHOD`` and ``--option [METHOD.]NAME=VALUE``, as in explain, roar and extract; the
    options reach the method (IG with 2 steps differs from IG with 8)."""
    from fxai.app import cli

    args = ["evaluate", "--synthetic", "2", "--method", "integrated_gradients,smoothgrad:gradient", "--metrics",
            "sparseness", "--device", "cpu", "--option", "integrated_gradients.steps=2", "--option", "samples=2"]
    assert cli.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert "| smoothgrad(gradient) |" in capsys.readouterr().out
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    assert first["settings"]["options"] == {"integrated_gradients": {"steps": 2}, "samples": 2}
    assert set(first["scores"]) == {"integrated_gradients", "smoothgrad(gradient)", "random"}
    assert cli.main(args[:-4] + ["--option", "integrated_gradients.steps=8", "--out", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert first["scores"]["integrated_gradients"] != second["scores"]["integrated_gradients"]
    assert cli.main(args[:-4] + ["--option", "stepz=2", "--out", str(tmp_path / "c")]) == 2
    assert "did you mean 'steps'" in capsys.readouterr().err
