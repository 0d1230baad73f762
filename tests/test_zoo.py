"""Model zoos: timm names and HuggingFace folders in ``fxai explain --model``, their own preprocessing checked
against timm's transform and the HuggingFace image processor, all with random weights and no network."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fxai
from fxai.app import cli, loading, zoo

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def png(tmp_path):
    """A real 8-bit RGB PNG, 40×52 (not square: resize and crop both matter)."""
    path = tmp_path / "img.png"
    pixels = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _ours(path, prep: zoo.Preprocessing):
    """The CLI's input for ``path`` under ``prep``: load_images, then ``(x - mean) / std``."""
    ((_, raw),) = loading.load_images([str(path)], 3, False, (prep.resize, prep.crop), prep.interpolation)
    mean, std = torch.tensor(prep.mean).view(3, 1, 1), torch.tensor(prep.std).view(3, 1, 1)
    return ((raw - mean) / std)[None]


# ---------------------------------------------------------------- timm


@pytest.mark.parametrize("name", ["resnet18", "test_vit", "convnext_atto"])
def test_timm_preprocessing_equals_timms_transform(name, png):
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config
    model = timm.create_model(name, pretrained=False)
    prep = zoo.timm_preprocessing(model)
    want = create_transform(**resolve_data_config({}, model=model))(Image.open(png).convert("RGB"))[None]
    torch.testing.assert_close(_ours(png, prep), want, rtol=0, atol=1e-6)
    if name == "resnet18":  # 224 at crop_pct 0.95, bicubic, ImageNet statistics
        assert prep == zoo.Preprocessing(235, 224, loading.IMAGENET_MEAN, loading.IMAGENET_STD, "bicubic")


