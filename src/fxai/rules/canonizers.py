r"""Canonizers: pure ``params -> params`` rewrites that give a model a form LRP's rules are meant for.

:func:`fold_batchnorm` merges every eval-mode BatchNorm that directly follows a
convolution or a dense layer into that layer (Montavon et al. 2019, sec. 10.3;
Guillemot et al. 2020):

.. math:: W' = W \cdot \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
          b' = (b - \mu)\,\frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} + \beta,

and turns the BatchNorm into the identity, so the model computes the same
function with one linear layer where it had two, and the layer's rule sees
the folded weights. Residual additions need no rewrite: the ``add`` rule of a
composite splits relevance between the branches (see :mod:`fxai.rules.lrp`).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._pytree import tree_leaves

from .._core.eager import eager
from . import ops as O
from .engine import Intercept

class _Recorder:
    """Rules and observer for one plain forward under :class:`~fxai.rules.engine.Intercept`: which linear layer's
    output each eval-mode batch norm normalises, and every other use of that output."""

    def __init__(self, names):
        self.names = names
        self.produced = {}  # id(output) -> (output, weight name, bias name or None)
        self.used = set()  # ids of outputs used by anything but one batch norm
        self.pairs = []  # (output id, bn running_mean, running_var, weight, bias names, eps)
        self.calls = {}  # weight name -> number of calls of its layer

    def mode(self) -> Intercept:
        rules = {op: self.linear for op in (O.LINEAR, O.CONV1D, O.CONV2D, O.CONV3D)}
        return Intercept({**rules, O.BATCH_NORM: self.batch_norm}, observe=self.observe)

    def linear(self, op, operands, options):
        self.observe(op, operands, {}, None)
        out = op.compute(*operands, **options)
        w, b = options["weight"], options["bias"]
        w_name, b_name = self.names.get(id(w)), None if b is None else self.names.get(id(b))
        self.calls[w_name] = self.calls.get(w_name, 0) + 1
        if w_name is not None and (b is None or b_name is not None):
            self.produced[id(out)] = (out, w_name, b_name)
        return out

    def batch_norm(self, op, operands, options):
        (x,) = operands
        bn = [options[k] for k in ("running_mean", "running_var", "weight", "bias")]
        bn_names = [None if t is None else self.names.get(id(t)) for t in bn]
        if id(x) in self.produced and None not in bn_names[:2] and \
                all(t is None or n is not None for t, n in zip(bn, bn_names)):
            if any(p[0] == id(x) for p in self.pairs):
                self.used.add(id(x))
            self.pairs.append((id(x), *bn_names, options["eps"]))
        else:
            self.observe(op, operands, {}, None)
        return op.compute(x, **options)

    def observe(self, func, args, kwargs, out):
        if out is not None and not any(isinstance(t, torch.Tensor) for t in tree_leaves(out)):
            return  # metadata (dim, size, shape): not a use
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and id(t) in self.produced:
                self.used.add(id(t))


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {(model_fn id, names, shape): pairs}


@eager
def batchnorm_pairs(model_fn, params, x) -> list[tuple]:
    """``(weight, bias or None, bn mean, bn var, bn weight or None, bn bias or None, eps)`` parameter names of each
    BatchNorm that follows a linear layer called once whose output nothing else uses, found by one forward on the
    meta device (kept per module of an ``fxai.functional`` model, parameter names and input shape)."""
    module = getattr(model_fn, "module", None)
    key = (id(model_fn), tuple(params), tuple(x.shape[1:]), x.dtype)
    if isinstance(module, torch.nn.Module) and key in _PLANS.get(module, {}):
        return _PLANS[module][key]
    pairs = _find_pairs(model_fn, params, x)
    if isinstance(module, torch.nn.Module):
        _PLANS.setdefault(module, {})[key] = pairs
    return pairs


def _find_pairs(model_fn, params, x):
    try:
        meta = {k: v.detach().to("meta") if isinstance(v, torch.Tensor) else v for k, v in params.items()}
        probe = x[:1].detach().to("meta")
        rec = _Recorder({id(t): k for k, t in meta.items() if isinstance(t, torch.Tensor)})
        with torch.no_grad(), rec.mode():
            model_fn(meta, probe)
    except Exception:  # a model the meta device cannot run: one real forward of one input
        plain = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in params.items()}
        rec = _Recorder({id(t): k for k, t in plain.items() if isinstance(t, torch.Tensor)})
        with torch.no_grad(), rec.mode():
            model_fn(plain, x[:1].detach().clone())
    return [(rec.produced[i][1], rec.produced[i][2], *bn) for i, *bn in rec.pairs
            if i not in rec.used and rec.calls[rec.produced[i][1]] == 1]


def fold_batchnorm(model_fn, params, x) -> dict:
    r"""``params`` with each BatchNorm that follows a convolution or dense layer folded into it.

    :math:`W' = W\gamma/\sqrt{\sigma^2+\epsilon}`, :math:`b' = (b - \mu)\gamma/\sqrt{\sigma^2+\epsilon} + \beta`;
    the BatchNorm becomes the identity (mean 0, variance 1, scale :math:`\sqrt{1+\epsilon}`, shift 0), up to
    rounding. A layer without bias gets one (``"<layer>.bias"``). The layers are found by one forward of
    ``x[:1]`` on the meta device; a BatchNorm whose input is also used elsewhere, or whose layer is called
    twice, is left alone. Pure: returns a new dict, differentiable w.r.t. ``params``.
    Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019.

    Example:
        >>> folded = fxai.fold_batchnorm(model_fn, params, x)
        >>> torch.allclose(model_fn(folded, x), model_fn(params, x), atol=1e-5)
        True
    """
    out = dict(params)
    for w_name, b_name, mean, var, gamma, beta, eps in batchnorm_pairs(model_fn, params, x):
        w = params[w_name]
        scale = torch.rsqrt(params[var] + eps)
        if gamma is not None:
            scale = scale * params[gamma]
        bias = params[b_name] if b_name is not None else torch.zeros_like(params[mean])
        out[w_name] = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        new_bias = (bias - params[mean]) * scale + (params[beta] if beta is not None else 0)
        out[b_name or w_name.rpartition(".")[0] + ".bias"] = new_bias
        out[mean] = torch.zeros_like(params[mean])
        if gamma is not None:
            out[var] = torch.ones_like(params[var])
            out[gamma] = torch.full_like(params[gamma], (1 + eps) ** 0.5)
        else:
            out[var] = torch.full_like(params[var], 1 - eps)
        if beta is not None:
            out[beta] = torch.zeros_like(params[beta])
    return out
