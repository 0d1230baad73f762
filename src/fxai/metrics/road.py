r"""ROAD: RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022).

Pixels are removed by noisy linear imputation (:class:`~fxai.metrics.noisy_linear`),
which leaks far less of the removed shape to the model than a constant fill,
so no retraining is needed.
"""

from __future__ import annotations

import torch

from .._core.checks import check_choice, check_input, check_positive_int
from .._core.targets import TargetLike
from .ranking import fraction_counts, n_units
from .imputers import noisy_linear
from .perturbation import perturbation_curve

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def road(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
         fractions=FRACTIONS, order: str = "morf", noise: float = 0.01, tol: float = 1e-4, patch: int = 1,
         reduce: str = "sum", softmax: bool = False, key=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""ROAD curve: the target score after imputing the most (``"morf"``) or least (``"lerf"``) relevant pixels.

    For each fraction :math:`p`, the :math:`\mathrm{round}(p \cdot HW)` most (or
    least) relevant pixels are replaced by noisy linear imputation with noise
    std ``noise`` (needs ``key`` when ``noise > 0``; one noise field per image,
    shared by all fractions), and the perturbed copies of all fractions are
    scored in one stacked forward pass. Rong et al. score probabilities
    (``softmax=True``). Combine a MoRF and a LeRF curve with :func:`road_combined`.

    Args:
        model_fn, params, x, target, attribution: as :func:`fxai.metrics.perturbation_curve`.
        fractions: fractions of pixels removed, each in ``[0, 1]``.
        order: ``"morf"`` or ``"lerf"``.
        noise: std of the Gaussian noise added to imputed pixels (0 for plain linear imputation).
        tol: relative residual of the imputation's linear solves (see :class:`~fxai.metrics.noisy_linear`).
        chunk_size: at most this many perturbed inputs per forward pass and imputation block; ``None``:
            as many as fit 8 images of 3×224×224 (:func:`fxai._core.batching.auto_chunk`).

    Returns:
        ``[B, len(fractions)]`` scores.

    Example:
        >>> m = fxai.metrics.road(model_fn, params, x, None, amap, order="morf", key=0)
        >>> l = fxai.metrics.road(model_fn, params, x, None, amap, order="lerf", key=0)
        >>> score = fxai.metrics.road_combined(m, l)
    """
    check_input(x, exact_ndim=4)
    check_choice(order, ("morf", "lerf"), name="order")
    check_positive_int(patch, name="patch")
    counts = fraction_counts(fractions, n_units(x.shape[-2], x.shape[-1], patch))
    return perturbation_curve(model_fn, params, x, target, attribution, counts=counts, order=order,
                              imputer=noisy_linear(noise, tol=tol), patch=patch, reduce=reduce, softmax=softmax,
                              key=key, chunk_size=chunk_size)


def road_combined(morf_curve: torch.Tensor, lerf_curve: torch.Tensor) -> torch.Tensor:
    r"""ROAD's combined score, higher is better: :math:`\frac12 (\overline{\mathrm{LeRF}} - \overline{\mathrm{MoRF}})`.

    The means run over the fractions. It equals pytorch-grad-cam's
    ``ROADCombined`` (which subtracts the clean score from both curves first;
    it cancels).

    Args:
        morf_curve, lerf_curve: ``[B, S]`` curves from :func:`road` at the same fractions.

    Returns:
        ``[B]``.

    Example:
        >>> fxai.metrics.road_combined(torch.tensor([[0.2, 0.1]]), torch.tensor([[0.9, 0.8]]))
        tensor([0.3500])
    """
    if not isinstance(morf_curve, torch.Tensor) or not isinstance(lerf_curve, torch.Tensor) \
            or morf_curve.shape != lerf_curve.shape:
        raise ValueError("road_combined: morf_curve and lerf_curve must be tensors of the same shape [B, S]")
    return (lerf_curve.mean(-1) - morf_curve.mean(-1)) / 2
