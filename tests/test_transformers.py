"""Vision transformers: attention made explicit (equal to the fused calls), attention rollout and
gradient-weighted attention against direct transcriptions of their papers' formulas, refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import make_tiny_cnn, make_tiny_vit
from torch import nn

import fxai
from fxai.rules.attention import AttentionMode, NoAttentionError

X64 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


# ---------------------------------------------------------------- a ViT whose attention is written by hand


class HandBlock(nn.Module):
    def __init__(self, dim, heads, fused, store):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.heads, self.fused, self.store = heads, fused, store

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.exp(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads))
            a = a / a.sum(-1, keepdim=True)  # softmax by hand: no softmax call for the mode to catch
            a.retain_grad()
            self.store.append(a)
            o = a @ v
        x = x + self.proj(o.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class HandViT(nn.Module):
    """4×4 patches of 16×16 inputs, a class token (``prefix=1``) or class + distillation tokens (``prefix=2``),
    3 blocks of 2 heads, the class token read out."""

    def __init__(self, fused: bool, prefix: int = 1, dim: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.store = []
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.tokens = nn.Parameter(torch.randn(1, prefix, dim))
        self.pos = nn.Parameter(torch.randn(1, 16 + prefix, dim) * 0.5)
        self.blocks = nn.ModuleList(HandBlock(dim, 2, fused, self.store) for _ in range(3))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.tokens.expand(x.shape[0], -1, -1), t], 1) + self.pos
        for blk in self.blocks:
            t = blk(t)
        return self.head(t[:, 0])


def _grid(row, prefix=1):
    return F.interpolate(row[:, prefix:].reshape(-1, 1, 4, 4), size=(16, 16), mode="bilinear",
                         align_corners=False)[:, 0]


def test_rollout_is_the_papers_formula():
    hand = HandViT(fused=False).double().eval()
    hand(X64)
    attn = [a.detach() for a in hand.store]
    model_fn, params = fxai.functional(HandViT(fused=True).double().eval())
    for fusion, reduce in (("mean", lambda a: a.mean(1)), ("max", lambda a: a.amax(1)),
                           ("min", lambda a: a.amin(1))):
        for start in (0, 1):
            rollout = torch.eye(17, dtype=torch.float64).expand(2, 17, 17)
            for a in attn[start:]:
                a = reduce(a) + torch.eye(17, dtype=torch.float64)
                rollout = (a / a.sum(-1, keepdim=True)) @ rollout
            got = fxai.attention_rollout(model_fn, params, X64, head_fusion=fusion, start_layer=start)
            torch.testing.assert_close(got, _grid(rollout[:, 0]), rtol=1e-6, atol=1e-9)


def test_rollout_discard_ratio_drops_the_lowest_attentions():
    hand = HandViT(fused=False).double().eval()
    hand(X64)
    rollout = torch.eye(17, dtype=torch.float64).expand(2, 17, 17)
    for a in hand.store:
        a = a.detach().mean(1).flatten(1)
        low = a.argsort(-1)[:, :int(17 * 17 * 0.3)]
        for i in range(2):
            drop = low[i][low[i] != 0]
            a[i, drop] = 0
        a = a.view(2, 17, 17) + torch.eye(17, dtype=torch.float64)
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    model_fn, params = fxai.functional(HandViT(fused=True).double().eval())
    got = fxai.attention_rollout(model_fn, params, X64, discard_ratio=0.3)
    torch.testing.assert_close(got, _grid(rollout[:, 0]), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("prefix", [1, 2])
def test_chefer_is_the_papers_formula(prefix):
    hand = HandViT(fused=False, prefix=prefix).double().eval()
    target = torch.tensor([1, 3])
    hand(X64).gather(1, target[:, None]).sum().backward()
    relevance = torch.eye(16 + prefix, dtype=torch.float64).expand(2, -1, -1)
    for a in hand.store:
        cam = (a.grad * a).clamp(min=0).mean(1).detach()
        relevance = relevance + cam @ relevance
    model_fn, params = fxai.functional(HandViT(fused=True, prefix=prefix).double().eval())
    got = fxai.chefer(model_fn, params, X64, target)
    torch.testing.assert_close(got, _grid(relevance[:, 0], prefix), rtol=1e-6, atol=1e-9)
    # K targets at once (one forward, vmapped backwards) equal one target at a time
    both = fxai.chefer(model_fn, params, X64, torch.tensor([[1, 0], [3, 2]]))
    torch.testing.assert_close(both[:, 0], got, rtol=1e-9, atol=1e-12)
    # target-independent rollout against class-specific Chefer
    assert not torch.allclose(both[:, 0], both[:, 1])


def test_mean_token_reading_without_a_class_token():
    hand = HandViT(fused=True, prefix=1).double().eval()
    model_fn, params = fxai.functional(hand)
    with AttentionMode() as mode:
        hand(X64)
    a = mode.probs[-1].mean(1) + torch.eye(17, dtype=torch.float64)
    a = a / a.sum(-1, keepdim=True)
    got = fxai.attention_rollout(model_fn, params, X64, start_layer=2, token="mean", upsample=False)
    torch.testing.assert_close(got, a[:, 1:, 1:].mean(1).reshape(2, 4, 4), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- attention made explicit, on real ViTs


def _timm(**kw):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=5, **kw)


def _hf(impl):
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, num_hidden_layers=2, num_attention_heads=2, hidden_size=16,
                    intermediate_size=32, num_labels=5, attn_implementation=impl)
    return ViTForImageClassification(cfg)


def _deit():
    import timm
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", img_size=16, patch_size=4, depth=2, num_classes=5)


def _unfused_timm():
    m = _timm()
    for blk in m.blocks:
        blk.attn.fused_attn = False
    return m


VITS = {"torchvision": lambda: make_tiny_vit(), "timm": _timm, "timm-unfused": _unfused_timm,
        "deit": _deit, "timm-registers": lambda: _timm(reg_tokens=4), "hf-sdpa": lambda: _hf("sdpa"),
        "hf-eager": lambda: _hf("eager")}
TOKENS = {"deit": 18, "timm-registers": 21}


@pytest.mark.parametrize("name", list(VITS))
def test_explicit_attention_equals_the_fused_model(name):
    model = VITS[name]().double().eval()
    logits = lambda out: getattr(out, "logits", out)  # noqa: E731
    with torch.no_grad():
        ref = logits(model(X64))
        with AttentionMode() as mode:
            got = logits(model(X64))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    heads = 3 if name == "deit" else 2
    assert [p.shape for p in mode.probs] == [torch.Size([2, heads, TOKENS.get(name, 17), TOKENS.get(name, 17)])] * 2
    torch.testing.assert_close(mode.probs[0].sum(-1), torch.ones_like(mode.probs[0][..., 0]))
    model_fn, params = fxai.functional(model)
    for method in (fxai.attention_rollout, fxai.chefer):
        out = method(model_fn, params, X64)
        assert out.shape == (2, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("masks", ["none", "padding", "float", "bool", "weights"])
def test_multihead_attention_with_masks(masks):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    t = torch.randn(2, 5, 8, dtype=torch.float64)
    pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    am = torch.randn(5, 5, dtype=torch.float64)
    kw = {"none": {}, "padding": {"key_padding_mask": pad}, "float": {"attn_mask": am},
          "bool": {"attn_mask": am > 0.5, "key_padding_mask": pad},
          "weights": {"need_weights": True, "average_attn_weights": False, "key_padding_mask": pad}}[masks]
    kw = {"need_weights": False, **kw}
    ref = mha(t, t, t, **kw)
    with AttentionMode() as mode:
        got = mha(t, t, t, **kw)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    if ref[1] is not None:
        torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=1e-12)
    assert len(mode.probs) == 1


def test_sdpa_masks_causal_and_scale():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(5, 5, generator=g) > 0.3
    mask.fill_diagonal_(True)
    for kw in ({"attn_mask": mask}, {"attn_mask": torch.randn(5, 5, generator=g, dtype=torch.float64)},
               {"is_causal": True}, {"scale": 0.3}):
        with AttentionMode() as mode:
            got = F.scaled_dot_product_attention(q, k, v, **kw)
        torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, **kw), rtol=1e-12, atol=1e-12)
        assert mode.probs[0].shape == (2, 2, 5, 5)


def test_vit_b_16_random_weights():
    model = torchvision.models.vit_b_16(image_size=32).eval()
    model_fn, params = fxai.functional(model)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = fxai.attention_rollout(model_fn, params, x)
    assert out.shape == (1, 32, 32) and torch.isfinite(out).all()


# ---------------------------------------------------------------- refusals


def test_a_cnn_is_refused_with_the_spellings_caught():
    model_fn, params = fxai.functional(make_tiny_cnn())
    x = torch.randn(2, 3, 16, 16)
    for method in (fxai.attention_rollout, fxai.chefer):
        with pytest.raises(NoAttentionError, match="no attention call was caught in TinyCNN.*scaled_dot_product"):
            method(model_fn, params, x)


class MatmulAttention(nn.Module):
    """Attention through torch.bmm and a softmax over a flattened axis: a spelling not caught."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 5)

    def forward(self, x):
        t = x.flatten(2).transpose(1, 2)
        a = torch.bmm(t, t.transpose(1, 2)).flatten(1).softmax(-1).view(t.shape[0], t.shape[1], -1)
        return self.proj(torch.bmm(a, t).mean(1))


