"""Layer access without persistent hooks: a layer's activation and the gradient at it.

A zero ``delta`` is added to the layer's output inside the forward (a tap, see
:mod:`fxai._core.taps`); the gradient of the scores w.r.t. ``delta`` is the
gradient w.r.t. the activation (the ``perturb`` trick of Flax). This module
resolves layer names, finds the default layer, runs taps in chunks and reads
layer outputs as spatial grids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .batching import _cat, backward, detached, needs_graph, plain_autograd, row_chunks, score_gradients
from .functional import FunctionalModel
from .targets import Target, check_logits
from .taps import module_tap


class SplitModel:
    """A pure model given as two halves: ``head(params, features(params, x))``.

    Its one layer, named ``"features"``, is the output of ``features``: the
    way to use layer methods (the CAM family) on a hand-written ``model_fn``
    that has no module to tap. Made by :func:`split`.
    """

    __slots__ = ("features", "head")
    layer = "features"

    def __init__(self, features, head):
        self.features = features
        self.head = head

    def __call__(self, params, x: torch.Tensor) -> torch.Tensor:
        return self.head(params, self.features(params, x))

    def __repr__(self) -> str:
        return f"SplitModel({getattr(self.features, '__name__', 'features')}, {getattr(self.head, '__name__', 'head')})"


def split(features, head) -> SplitModel:
    """A ``model_fn`` from two pure halves, whose layer ``"features"`` is the output of ``features``.

    ``model_fn(params, x) = head(params, features(params, x))``: both halves
    take the same ``params``. Layer methods called on it with ``layer=None`` (or
    ``"features"``) explain the ``features`` output.

    Example:
        >>> features = lambda p, x: torch.relu(torch.nn.functional.conv2d(x, p["w"]))
        >>> head = lambda p, a: a.mean((2, 3)) @ p["fc"].T
        >>> model_fn = fxai.split(features, head)
        >>> m = fxai.grad_cam(model_fn, params, x, target=0)
    """
    if not callable(features) or not callable(head):
        raise TypeError(f"split(features, head): both must be callables (params, input) -> tensor; "
                        f"got {type(features).__name__} and {type(head).__name__}")
    return SplitModel(features, head)


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
        raise ValueError("layer=None: found no module returning a spatial map [B, C, h, w] before global pooling "
                         "(a token model such as a ViT?); pass layer= explicitly, e.g. the first norm of the last "
                         "block, 'encoder.layers.encoder_layer_11.ln_1' for torchvision's vit_b_16")
    return best


@torch.compiler.disable  # a discovery step that returns Python data: run eagerly, also inside torch.compile
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
        for name, mod in model_fn.skeleton.named_modules():  # the copy that runs, never the user's module
            if name:
                handles.append(mod.register_forward_hook(make(name, mod)))
        _dry_run(model_fn, params, x[:1])
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
            shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
            raise ValueError(f"{name}: unknown layer {n!r}; available layers: {shown}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{name}: a layer is listed twice in {layers!r}")
    return layers


def tapped(model_fn, layers: list[str]):
    """``fn(params, x, deltas=None) -> (logits, activations)``, with ``deltas`` added to the layers' outputs."""
    if isinstance(model_fn, SplitModel):
        def split_fn(params, x, deltas=None):
            act = model_fn.features(params, x)
            if not isinstance(act, torch.Tensor):
                raise TypeError(f"split: features returned {type(act).__name__}, not a tensor")
            return model_fn.head(params, act if deltas is None else act + deltas[0]), [act]

        return split_fn
    return module_tap(model_fn, layers)


def _dry_run(model_fn, params, x: torch.Tensor):
    """``model_fn(params, x)`` on the ``meta`` device (shapes only), or on ``x`` itself if meta fails."""
    meta = {k: torch.empty_like(v, device="meta") for k, v in params.items()}
    try:
        return model_fn(meta, torch.empty_like(x, device="meta"))
    except (NotImplementedError, RuntimeError):
        with torch.no_grad():
            return model_fn(params, x)


def activation_shapes(model_fn, params, x: torch.Tensor, layers: list[str]) -> list[torch.Size]:
    """Shapes of the layers' activations for input ``x``, from a dry run on the ``meta`` device."""
    fn = tapped(model_fn, layers)
    _, acts = _dry_run(lambda p, rows: fn(p, rows), params, x)
    return [a.shape for a in acts]


def layer_gradients(model_fn, params, x: torch.Tensor, target: Target, layers: list[str], *,
                    chunk_size: int | None = None):
    """Activations and target-score gradients at ``layers``: ``(acts, grads, scores)``.

    ``acts[i]`` is ``[B, ...]``; ``grads[i]`` is ``[B, ...]`` or ``[B, K, ...]`` for
    K targets (one forward, K vmapped backwards); ``scores`` is ``[B]`` or ``[B, K]``.
    Differentiable w.r.t. ``params`` and ``x``.
    """
    acts, grads, s, _ = layer_and_input_gradients(model_fn, params, x, target, layers, chunk_size=chunk_size,
                                                  wrt_input=False)
    return acts, grads, s


