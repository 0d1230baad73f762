"""AttnLRP against LXT 2.1 (its efficient gradient × input rules, LRP-0 on linear layers) on torchvision, timm
(DeiT) and HuggingFace ViTs with random weights, in both attention variants; conservation; refusals.

LXT's ``import lxt.efficient`` imports its HuggingFace patches, which fail on transformers 5: its rule
functions are loaded from ``lxt/efficient/rules.py`` directly, and applied here to a copy of each model the
way LXT's patches apply them (LayerNorm with the std detached, GELU by the identity rule, the gradient to
``q, k`` divided by 4 and to ``v`` by 2, or stopped at ``q, k`` for CP-LRP).
"""

from __future__ import annotations

import copy
import importlib.util
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_cnn, make_tiny_vit
from torch import nn

import fxai
from fxai.rules import lrp as rules

X64 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
TARGET = torch.tensor([1, 3])


def _lxt():
    spec = importlib.util.find_spec("lxt")
    if spec is None:
        pytest.skip("lxt is not installed")
    path = spec.submodule_search_locations[0] + "/efficient/rules.py"
    rules_spec = importlib.util.spec_from_file_location("lxt_efficient_rules", path)
    module = importlib.util.module_from_spec(rules_spec)
    rules_spec.loader.exec_module(module)
    return module


def _split_grads(lxt, q, k, v, variant):
    if variant == "cp":
        return lxt.stop_gradient(q), lxt.stop_gradient(k), v
    return lxt.divide_gradient(q, 4), lxt.divide_gradient(k, 4), lxt.divide_gradient(v, 2)


def lxt_patched(model, variant):
    """A copy of ``model`` with LXT's rules, as its patches for torchvision's ViT and HF attention apply them."""
    lxt = _lxt()
    model = copy.deepcopy(model)

    def layer_norm(self, x):  # lxt.efficient.patches.layer_norm_forward
        mean = x.mean(dim=-1, keepdim=True)
        std = (((x - mean) ** 2).mean(dim=-1, keepdim=True) + self.eps).sqrt()
        return (x - mean) / lxt.stop_gradient(std) * self.weight + self.bias

    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.forward = types.MethodType(layer_norm, m)
        elif isinstance(m, nn.GELU):
            m.forward = (lambda orig: lambda x: lxt.identity_rule_implicit(orig, x))(m.forward)
        elif isinstance(m, nn.MultiheadAttention):  # cp_multi_head_attention_forward, and its uniform analogue
            m.forward = (lambda orig: lambda q, k, v, *a, **kw: orig(*_split_grads(lxt, q, k, v, variant), *a, **kw))(
                m.forward)
        elif type(m).__name__ == "Attention" and hasattr(m, "qkv"):  # timm: the same at q, k, v
            def attend(self, x, attn_mask=None, **_):
                b, n, c = x.shape
                q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
                o = F.scaled_dot_product_attention(*_split_grads(lxt, q, k, v, variant))
                return self.proj(o.transpose(1, 2).reshape(b, n, c))
            m.forward = types.MethodType(attend, m)
    return model


def lxt_relevance(model, x, target, variant):
    model = lxt_patched(model, variant)
    x = x.clone().requires_grad_()
    out = model(x)
    out = getattr(out, "logits", out)
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)
    return (x * g).detach()


def _deit():
    import timm
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", img_size=16, patch_size=4, depth=2, num_classes=5)


def _timm():
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=5,
                             reg_tokens=4)


MODELS = {"torchvision": make_tiny_vit, "deit": _deit, "timm-registers": _timm}


def _assert_rel(got, ref, rtol):
    err = float((got - ref).abs().max() / ref.abs().max())
    assert err < rtol, err


@pytest.mark.parametrize("variant", ["uniform", "cp"])
@pytest.mark.parametrize("name", list(MODELS))
def test_attnlrp_equals_lxt(name, variant):
    model = MODELS[name]().double().eval()
    model_fn, params = fxai.functional(model)
    got = fxai.attnlrp(model_fn, params, X64, TARGET, variant=variant)
    _assert_rel(got, lxt_relevance(model, X64, TARGET, variant), 1e-5)
    by_name = fxai.lrp(model_fn, params, X64, TARGET, composite="attnlrp" if variant == "uniform" else "cp_lrp")
    torch.testing.assert_close(by_name, got, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["uniform", "cp"])