def test_an_uncaught_spelling_is_named():
    model_fn, params = fxai.functional(MatmulAttention())
    with pytest.raises(NoAttentionError, match=r"MatmulAttention.*calls torch\.bmm"):
        fxai.attention_rollout(model_fn, params, torch.randn(1, 3, 4, 4))


def test_swin_is_refused():
    torch.manual_seed(0)
    swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                                              window_size=[2, 2], num_classes=5).eval()
    model_fn, params = fxai.functional(swin)
    for method in (fxai.attention_rollout, fxai.chefer):
        with pytest.raises(ValueError, match="windowed.*global attention"):
            method(model_fn, params, torch.randn(1, 3, 16, 16))


def test_bad_options_are_refused():
    model_fn, params = fxai.functional(make_tiny_vit())
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        fxai.attention_rollout(model_fn, params, x, head_fusion="median")
    with pytest.raises(ValueError, match=r"start_layer must be an int in \[0, 2\)"):
        fxai.chefer(model_fn, params, x, start_layer=2)
    with pytest.raises(ValueError, match="discard_ratio"):
        fxai.attention_rollout(model_fn, params, x, discard_ratio=1.0)
    with pytest.raises(ValueError, match="token must be one of"):
        fxai.chefer(model_fn, params, x, token="first")