def layer_and_input_gradients(model_fn, params, x: torch.Tensor, target: Target, layers: list[str], *,
                              chunk_size: int | None = None, wrt_input: bool = True):
    """As :func:`layer_gradients`, plus the gradient w.r.t. ``x`` from the same backward: ``(acts, grads, scores, xgrad)``.

    ``xgrad`` is ``[B, ...]`` or ``[B, K, ...]`` (``None`` when ``wrt_input=False``).
    """
    fn = tapped(model_fn, layers)
    n = len(layers)
    plain = plain_autograd() and not target.multi  # K targets: one vmapped backward, by torch.func
    keep = needs_graph(params, x)
    shapes = None if plain else activation_shapes(model_fn, params, x[:1], layers)
    acts_all, grads_all, xgrads_all, scores_all = [], [], [], []
    for a, b in row_chunks(x.shape[0], chunk_size, target.group):
        rows = x[a:b]
        if plain:  # autograd reaches the activations themselves: no deltas, no dry run for their shapes
            with torch.enable_grad():
                leaf = rows if rows.requires_grad else rows.detach().requires_grad_()
                logits, acts = fn(params, leaf.clone())
                check_logits(logits, rows)
                s_aux = target.scores(logits, a)
                grads = backward(s_aux, [*acts, leaf] if wrt_input else acts, keep=keep)
            if not keep:
                s_aux, acts = detached((s_aux, acts))
        else:
            deltas = tuple(torch.zeros((b - a, *s[1:]), dtype=x.dtype, device=x.device) for s in shapes)

            def score(*inputs, rows=rows, a=a):
                logits, acts = fn(params, inputs[n] if wrt_input else rows, inputs[:n])
                check_logits(logits, rows)
                s = target.scores(logits, a)
                return s, (s, acts)

            grads, _, (s_aux, acts) = score_gradients(score, (*deltas, rows) if wrt_input else deltas,
                                                      also=(params, rows), multi=target.multi)
        acts_all.append(acts)
        grads_all.append(grads[:n])
        xgrads_all.append(grads[n] if wrt_input else None)
        scores_all.append(s_aux)
    acts = [_cat([c[i] for c in acts_all]) for i in range(n)]
    grads = [_cat([c[i] for c in grads_all]) for i in range(n)]
    xgrad = _cat(xgrads_all) if wrt_input else None
    return acts, grads, _cat(scores_all), xgrad


def forward_with_activations(model_fn, params, x: torch.Tensor, layers: list[str]):
    """``(logits, activations)`` of one forward pass (no gradient bookkeeping)."""
    return tapped(model_fn, layers)(params, x)


def _grid_matches(h: int, w: int, size, tol: float = 1.0) -> bool:
    """Whether an ``h x w`` grid has the aspect of an input of ``size`` (within ``tol`` cells of rounding)."""
    big_h, big_w = size
    return h >= 1 and w >= 1 and abs(w - big_w * h / big_h) <= tol


def _token_grid(tokens: int, size) -> tuple[int, int, int] | None:
    """``(dropped, h, w)``: leading tokens to drop (0, or 1 for a class token) and the grid of the rest."""
    big_h, big_w = size
    for tol in (0.0, 1.0):
        for dropped in (0, 1):
            n = tokens - dropped
            if n < 1:
                continue
            h = max(1, round((n * big_h / big_w) ** 0.5))
            for cand in (h, h - 1, h + 1):
                if cand >= 1 and n % cand == 0 and _grid_matches(cand, n // cand, size, tol):
                    return dropped, cand, n // cand
    return None


def to_grid(activation: torch.Tensor, reshape=None, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A layer's activation (or gradient) as a spatial grid ``[N, C, h, w]``.

    - ``reshape`` given: ``reshape(activation)``, which must return ``[N, C, h, w]``.
    - ``[N, C, h, w]`` is returned as is; ``[N, h, w, C]`` (channels last, e.g. Swin)
      is permuted to ``[N, C, h, w]`` when only that reading has the aspect of the
      input (``size = (H, W)``, square if not given); a tie reads as channels first.
    - ``[N, T, D]`` tokens (vision transformers): the grid is inferred from ``T``
      with the input's aspect, dropping one leading class token when ``T - 1``
      tokens make the grid (ViT); ``[N, D, h, w]`` is returned.

    Apply the same call to activations and their gradients: the choice depends
    only on the shape. Pass ``reshape=`` when the layout is ambiguous (extra
    distillation/register tokens, sequence-first layouts).

    Example:
        >>> to_grid(torch.zeros(2, 1 + 49, 768)).shape   # ViT-B/16 at 112x112
        torch.Size([2, 768, 7, 7])
    """
    size = (1, 1) if size is None else tuple(size)
    if reshape is not None:
        out = reshape(activation)
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"reshape must return a grid [N, C, h, w], got {got}")
        return out
    if activation.ndim == 4:
        _, a, b, c = activation.shape
        for tol in (0.0, 1.0):
            nhwc, nchw = _grid_matches(a, b, size, tol), _grid_matches(b, c, size, tol)
            if nhwc != nchw:
                return activation.permute(0, 3, 1, 2) if nhwc else activation
        return activation
    if activation.ndim == 3:
        n, tokens, dim = activation.shape
        grid = _token_grid(tokens, size)
        if grid is None:
            raise ValueError(f"cannot read {tokens} tokens of a layer output {tuple(activation.shape)} as a spatial "
                             f"grid for an input of size {size}; pass reshape= (a callable returning [N, C, h, w])")
        dropped, h, w = grid
        return activation[:, dropped:, :].reshape(n, h, w, dim).permute(0, 3, 1, 2)
    raise ValueError(f"a layer output of shape {tuple(activation.shape)} is not a spatial map; expected [N, C, h, w], "
                     "[N, h, w, C] or tokens [N, T, D], or pass reshape= (a callable returning [N, C, h, w])")