def test_timm_cli_with_weights(png, tmp_path, monkeypatch, capsys):
    """``--model timm:test_vit --weights FILE`` (4 classes, not timm's 1000): the map is the gradient at the input
    timm's own evaluation transform makes."""
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=4).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    code = cli.main(["explain", str(png), "--model", "timm:test_vit", "--weights", "w.pt", "--method",
                     "gradient,grad_cam", "--out", "out", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert "CAM layer: 'blocks.5.norm1'" in capsys.readouterr().out
    x = create_transform(**resolve_data_config({}, model=model))(Image.open(png).convert("RGB"))[None]
    model_fn, params = fxai.functional(model)
    got = torch.load(tmp_path / "out" / "img_gradient.pt")
    torch.testing.assert_close(got, fxai.gradient(model_fn, params, x)[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.load(tmp_path / "out" / "img_grad_cam.pt"), fxai.grad_cam(model_fn, params, x)[0],
                               rtol=1e-5, atol=1e-7)


def test_timm_errors(monkeypatch):
    pytest.importorskip("timm")
    with pytest.raises(loading.UsageError, match=r"timm has no model 'vit_tiny' \(did you mean vit_tiny_"):
        zoo.load_model("timm:vit_tiny")
    with pytest.raises(loading.UsageError, match=r"give a timm model name, e.g. timm:resnet18"):
        zoo.load_model("timm:")
    timm = sys.modules["timm"]

    def offline_create(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return original(name, pretrained=pretrained, **kw)

    original = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline_create)
    with pytest.raises(loading.UsageError, match=r"cannot get timm's pretrained weights of resnet18 \(OSError: We "
                                                 r"couldn't connect.*if offline, .* pass it with --weights FILE"):
        zoo.load_model("timm:resnet18", pretrained=True)
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(loading.UsageError, match=r"needs timm, which is not installed: pip install timm"):
        zoo.load_model("timm:resnet18")


# ---------------------------------------------------------------- HuggingFace


def _hf_folder(path, processor=None):
    """A tiny random-weight ViT classifier (32×32, patches of 8, three named classes) saved with its processor."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32,
                                 num_attention_heads=2, intermediate_size=64, num_labels=3,
                                 id2label={0: "cat", 1: "dog", 2: "fox"}, label2id={"cat": 0, "dog": 1, "fox": 2})
    model = transformers.ViTForImageClassification(cfg).eval()
    model.save_pretrained(path)
    processor = processor or transformers.ViTImageProcessor(size={"height": 32, "width": 32},
                                                            image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3])
    processor.save_pretrained(path)
    return model, processor


@pytest.mark.slow
def test_hf_folder_cli_subprocess(png, tmp_path):
    """``fxai explain`` as a real process on a real PNG and a from_pretrained folder: the model's ModelOutput is
    read for its logits, the processor's resize and statistics are used, the class names come from id2label."""
    model, processor = _hf_folder(tmp_path / "vit")
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "fxai", "explain", str(png), "--model", f"hf:{tmp_path / 'vit'}",
                           "--method", "gradient,grad_cam", "--out", str(tmp_path / "out"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "img.png: " in proc.stdout and " cat (" in proc.stdout and "dog" in proc.stdout
    assert "CAM layer: 'vit.layers.1.layernorm_before'" in proc.stdout or "layernorm_before" in proc.stdout
    # the processor's input and ours differ by at most one 8-bit level (see the next test); the map is ours exactly
    x = _ours(png, zoo.hf_preprocessing(processor))
    by_processor = processor(images=Image.open(png).convert("RGB"), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(x, by_processor, rtol=0, atol=1.01 / 255 / 0.2)
    model_fn, params = fxai.functional(model)
    got = torch.load(tmp_path / "out" / "img_gradient.pt")
    torch.testing.assert_close(got, fxai.gradient(model_fn, params, x)[0], rtol=1e-5, atol=1e-8)
    assert not (tmp_path / "hf-home").exists()  # nothing fetched into a cache


def test_hf_preprocessing_equals_the_processor(png, tmp_path):
    transformers = pytest.importorskip("transformers")
    processors = [
        transformers.ViTImageProcessor(size={"height": 24, "width": 20}, image_mean=[0.4, 0.5, 0.6],
                                       image_std=[0.2, 0.25, 0.3]),
        transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.8),
        transformers.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 28, "width": 28}),
        transformers.ViTImageProcessor(size={"height": 24, "width": 24}, do_normalize=False, rescale_factor=1 / 127.5),
    ]
    for processor in processors:
        prep = zoo.hf_preprocessing(processor)
        want = processor(images=Image.open(png).convert("RGB"), return_tensors="pt")["pixel_values"]
        got = _ours(png, prep)
        assert got.shape == want.shape, type(processor).__name__
        # PIL resizes 8-bit images in both; HuggingFace rescales after resizing, so they may differ by one level
        torch.testing.assert_close(got, want, rtol=0, atol=1.01 / 255 / min(prep.std), msg=type(processor).__name__)
    assert zoo.hf_preprocessing(processors[1]) == zoo.Preprocessing(40, 32, (0.5,) * 3, (0.5,) * 3, "bicubic")


def _hf_tiny(kind):
    """A tiny random-weight HuggingFace classifier, the default CAM layer it should get, and the reshape
    pytorch-grad-cam documents for it (ViT: drop the class token; Swin: tokens to a grid)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "vit":
        cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32,
                                     num_attention_heads=2, intermediate_size=64, num_labels=3)
        model = transformers.ViTForImageClassification(cfg)
        return model, ".1.layernorm_before", lambda t: t[:, 1:, :].unflatten(1, (4, 4)).permute(0, 3, 1, 2)
    if kind == "swin":
        cfg = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 1],
                                      window_size=4, num_labels=3)
        model = transformers.SwinForImageClassification(cfg)
        return model, "layers.1.blocks.0.layernorm_before", lambda t: t.unflatten(1, (4, 4)).permute(0, 3, 1, 2)
    cfg = transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3)
    return transformers.ConvNextForImageClassification(cfg), "encoder.stages.1", None


@pytest.mark.parametrize("kind", ["vit", "swin", "convnext"])
def test_hf_models_with_grad_cam_against_pytorch_grad_cam(kind):
    """HuggingFace classifiers (ModelOutput; class token, Swin tokens, ConvNeXt maps) with Grad-CAM at the default
    layer, against pytorch-grad-cam with its documented reshape on a wrapper returning the logits."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from fxai._core.discovery import resolve_layers
    model, suffix, reshape = _hf_tiny(kind)
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model_fn, params = fxai.functional(model)
    (layer,) = resolve_layers(model_fn, None, params=params, x=x)
    assert layer.endswith(suffix)
    got = fxai.grad_cam(model_fn, params, x, 2)

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, inp):
            return self.m(inp).logits

    with GradCAM(model=Logits(model), target_layers=[model.get_submodule(layer)], reshape_transform=reshape) as oracle:
        want = torch.from_numpy(oracle(input_tensor=x.clone(), targets=[ClassifierOutputTarget(2)] * 2))
    assert float(got.amax()) > 0
    torch.testing.assert_close(fxai.postprocess.normalize(got), want, rtol=1e-5, atol=2e-5)


def test_hf_errors(tmp_path):
    with pytest.raises(loading.UsageError, match=r"not a HuggingFace model folder \(no config.json"):
        zoo.load_model(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text("{}")
    assert zoo.is_zoo_name(str(tmp_path))
    with pytest.raises(loading.UsageError, match="a HuggingFace folder holds its own weights; drop --pretrained"):
        zoo.load_model(str(tmp_path), pretrained=True)
    pytest.importorskip("transformers")
    with pytest.raises(loading.UsageError, match=r"cannot load an image classifier from"):
        zoo.load_model(str(tmp_path))
