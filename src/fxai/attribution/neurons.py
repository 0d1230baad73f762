"""Neurons as targets: a model transform whose outputs are a layer's activation, and neuron selectors on it.

``fxai.layer_output(model_fn, layer)`` is a ``model_fn`` like any other, whose "logits" are the layer's
activation flattened to ``[B, N]``. Every method then explains neurons unchanged: a flat index is a neuron
(Captum's NeuronGradient is ``fxai.gradient`` on it, NeuronIntegratedGradients ``fxai.integrated_gradients``),
a ``LongTensor [B, K]`` asks for K neurons at once, and SmoothGrad over a neuron comes for free.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._core.checks import check_input
from .._core.discovery import resolve_layers
from .._core.docs import documented
from .._core.layers import activation_shapes, tapped
from .._core.tails import upto


class LayerOutput:
    """``model_fn`` seen through one of its layers: ``(params, x) -> activation.flatten(1)``, ``[B, N]``.

    Made by :func:`layer_output`. ``model_fn`` and ``layer`` are kept; calls run the model's
    graph up to the layer (:func:`fxai._core.tails.upto`), or the whole forward with the layer tapped
    where the model has no FX graph.
    """

    __slots__ = ("model_fn", "layer", "_tap")

    def __init__(self, model_fn, layer: str):
        self.model_fn, self.layer = model_fn, layer
        self._tap = tapped(model_fn, [layer])

    def __call__(self, params, x: torch.Tensor) -> torch.Tensor:
        first = upto(self.model_fn, self.layer)  # this thread's graph up to the layer, when there is one
        act = first(params, x) if first is not None else self._tap(params, x)[1][0]
        return act.flatten(1)

    def shape(self, params, x: torch.Tensor) -> torch.Size:
        """The activation's shape for one input of ``x``'s kind, batch axis left out (a dry run on ``meta``)."""
        return activation_shapes(self.model_fn, params, x[:1], [self.layer])[0][1:]

    def __repr__(self) -> str:
        return f"layer_output({self.model_fn!r}, {self.layer!r})"


@documented(layer="dotted name of the module whose output becomes the model's output (``\"features\"`` for a "
                  "model made by :func:`fxai.split`).")
def layer_output(model_fn, layer: str) -> LayerOutput:
    r"""A model transform: ``model_fn`` whose outputs are ``layer``'s activation, flattened to ``[B, N]``.

    .. math:: f'(x) = \mathrm{flatten}\big(a_\ell(x)\big),\quad f'_n(x) = a_{\ell, n}(x)

    With it, neuron :math:`n` of the layer is the target ``n`` of any method: Captum's
    NeuronGradient is :func:`fxai.gradient` on it and NeuronIntegratedGradients
    :func:`fxai.integrated_gradients` (Sundararajan et al., 2017, applied to a hidden unit as in
    Dhamdhere et al., "How Important Is a Neuron?", 2018). Name a neuron by its position, a
    channel or a region with :func:`fxai.neuron`. A top-1 target (``None``) is the most active
    neuron. The activation is the module's output (not its input). A model of several inputs works
    too (``x`` a tuple or dict, :func:`fxai.fixed` leaves riding along), through the methods that take
    them; :func:`fxai.neuron` needs a tensor ``x``, so name neurons there by their flat index.

    {args}

    Returns:
        A pure ``model_fn(params, x) -> [B, N]`` with ``model_fn`` and ``layer`` as attributes.

    Example:
        >>> neurons = fxai.layer_output(model_fn, "layer3")
        >>> neurons(params, x).shape
        torch.Size([2, 4096])
        >>> g = fxai.gradient(neurons, params, x, fxai.neuron(neurons, params, x, (2, 1, 3)))
    """
    if not isinstance(layer, str):
        raise TypeError(f"layer must be one dotted layer name such as 'layer3', got {layer!r}")
    (name,) = resolve_layers(model_fn, layer, name="layer")
    return LayerOutput(model_fn, name)


Selector = tuple | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


@documented(neurons="a model made by :func:`fxai.layer_output`.",
            x="input batch ``[B, ...]`` (its shape fixes the activation's).",
            selector="a tuple of ints, one per activation axis after the batch (``(c, h, w)`` for a conv layer; "
                     "negative counts from the end), a tuple that holds slices or ``...`` (the sum of the "
                     "neurons it selects, e.g. ``(c, ...)`` a whole channel), a ``LongTensor [B, D]`` or "
                     "``[B, K, D]`` of positions per input, or a callable ``activation [B, ...] -> [B]``.")
def neuron(neurons: LayerOutput, params, x: torch.Tensor, selector: Selector):
    r"""A target on :func:`fxai.layer_output`'s model, naming neurons by their position in the activation.

    A position :math:`(c, h, w)` becomes its flat index :math:`(c \cdot H + h) \cdot W + w`; a tuple
    with slices, or a callable, becomes a callable target on the flat outputs that sees the
    activation in its own shape (Captum's ``neuron_selector``: slices are summed).

    {args}

    Returns:
        An ``int`` (one position), a ``LongTensor [B]`` or ``[B, K]`` (positions per input), or a callable
        ``[B, N] -> [B]`` target.

    Example:
        >>> neurons = fxai.layer_output(model_fn, "layer3")
        >>> fxai.neuron(neurons, params, x, (1, 0, 2))
        258
        >>> channel = fxai.neuron(neurons, params, x, (1, ...))
        >>> ig = fxai.integrated_gradients(neurons, params, x, channel, steps=8)
        >>> mean = fxai.neuron(neurons, params, x, lambda a: a[:, 1].mean((1, 2)))
    """
    if not isinstance(neurons, LayerOutput):
        raise TypeError(f"neurons must be a model made by fxai.layer_output(model_fn, layer), got "
                        f"{type(neurons).__name__}")
    check_input(x)
    shape = tuple(neurons.shape(params, x))
    if callable(selector) and not isinstance(selector, torch.Tensor):
        return _Reshaped(selector, shape)
    if isinstance(selector, torch.Tensor):
        return _flat_positions(selector, shape, x.shape[0])
    if isinstance(selector, int) and not isinstance(selector, bool):
        selector = (selector,)
    if not isinstance(selector, tuple):
        raise TypeError(f"selector must be a tuple of positions, a LongTensor of positions or a callable "
                        f"activation -> [B]; got {type(selector).__name__}")
    if any(s is Ellipsis or isinstance(s, slice) for s in selector):
        _check_region(selector, shape)
        return _Reshaped(lambda a: a[(slice(None), *selector)].flatten(1).sum(1), shape)
    return int(_flat_positions(torch.tensor(selector), shape, None))


def _check_region(selector: tuple, shape: tuple) -> None:
    if any(not (s is Ellipsis or isinstance(s, slice) or (isinstance(s, int) and not isinstance(s, bool)))
           for s in selector):
        raise TypeError(f"selector: a tuple may hold ints, slices and ..., got {selector!r}")
    if sum(s is Ellipsis for s in selector) > 1 or len([s for s in selector if s is not Ellipsis]) > len(shape):
        raise ValueError(f"selector {selector!r} does not fit the activation's shape {list(shape)} (batch axis "
                         "left out)")
    try:
        torch.empty(shape, device="meta")[selector]
    except IndexError as err:
        raise ValueError(f"selector {selector!r} is out of range for the activation's shape {list(shape)}: {err}") \
            from None


def _flat_positions(pos: torch.Tensor, shape: tuple, batch: int | None) -> torch.Tensor:
    """Positions ``[..., D]`` (D = activation axes) as flat indices ``[...]``, checked against ``shape``."""
    if pos.is_floating_point() or pos.is_complex() or pos.dtype == torch.bool:
        raise TypeError(f"selector must hold integer positions, got dtype {pos.dtype}")
    expected = "a tuple of D ints" if batch is None else "a LongTensor [B, D] or [B, K, D]"
    if pos.ndim == 0 or pos.shape[-1] != len(shape) or (batch is not None and (
            pos.ndim not in (2, 3) or pos.shape[0] != batch)):
        raise ValueError(f"selector must be {expected} with D = {len(shape)} (the activation's shape is "
                         f"{list(shape)}, batch axis left out){'' if batch is None else f' and B = {batch}'}; "
                         f"got {tuple(pos) if batch is None else tuple(pos.shape)}")
    size = torch.tensor(shape, device=pos.device)
    if pos.numel() and bool(((pos < -size) | (pos >= size)).any()):
        raise ValueError(f"selector {pos.tolist()} is out of range for the activation's shape {list(shape)}")
    pos = pos.long() % size
    strides = torch.tensor([math.prod(shape[i + 1:]) for i in range(len(shape))], device=pos.device)
    return (pos * strides).sum(-1)


class _Reshaped:
    """A callable target on flat outputs ``[B, N]`` that scores the activation ``[B, *shape]``."""

    def __init__(self, fn, shape: tuple):
        self.fn, self.shape = fn, shape

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        return self.fn(flat.reshape(flat.shape[0], *self.shape))
