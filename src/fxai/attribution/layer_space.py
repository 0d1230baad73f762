"""Layers as the attributed input: any method run in a hidden layer's activation space, and layer conductance.

``fxai.at_layer(method, layer)`` turns a method on inputs into the same method on the activation
:math:`a = a_\\ell(x)` of a layer: the model becomes a *head* ``a -> logits`` (the forward from ``x`` with the
layer's output replaced by ``a``, through a tap; paths from ``x`` that bypass the layer, such as residual
branches, still see ``x``), and input-space baselines and references become their activations. So Captum's
LayerGradientXActivation is ``at_layer(input_x_gradient)``, LayerIntegratedGradients
``at_layer(integrated_gradients)``, and ``at_layer(smoothgrad(gradient))`` adds its noise in layer space.

Layer conductance is not a method in layer space: it integrates the layer's gradient along the *input-space*
path, :func:`layer_conductance`.
"""

from __future__ import annotations

import functools
import inspect

import torch

from .._core.batching import auto_chunk, unstack
from .._core import structured
from .._core.checks import as_baseline, check_input, check_positive_int
from .._core.discovery import resolve_layers
from .._core.docs import documented
from .._core.layers import forward_with_activations, layer_gradients, tapped
from .._core.tails import tail
from .._core.targets import Target, TargetLike, as_target
from .integrated import completeness_error, path_rule


def _head(tap):
    """``head(params, (a, x, act)) -> logits``: the forward from ``x`` with the layer's output ``act`` replaced by
    ``a`` (a tap adding ``a - act``); ``x`` and ``act`` are the rows' own input and activation."""
    def head(params, inputs):
        a, x, act = inputs
        logits, _ = tap(params, x.clone(), (a - act,))  # a copy: a model may write into its input
        return logits

    return head


def _one_input(tap, x_row: torch.Tensor, act_row: torch.Tensor):
    """The head for rows ``a [n, ...]`` of one input, for methods that take one tensor ``x`` only."""
    head = _head(tap)
    return lambda params, a: head(params, (a, x_row.expand(a.shape[0], *x_row.shape[1:]), act_row))


def _rows_target(target: Target, rows: slice):
    """The part of a resolved target that concerns ``rows`` of the batch."""
    if target.fn is not None:
        return target.fn
    return target.index[rows] if target.multi else target.index[rows, 0]


def _options_of(method) -> dict:
    try:
        return dict(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return {}


def _cat_maps(parts: list):
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts))
    return torch.cat(parts)


@documented(method="an attribution method ``(model_fn, params, x, target, **options) -> map`` (or a transform "
                   "of one, e.g. ``fxai.smoothgrad(fxai.gradient)``).",
            layer="dotted name of the module whose output is attributed, or ``None`` (the last spatial feature "
                  "map before global pooling, :func:`fxai._core.discovery.default_layer`).")
