"""Which layers a model has: names, the default CAM layer, the modules that run (a dry run on ``meta``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .checks import unknown_name
from .eager import eager
from .functional import FunctionalModel, SplitModel


def layer_names(module: nn.Module) -> list[str]:
    """Dotted names of every submodule of ``module`` (what ``layer=`` accepts)."""
    return [name for name, _ in module.named_modules() if name]


_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)


def default_layer(model_fn, params, x: torch.Tensor) -> str:
    """The layer ``layer=None`` means: the last spatial feature map before the global pooling.

    For a :class:`SplitModel`, ``"features"``. For a module, a dry run (on the
    ``meta`` device) lists the submodules in the order they finish; the layer is
    the last one, before the last adaptive pooling module, that returns a
    ``[B, C, h, w]`` tensor and runs once (the outermost module when several
    return the same tensor): ``layer4`` for ResNets, ``features`` for VGG,
    DenseNet, MobileNet, EfficientNet and ConvNeXt, ``permute`` for Swin.
    Token models (a ViT, whose patch embedding is followed by ``[B, T, D]``
    blocks) have none: pass ``layer=``.
    """
    if isinstance(model_fn, SplitModel):
        return SplitModel.layer
    _check_functional(model_fn, "layer")
    events, calls = _trace(model_fn, params, x)
    pools = [i for i, (_, mod, _) in enumerate(events) if isinstance(mod, _GLOBAL_POOLS)]
    best, tokens_after = None, False
    for name, mod, out in events[:pools[-1] if pools else len(events)]:
        if isinstance(out, torch.Tensor) and out.ndim == 4 and calls[name] == 1:
            best, tokens_after = name, False
        elif isinstance(out, torch.Tensor) and out.ndim == 3:
            tokens_after = True
    if best is None or tokens_after:
        best = _before_last_attention(events, calls)
    if best is None:
        raise ValueError("layer=None: found no module returning a spatial map [B, C, h, w] before global pooling "
                         "(a token model such as a ViT?); pass layer= explicitly, e.g. the first norm of the last "
                         "block, 'encoder.layers.encoder_layer_11.ln_1' for torchvision's vit_b_16")
    return best


def _before_last_attention(events, calls) -> str | None:
    """The last ``[B, T, D]`` module of the last attention's block that finishes before the attention does."""
    attention = [i for i, (_, mod, _) in enumerate(events)
                 if isinstance(mod, nn.MultiheadAttention) or type(mod).__name__.endswith("Attention")]
    if not attention:
        return None
    name = events[attention[-1]][0]
    block = name.rpartition(".")[0]
    for other, _, out in reversed(events[:attention[-1]]):
        inside = other.startswith(block + ".") if block else True
        if inside and not other.startswith(name + ".") and isinstance(out, torch.Tensor) and out.ndim == 3 \
                and calls[other] == 1:
            return other
    return None


@eager  # a discovery step that returns Python data: run eagerly, also inside torch.compile
def _trace(model_fn: FunctionalModel, params, x: torch.Tensor):
    """Dry run of ``x[:1]`` with scoped hooks on every submodule: ``(events, calls)``.

    ``events`` lists ``(name, module, output)`` in the order modules finish; ``calls``
    maps each submodule that ran to its number of calls.
    """
    events, calls, handles = [], {}, []

    def make(name, mod):
        def hook(m, args, out):
            calls[name] = calls.get(name, 0) + 1
            events.append((name, mod, out))
        return hook

    try:
        for name, mod in model_fn.skeleton.named_modules():
            if name:
                handles.append(mod.register_forward_hook(make(name, mod)))
        dry_run(model_fn, params, x[:1])
    finally:
        for h in handles:
            h.remove()
    return events, calls


def trace_modules(model_fn: FunctionalModel, params, x: torch.Tensor) -> dict[str, int]:
    """The submodules that run on ``x`` (a dry run), in the order they first finish, with their call counts."""
    _check_functional(model_fn, "model_fn")
    if isinstance(model_fn, SplitModel):
        return {}
    _, calls = _trace(model_fn, params, x)
    return calls


def _check_functional(model_fn, name: str) -> None:
    if not isinstance(model_fn, (FunctionalModel, SplitModel)):
        raise TypeError(f"{name}= needs a model_fn made by fxai.functional(module) or fxai.split(features, head) "
                        f"(to find the layer); got {type(model_fn).__name__}")


def resolve_layers(model_fn, layer: str | Sequence[str] | None, *, name: str = "layer",
                   params=None, x: torch.Tensor | None = None) -> list[str]:
    """Check ``layer`` (a dotted name or a list of them) against ``model_fn``'s module.

    ``layer=None`` picks :func:`default_layer` (which needs ``params`` and ``x``).
    A :class:`SplitModel` has the one layer ``"features"``.
    """
    _check_functional(model_fn, name)
    if layer is None:
        if params is None or x is None:
            raise TypeError(f"{name} must be a dotted layer name such as 'layer4' or a non-empty list of them; got None")
        return [default_layer(model_fn, params, x)]
    layers = [layer] if isinstance(layer, str) else list(layer)
    if not layers or not all(isinstance(n, str) for n in layers):
        raise TypeError(f"{name} must be a dotted layer name such as 'layer4' or a non-empty list of them; got {layer!r}")
    if isinstance(model_fn, SplitModel):
        for n in layers:
            if n != SplitModel.layer:
                raise ValueError(f"{name}: unknown layer {n!r}; a model_fn made by fxai.split has one layer, "
                                 f"{SplitModel.layer!r}")
        if len(layers) > 1:
            raise ValueError(f"{name}: a model_fn made by fxai.split has one layer; got {layers!r}")
        return layers
    known = dict(model_fn.module.named_modules())
    for n in layers:
        if n not in known or not n:
            names = layer_names(model_fn.module)
            children = [c for c, _ in model_fn.module.named_children()]
            listing = (f"the model's top-level layers: {', '.join(children)} ({len(names)} layers in all, "
                       "dotted names below them)")
            raise ValueError(f"{name}: " + unknown_name("layer", n, names, listing=listing))
    if len(set(layers)) != len(layers):
        raise ValueError(f"{name}: a layer is listed twice in {layers!r}")
    return layers


def dry_run(model_fn, params, x: torch.Tensor):
    """``model_fn(params, x)`` on the ``meta`` device (shapes only), or on ``x`` itself if meta fails."""
    meta = {k: torch.empty_like(v, device="meta") for k, v in params.items()}
    try:
        return model_fn(meta, torch.empty_like(x, device="meta"))
    except (NotImplementedError, RuntimeError):
        with torch.no_grad():
            return model_fn(params, x)
