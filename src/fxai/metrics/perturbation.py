r"""Faithfulness by perturbation: the model's score as the most (or least) relevant pixels are removed.

All curves come from one primitive, :func:`perturbation_curve`: rank the map
(:func:`~fxai.metrics.ranking`), build one mask per step, impute, and score
every perturbed copy in one stacked forward pass (rows repeat-major
``[steps * B, ...]``), with the target fixed on the clean input. A curve has
``steps + 1`` points, from nothing removed (the clean input) to everything
removed. Aggregates (:func:`auc`, :func:`aopc`) are separate functions.
"""

from __future__ import annotations

import torch

from .._core import keys
from .._core.batching import scores as stacked_scores
from .._core.batching import auto_chunk, unstack
from .._core.checks import check_choice, check_input, check_map, check_positive_int
from .._core.targets import TargetLike, one_per_input, scored_model
from .ranking import bottom_mask, n_units, ranking, step_counts, top_mask
from .imputers import as_imputer, blur, constant, uniform_noise

ORDERS = ("morf", "lerf", "insertion")


def perturbation_curve(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
                       counts, order: str = "morf", imputer="constant", patch: int = 1, reduce: str = "sum",
                       softmax: bool = False, key=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""Scores of the target after perturbing ``counts[s]`` units, for each ``s``: ``[B, S]``.

    ``order="morf"`` perturbs the most relevant units first, ``"lerf"`` the least
    relevant first, ``"insertion"`` starts from the fully imputed image and
    restores the most relevant units first (the imputer fills what is not yet
    restored). Units are pixels or ``patch × patch`` patches ranked by
    :func:`~fxai.metrics.ranking`.

    Args:
        model_fn, params: the pure model (see :func:`fxai.functional`).
        x: input batch ``[B, C, H, W]``.
        target: class index, ``LongTensor[B]``, ``None`` (top-1 on the clean
            input, fixed for every step) or a callable ``scores -> [B]``.
        attribution: map ``[B, H, W]`` or ``[B, C, H, W]`` (reduced with ``reduce``).
        counts: number of units perturbed at each step, ints ``[S]``.
        imputer: an imputer ``(x, masks, *, key) -> [S, B, C, H, W]`` or a name
            (see :mod:`fxai.metrics.imputers`).
        softmax: score probabilities (True; the sigmoid of a single-logit model) or logits (False).
        key: randomness for tie-breaking in the ranking and for random imputers.
        chunk_size: at most this many perturbed inputs per forward pass (and
            about ``max(chunk_size, B)`` imputed inputs in memory at once); ``None``: as many as fit 8
            images of 3×224×224 (:func:`fxai._core.batching.auto_chunk`).

    Returns:
        ``[B, S]`` scores.

    Example:
        >>> c = fxai.metrics.perturbation_curve(model_fn, params, x, None, amap, counts=[0, 100, 200])
    """
    check_input(x, exact_ndim=4)
    check_map(attribution, x)
    check_choice(order, ORDERS, name="order")
    chunk_size = auto_chunk(chunk_size, x)
    imp = as_imputer(imputer)
    tie_key, seed = keys.split_key(key, needed=bool(getattr(imp, "randomised", False)))
    ranks = ranking(attribution, reduce=reduce, patch=patch, key=tie_key)
    counts = torch.as_tensor(counts, device=x.device).long().reshape(-1)
    fn = scored_model(model_fn, softmax)
    tgt = one_per_input(fn, params, x, target)
    steps, batch = counts.shape[0], x.shape[0]
    block = steps if chunk_size is None else max(1, chunk_size // batch)
    parts = []
    with torch.no_grad():
        for a in range(0, steps, block):
            c = counts[a:a + block]
            masks = bottom_mask(ranks, c) if order == "lerf" else top_mask(ranks, c)
            if order == "insertion":
                masks = ~masks
            rows = imp(x, masks, key=seed).flatten(0, 1)
            parts.append(stacked_scores(fn, params, rows, tgt, chunk_size=chunk_size))
    return unstack(torch.cat(parts), steps).movedim(0, -1)


def _steps_curve(model_fn, params, x, target, attribution, *, steps, order, imputer, patch, reduce, softmax, key,
                 chunk_size):
    check_input(x, exact_ndim=4)
    check_positive_int(patch, name="patch")
    counts = step_counts(steps, n_units(x.shape[-2], x.shape[-1], patch))
    return perturbation_curve(model_fn, params, x, target, attribution, counts=counts, order=order, imputer=imputer,
                              patch=patch, reduce=reduce, softmax=softmax, key=key, chunk_size=chunk_size)


def morf(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *, steps: int = 50,
         patch: int = 1, imputer=None, reduce: str = "sum", softmax: bool = False, key=None,
         chunk_size: int | None = None) -> torch.Tensor:
    r"""MoRF curve: the target score as the most relevant units are perturbed first.

    Samek et al., "Evaluating the Visualization of What a Deep Neural Network
    Has Learned", IEEE TNNLS 2017. Step ``k`` perturbs the
    ``floor(k · units / steps)`` most relevant units (pixels, or ``patch × patch``
    regions), by default with uniform noise over each image's range (drawn
    once, so a unit keeps its noise from step to step). Summarise with
    :func:`aopc` (higher is better).

    Args: as :func:`perturbation_curve`; ``imputer`` defaults to
        :class:`~fxai.metrics.uniform_noise` (then ``key`` is required).

    Returns:
        ``[B, steps + 1]`` scores, the first on the clean input.

    Example:
        >>> curve = fxai.metrics.morf(model_fn, params, x, None, amap, steps=20, patch=4, key=0)
        >>> score = fxai.metrics.aopc(curve)
    """
    return _steps_curve(model_fn, params, x, target, attribution, steps=steps, order="morf",
                        imputer=uniform_noise() if imputer is None else imputer, patch=patch, reduce=reduce,
                        softmax=softmax, key=key, chunk_size=chunk_size)


def lerf(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *, steps: int = 50,
         patch: int = 1, imputer=None, reduce: str = "sum", softmax: bool = False, key=None,
         chunk_size: int | None = None) -> torch.Tensor:
    r"""LeRF curve: the target score as the least relevant units are perturbed first.

    Samek et al. 2017 (see :func:`morf`); a faithful map keeps the score high
    (the AOPC of a LeRF curve is lower is better).

    Returns:
        ``[B, steps + 1]`` scores, the first on the clean input.

    Example:
        >>> curve = fxai.metrics.lerf(model_fn, params, x, None, amap, steps=20, key=0)
    """
    return _steps_curve(model_fn, params, x, target, attribution, steps=steps, order="lerf",
                        imputer=uniform_noise() if imputer is None else imputer, patch=patch, reduce=reduce,
                        softmax=softmax, key=key, chunk_size=chunk_size)


def selectivity(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
                steps: int | None = None, patch: int = 4, imputer=None, reduce: str = "sum", softmax: bool = False,
                key=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""Selectivity: the score as the most relevant ``patch × patch`` patches are removed one after another.

    Montavon et al., "Methods for Interpreting and Understanding Deep Neural
    Networks", Digital Signal Processing 2018. By default one patch per step
    (``steps`` = number of patches) and removed patches set to 0; summarise
    with :func:`auc` (lower is better: a selective map makes the score drop fast).

    Returns:
        ``[B, steps + 1]`` scores, the first on the clean input.

    Example:
        >>> curve = fxai.metrics.selectivity(model_fn, params, x, None, amap, patch=8)
        >>> score = fxai.metrics.auc(curve)
    """
    check_input(x, exact_ndim=4)
    check_positive_int(patch, name="patch")
    if steps is None:
        steps = n_units(x.shape[-2], x.shape[-1], patch)
    return _steps_curve(model_fn, params, x, target, attribution, steps=steps, order="morf",
                        imputer=constant(0.0) if imputer is None else imputer, patch=patch, reduce=reduce,
                        softmax=softmax, key=key, chunk_size=chunk_size)