def at_layer(method, layer: str | None):
    r"""A transform: ``method`` attributing to ``layer``'s output :math:`a = a_\ell(x)` instead of the input.

    .. math:: M_\ell(x) = M\big(h_x,\ a_\ell(x);\ \mathrm{baseline} = a_\ell(b)\big),\quad
              h_x(a) = f\big(x \text{ with } a_\ell \leftarrow a\big)

    The head :math:`h_x` runs the model on ``x`` with the layer's output replaced by ``a``; other
    paths from ``x`` (residual branches around the layer) still see ``x``. When no path bypasses the
    layer, the head is the model's graph after the layer alone (:func:`fxai._core.tails.tail`), and
    nothing before the layer runs again for the method's rows. A ``baseline`` (input
    space, as the method takes it; its default when not given, except through a transform such as
    ``fxai.smoothgrad(m)``, which does not show ``m``'s default: pass it there) and ``references``
    become their activations at the layer, as in Captum's LayerIntegratedGradients (Sundararajan et al., 2017)
    and LayerGradientShap. So LayerGradient is ``at_layer(fxai.gradient, layer)``,
    LayerGradientXActivation ``at_layer(fxai.input_x_gradient, layer)`` and LayerIntegratedGradients
    ``at_layer(fxai.integrated_gradients, layer)``. Otherwise the method gets the structured input
    ``(a, fixed(x), fixed(a))``: ``x`` and the activation ride with their rows through steps, noise
    samples and chunks (:func:`fxai.fixed`). A method without structured inputs runs once per input
    (a callable target then scores the rows of one input). ``chunk_size=None`` is sized from ``x``,
    since every row runs the model from ``x``. ``x`` is one tensor; the layer's output is attributed,
    not its input.

    {args}

    Returns:
        A method ``(model_fn, params, x, target=None, **options) -> map`` whose maps are shaped like the
        layer's activation ``[B, ...]`` (``[B, K, ...]`` for K targets).

    Example:
        >>> lig = fxai.at_layer(fxai.integrated_gradients, "layer3")
        >>> lig(model_fn, params, x, 3, steps=16).shape
        torch.Size([2, 16, 16, 16])
        >>> lgxa = fxai.at_layer(fxai.input_x_gradient, "layer4")(model_fn, params, x, torch.tensor([0, 4]))
    """
    if not callable(method):
        raise TypeError(f"method must be an attribution method (model_fn, params, x, target, **options) -> map, "
                        f"got {type(method).__name__}")
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer must be one dotted layer name such as 'layer3', or None; got {layer!r}")
    accepted = _options_of(method)
    # a transform such as fxai.smoothgrad(m) takes **options and hands them to m
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())

    @functools.wraps(method)
    def layered(model_fn, params, x, target: TargetLike = None, **options):
        check_input(x)
        (name,) = resolve_layers(model_fn, layer, params=params, x=x)
        tap = tapped(model_fn, [name])
        _, (act,) = tap(params, x.clone())
        resolved = as_target(target, x).fixed(model_fn, params, x)
        if "baseline" in accepted or "baseline" in options:
            if "baseline" not in accepted and not forwards:
                raise TypeError(f"baseline: {getattr(method, '__name__', 'method')} takes no baseline")
            default = accepted["baseline"].default if "baseline" in accepted else inspect.Parameter.empty
            raw = options.pop("baseline", 0.0 if default is inspect.Parameter.empty else default)
            shared = not callable(raw) and (not isinstance(raw, torch.Tensor) or raw.ndim < x.ndim
                                            or raw.shape[0] == 1)  # one baseline for every input: one row
            base = as_baseline(raw, x[:1] if shared else x)
            options["baseline"] = forward_with_activations(model_fn, params, base, [name])[1][0]
        if options.get("references") is not None:
            refs = check_input(options["references"], name="references")
            options["references"] = forward_with_activations(model_fn, params, refs.to(x), [name])[1][0]
        if "chunk_size" in accepted or forwards:
            options["chunk_size"] = auto_chunk(options.get("chunk_size"), x)
        rest = tail(model_fn, name)
        if rest is not None:  # nothing bypasses the layer: the model after it is a function of the activation
            return method(rest, params, act, _rows_target(resolved, slice(None)), **options)
        if getattr(method, "structured", False):  # one call: x and act ride with their rows
            for opt in ("baseline", "references"):
                if opt in options:
                    options[opt] = (options[opt], None, None)
            out = method(_head(tap), params, (act, structured.fixed(x), structured.fixed(act)),
                         _rows_target(resolved, slice(None)), **options)
            return (out[0][0], *out[1:]) if isinstance(out[0], tuple) else out[0]
        maps = []  # a method that takes one tensor: one call per input, so that every row's input is known
        for b in range(x.shape[0]):
            row = dict(options)
            if "baseline" in options and options["baseline"].shape[0] > 1:
                row["baseline"] = options["baseline"][b:b + 1]
            maps.append(method(_one_input(tap, x[b:b + 1], act[b:b + 1]), params, act[b:b + 1],
                               _rows_target(resolved, slice(b, b + 1)), **row))
        return _cat_maps(maps)

    del layered.__wrapped__
    layered.__dict__.pop("structured", None)  # x is one tensor here
    layered.__name__ = layered.__qualname__ = f"at_layer({getattr(method, '__name__', 'method')}, {layer!r})"
    layered.__doc__ = f"{getattr(method, '__name__', 'method')} attributing to the output of layer {layer!r}."
    return layered