def test_train_mode_dropout_is_refused():
    model = make_tiny_vit()
    model.encoder.layers[0].self_attention.dropout = 0.1
    model_fn, params = fxai.functional(model.train(), allow_training=True)
    with pytest.raises(ValueError, match="training mode"):
        fxai.attention_rollout(model_fn, params, torch.randn(1, 3, 16, 16))


@pytest.mark.slow
def test_cli_explains_a_timm_vit(tmp_path):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    Image.fromarray((np.random.RandomState(0).rand(64, 80, 3) * 255).astype("uint8")).save(tmp_path / "img.png")
    proc = subprocess.run([sys.executable, "-m", "fxai.app.cli", "explain", "--model", "timm:vit_small_patch16_224",
                           "--method", "attention_rollout,attnlrp", "--out", "out", "img.png"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                            "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert torch.load(tmp_path / "out" / "img_attention_rollout.pt").shape[-2:] == (224, 224)
    assert torch.load(tmp_path / "out" / "img_attnlrp.pt").shape[-3:] == (3, 224, 224)


@pytest.mark.slow
def test_demo_quick_on_a_vit(tmp_path):
    import json
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "fxai.app.cli", "demo", "--quick", "--arch", "vit", "--out", "r",
                           "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "r" / "results.json").read_text())["methods"]
    for name in ("attention_rollout", "chefer", "attnlrp", "grad_cam", "integrated_gradients"):
        assert "scores" in rows[name], (name, rows[name])
    # the model file describes the ViT: it rebuilds as the network that was trained, with its weights
    from fxai.roar import described
    desc, state = described.read(str(tmp_path / "r" / "model-quick.pt"))
    module = described.rebuild(desc, state)
    assert desc["arch"] == "small_vit" and type(module).__name__ == "VisionTransformer"
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())