def deletion(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *, steps: int = 50,
             patch: int = 1, imputer=None, reduce: str = "sum", softmax: bool = False, key=None,
             chunk_size: int | None = None) -> torch.Tensor:
    r"""Deletion curve: the score as the most relevant pixels are set to 0 (or ``imputer``).

    Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018 (who score probabilities: ``softmax=True``).
    Summarise with :func:`auc` (lower is better).

    Returns:
        ``[B, steps + 1]`` scores, from the clean input to the fully deleted one.

    Example:
        >>> area = fxai.metrics.auc(fxai.metrics.deletion(model_fn, params, x, None, amap, softmax=True))
    """
    return _steps_curve(model_fn, params, x, target, attribution, steps=steps, order="morf",
                        imputer=constant(0.0) if imputer is None else imputer, patch=patch, reduce=reduce,
                        softmax=softmax, key=key, chunk_size=chunk_size)


def insertion(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *, steps: int = 50,
              patch: int = 1, imputer=None, reduce: str = "sum", softmax: bool = False, key=None,
              chunk_size: int | None = None) -> torch.Tensor:
    r"""Insertion curve: the score as the most relevant pixels are restored into a blurred copy.

    Petsiuk et al. 2018: start from ``imputer`` applied to every pixel (by
    default :class:`~fxai.metrics.blur` with ``sigma=5, kernel_size=11``) and
    restore the original pixels in order of relevance. Summarise with
    :func:`auc` (higher is better).

    Returns:
        ``[B, steps + 1]`` scores, from the fully blurred input to the clean one.

    Example:
        >>> area = fxai.metrics.auc(fxai.metrics.insertion(model_fn, params, x, None, amap, softmax=True))
    """
    return _steps_curve(model_fn, params, x, target, attribution, steps=steps, order="insertion",
                        imputer=blur(5.0, 11) if imputer is None else imputer, patch=patch, reduce=reduce,
                        softmax=softmax, key=key, chunk_size=chunk_size)