@documented(layer="dotted name of the module whose output units are scored, or ``None`` (the last spatial "
                  "feature map before global pooling).",
            steps="number of path intervals (``steps + 1`` points, as Captum's ``n_steps``).",
            method="where the ``steps + 1`` path points lie: the points of :func:`fxai.path_rule` for "
                   "``steps + 1`` (their weights unused). The default ``\"riemann_trapezoid\"`` spaces them "
                   "evenly from the baseline to ``x``, both included; Captum's default ``\"gausslegendre\"`` "
                   "leaves the two ends of the path out.",
            return_error="also return the completeness error :math:`\\sum_j \\mathrm{Cond}_j - (f_c(x) - "
                         "f_c(b))`, shape ``[B]`` (or ``[B, K]``); near 0 when every path from ``x`` to the "
                         "output goes through the layer.",
            x="input batch ``[B, ...]``.")
def layer_conductance(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer: str | None,
                      baseline=0.0, steps: int = 50, method: str = "riemann_trapezoid",
                      chunk_size: int | None = None, return_error: bool = False):
    r"""Conductance of each unit of ``layer``: the flow of the target score through it along the IG path.

    .. math:: \mathrm{Cond}_j(x) = \int_0^1 \frac{\partial f_c}{\partial a_j}\big(x_\alpha\big)
              \frac{\partial a_j(x_\alpha)}{\partial \alpha}\,d\alpha
              \approx \sum_{k=0}^{n-1} \frac{\partial f_c}{\partial a_j}(x_{\alpha_k})
              \big(a_j(x_{\alpha_{k+1}}) - a_j(x_{\alpha_k})\big)

    with :math:`x_\alpha = b + \alpha (x - b)`. Dhamdhere et al., "How Important Is a Neuron?",
    ICLR 2019; the sum is Captum's LayerConductance for the same ``steps`` and ``method``. All
    ``steps + 1`` path points of the batch are one stacked batch (chunked by ``chunk_size``), one
    forward and backward to the layer's taps. Summed over the units of a layer that every path
    crosses, it telescopes to :math:`f_c(x) - f_c(b)` (completeness).

    {args}

    Returns:
        A map shaped like the layer's activation ``[B, ...]`` (``[B, K, ...]`` for K targets), and the
        error if asked.

    Example:
        >>> cond, err = fxai.layer_conductance(model_fn, params, x, 3, layer="layer3", steps=16, return_error=True)
        >>> cond.shape
        torch.Size([2, 16, 16, 16])
    """
    check_input(x)
    check_positive_int(steps, name="steps")
    chunk_size = auto_chunk(chunk_size, x)
    (name,) = resolve_layers(model_fn, layer, params=params, x=x)
    alphas, _ = path_rule(method, steps + 1)
    target = as_target(target, x).fixed(model_fn, params, x)
    base = as_baseline(baseline, x)
    alphas = alphas.to(x.device, x.dtype).view(-1, *([1] * x.ndim))
    path = (base + alphas * (x - base)).flatten(0, 1)
    (acts,), (grads,), _ = layer_gradients(model_fn, params, path, target, [name], chunk_size=chunk_size)
    acts, grads = unstack(acts, steps + 1), unstack(grads, steps + 1)[:-1]
    steps_taken = acts[1:] - acts[:-1]
    if grads.ndim > steps_taken.ndim:
        steps_taken = steps_taken.unsqueeze(2)
    conductance = (grads * steps_taken).sum(0)
    if return_error:
        return conductance, completeness_error(model_fn, params, x, base, target, conductance, chunk_size)
    return conductance