def test_attnlrp_equals_lxt_on_huggingface(variant, monkeypatch):
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit import modeling_vit
    lxt = _lxt()
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, num_hidden_layers=2, num_attention_heads=2, hidden_size=16,
                    intermediate_size=32, num_labels=5, attn_implementation="sdpa", hidden_act="gelu")
    model = ViTForImageClassification(cfg).double().eval()
    model_fn, params = fxai.functional(model)
    got = fxai.attnlrp(model_fn, params, X64, TARGET, variant=variant)
    sdpa = modeling_vit.ALL_ATTENTION_FUNCTIONS["sdpa"]

    def wrapped(module, q, k, v, *args, **kwargs):  # lxt.efficient.patches.wrap_attention_forward
        return sdpa(module, *_split_grads(lxt, q, k, v, variant), *args, **kwargs)

    monkeypatch.setitem(modeling_vit.ALL_ATTENTION_FUNCTIONS, "sdpa", wrapped)
    for m in model.modules():  # HF's GELUActivation: LXT's identity rule on its forward
        if type(m).__name__ == "GELUActivation":
            m.forward = (lambda orig: lambda x: lxt.identity_rule_implicit(orig, x))(m.forward)
    _assert_rel(got, lxt_relevance(model, X64, TARGET, variant), 1e-5)


def _without_biases(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "pos_embedding" in name:
                p.zero_()
    return model


@pytest.mark.parametrize("composite", [rules.cp_lrp(), rules.cp_lrp(gamma=0.25),
                                       rules.cp_lrp(gamma={"encoder.layers.encoder_layer_1.mlp": 0.5})],
                         ids=["cp", "cp-gamma", "cp-gamma-by-name"])
def test_relevance_is_conserved_without_biases(composite):
    # No biases, a zero class token and position embedding: every rule on the path conserves relevance (the
    # values in CP-LRP's attention, LayerNorm's linear map, the identity on GELU, LRP-0/γ, residual additions).
    model_fn, params = fxai.functional(_without_biases(make_tiny_vit().double()))
    r, s = fxai.lrp(model_fn, params, X64, TARGET, composite=composite, return_scores=True)
    torch.testing.assert_close(r.sum((1, 2, 3)), s, rtol=1e-8, atol=1e-10)
    # the uniform rule's softmax rule does not conserve: relevance leaks there (the paper's bias term)
    r2 = fxai.attnlrp(model_fn, params, X64, TARGET)
    assert not torch.allclose(r2.sum((1, 2, 3)), s, rtol=1e-3)


def test_attnlrp_is_differentiable_wrt_params_by_autograd_and_torch_func():
    model_fn, params = fxai.functional(make_tiny_vit().double())
    name = "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"

    def loss(w):
        return fxai.attnlrp(model_fn, {**params, name: w}, X64, TARGET).square().sum()

    g = torch.func.grad(loss)(params[name])
    leaf = params[name].clone().requires_grad_()
    (a,) = torch.autograd.grad(loss(leaf), leaf)
    torch.testing.assert_close(a, g, rtol=1e-6, atol=1e-12)
    assert g.abs().sum() > 0


def test_the_eager_attention_path_is_refused():
    model = _timm()
    for blk in model.blocks:
        blk.attn.fused_attn = False
    model_fn, params = fxai.functional(model.eval())
    with pytest.raises(ValueError, match="unfused.*fused_attn = True"):
        fxai.attnlrp(model_fn, params, X64.float(), TARGET)


def test_bad_options_are_refused():
    model_fn, params = fxai.functional(make_tiny_cnn())
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="variant must be 'uniform' or 'cp'"):
        fxai.attnlrp(model_fn, params, x, variant="cp-lrp")
    with pytest.raises(TypeError, match="gamma must be None, a number or a mapping"):
        fxai.attnlrp(model_fn, params, x, gamma="0.25")
    with pytest.raises(ValueError, match="'block9' is neither a layer kind"):
        fxai.attnlrp(model_fn, params, x, gamma={"block9": 0.25})
    with pytest.raises(TypeError, match=r"composite\['attention'\] must be AttentionUniform\(\) or AttentionCP"):
        fxai.lrp(model_fn, params, x, composite={"attention": rules.Pass()})


class _NormNet(nn.Module):
    def __init__(self, norm):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.norm, self.fc2 = nn.Linear(12, 8), norm, nn.Linear(8, 3)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.fc2(F.gelu(self.norm(self.fc1(x.flatten(1)))))


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_norms_with_their_scale_constant_equal_lxt(kind):
    lxt = _lxt()
    model = _NormNet(nn.LayerNorm(8) if kind == "layer_norm" else nn.RMSNorm(8, eps=1e-6)).double().eval()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model_fn, params = fxai.functional(model)
    got = fxai.attnlrp(model_fn, params, x, 0)
    ref = copy.deepcopy(model)
    if kind == "layer_norm":
        ref = lxt_patched(ref, "uniform")
    else:  # lxt.efficient.patches.rms_norm_forward
        norm = ref.norm
        norm.forward = lambda h: norm.weight * (h * lxt.stop_gradient(torch.rsqrt(h.pow(2).mean(-1, keepdim=True)
                                                                                    + norm.eps)))
    gelu = F.gelu
    ref.forward = lambda t: ref.fc2(lxt.identity_rule_implicit(gelu, ref.norm(ref.fc1(t.flatten(1)))))
    xs = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(ref(xs)[:, 0].sum(), xs)
    _assert_rel(got, (xs * g).detach(), 1e-6)