def _check_curve(curve) -> torch.Tensor:
    if not isinstance(curve, torch.Tensor) or curve.ndim < 1 or curve.shape[-1] < 2:
        raise ValueError("curve must be a tensor [..., S] with at least 2 points, got "
                         f"{tuple(curve.shape) if isinstance(curve, torch.Tensor) else type(curve).__name__}")
    return curve


def auc(curve: torch.Tensor) -> torch.Tensor:
    r"""Area under a curve sampled at evenly spaced fractions of ``[0, 1]`` (trapezoidal rule).

    .. math:: \mathrm{AUC} = \frac{1}{S - 1} \sum_{k=0}^{S-2} \frac{c_k + c_{k+1}}{2}

    Args:
        curve: ``[..., S]``.

    Returns:
        ``[...]``.

    Example:
        >>> fxai.metrics.auc(torch.tensor([[1.0, 0.0]]))
        tensor([0.5000])
    """
    c = _check_curve(curve)
    return torch.trapezoid(c, dx=1.0 / (c.shape[-1] - 1), dim=-1)


def aopc(curve: torch.Tensor) -> torch.Tensor:
    r"""Area over the perturbation curve (Samek et al. 2017).

    .. math:: \mathrm{AOPC} = \frac{1}{L + 1} \sum_{k=0}^{L} \big(f(x^{(0)}) - f(x^{(k)})\big)

    for a curve ``[..., L + 1]`` whose first point is the clean input.

    Example:
        >>> fxai.metrics.aopc(torch.tensor([[1.0, 0.5, 0.0]]))
        tensor([0.5000])
    """
    c = _check_curve(curve)
    return (c[..., :1] - c).mean(-1)
