"""Docstrings from one mechanism: each method writes its summary, formula, paper and example; the ``Args``
section is generated from its signature with one shared wording per argument.

A docstring holds the line ``{args}`` where the section goes; :func:`documented` replaces it with one
entry per parameter of the function, taken from ``described`` (the method's own arguments) or from
:data:`ARGS` (the arguments many methods share). A parameter described nowhere is an error at import time,
so a new option cannot go undocumented.
"""

from __future__ import annotations

import inspect
import textwrap

ARGS = {
    "model_fn": "pure ``model_fn(params, x) -> logits`` (:func:`fxai.functional`, or :func:`fxai.split` "
                "for layer methods on a hand-written model).",
    "params": "the parameters and buffers ``model_fn`` takes.",
    "x": "input batch ``[B, C, H, W]``.",
    "target": "class index, ``LongTensor[B]`` or ``[B, K]``, ``None`` (top-1 on the clean input) or a "
              "callable ``logits -> scores[B]``.",
    "layer": "dotted module name, a list of them (one fused map), or ``None`` (the last spatial feature map "
             "before global pooling, :func:`fxai._core.discovery.default_layer`); a model made by "
             "``fxai.split(features, head)`` has the one layer ``\"features\"``.",
    "relu": "apply the final ReLU (default ``{default}``).",
    "upsample": "``True`` (bilinear to ``x``'s size), ``False`` (the layer's resolution), or "
                "``\"nearest\"``/``\"bicubic\"``.",
    "eigen_smooth": "replace the channel sum by the first principal component of the weighted activations "
                    "(:func:`fxai.attribution.cam_driver.first_component`).",
    "aug_smooth": "average over horizontal flips × intensity factors 0.9, 1.0, 1.1 (one batch).",
    "reshape": "callable turning the layer's output into ``[N, C, h, w]`` (default: automatic for "
               "``[N, C, h, w]``, channels-last and ViT tokens, :func:`fxai.to_grid`).",
    "chunk_size": "at most this many rows (inputs, or perturbed copies of them) per forward/backward pass; "
                  "``None``: as many as fit 8 images of 3×224×224 (:func:`fxai._core.batching.auto_chunk`).",
    "key": "int seed or ``torch.Generator`` (required): the same key gives the same map, whatever the chunk size.",
    "baseline": "a number, a tensor broadcastable to ``x`` or a callable ``x -> baseline`` (default ``{default}``).",
    "score": "``\"softmax\"`` (the target read from the class probabilities: the softmax of the outputs, the "
             "sigmoid of a single-logit model's one output; a callable target receives them) or ``\"logit\"`` "
             "(raw outputs).",
}


def args_section(fn, described: dict[str, str]) -> str:
    """The ``Args:`` section for ``fn``'s parameters (unindented, as in a cleaned docstring)."""
    lines = ["Args:"]
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        text = described.get(name, ARGS.get(name))
        if text is None:
            raise TypeError(f"{fn.__name__}: argument {name!r} is not described (documented({name}=...))")
        text = text.replace("{default}", repr(p.default))
        lines += textwrap.wrap(f"{name}: {text}", 104, initial_indent="    ", subsequent_indent="        ")
    return "\n".join(lines)


def documented(fn=None, /, **described):
    """Fill the ``{args}`` line of ``fn.__doc__`` from its signature (see the module docstring).

    Use as ``@documented(eps="...")`` or ``documented(fn, eps="...")``.
    """
    def fill(f):
        doc = inspect.cleandoc(f.__doc__ or "")
        if "{args}" not in doc:
            raise TypeError(f"{f.__name__}: the docstring has no {{args}} line")
        f.__doc__ = doc.replace("{args}", args_section(f, described))
        return f

    return fill if fn is None else fill(fn)
