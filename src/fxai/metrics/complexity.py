"""Complexity of a map: sparseness (Gini index), entropy and effective complexity. All use the absolute values of
the whole map."""

from __future__ import annotations

import torch

from .._core.checks import check_finite


def _flat_abs(attribution, name="attribution"):
    if not isinstance(attribution, torch.Tensor) or not attribution.is_floating_point() or attribution.ndim < 2:
        raise ValueError(f"{name} must be a floating-point map [B, ...]")
    return check_finite(attribution, name=name).detach().flatten(1).abs()


def sparseness(attribution: torch.Tensor) -> torch.Tensor:
    r"""Sparseness: the Gini index of :math:`|a|` (Chalasani et al., "Concise Explanations of Neural
    Networks using Adversarial Training", ICML 2020).

    .. math:: G(a) = \frac{\sum_{k=1}^{n} (2k - n - 1)\, |a|_{(k)}}{n \sum_k |a|_{(k)}}

    with :math:`|a|_{(k)}` sorted ascending: 0 for a uniform map, :math:`1 - 1/n`
    for a single nonzero entry (higher is sparser; 0 for an all-zero map).

    Returns:
        ``[B]``.

    Example:
        >>> fxai.metrics.sparseness(torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
        tensor([0.7500])
    """
    a = _flat_abs(attribution).sort(1).values
    n = a.shape[1]
    k = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    total = a.sum(1)
    g = ((2 * k - n - 1) * a).sum(1) / (n * torch.where(total > 0, total, torch.ones_like(total)))
    return torch.where(total > 0, g, torch.zeros_like(g))


def complexity(attribution: torch.Tensor) -> torch.Tensor:
    r"""Complexity: the entropy of the fractional contributions :math:`p_i = |a_i| / \sum_j |a_j|`
    (Bhatt et al., "Evaluating and Aggregating Feature-based Model Explanations", IJCAI 2020).

    .. math:: H(a) = -\sum_i p_i \ln p_i

    in nats: 0 for a single nonzero entry, :math:`\ln n` for a uniform map
    (lower is simpler; 0 for an all-zero map).

    Returns:
        ``[B]``.

    Example:
        >>> fxai.metrics.complexity(torch.ones(1, 4))
        tensor([1.3863])
    """
    a = _flat_abs(attribution)
    total = a.sum(1, keepdim=True)
    p = a / torch.where(total > 0, total, torch.ones_like(total))
    return 0.0 - torch.xlogy(p, p).sum(1)  # not -xlogy: a single nonzero entry gives 0, not -0


def effective_complexity(attribution: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    r"""Effective complexity: the number of entries whose magnitude exceeds ``eps`` times the map's largest
    (Nguyen & Martínez, "On Quantitative Aspects of Model Interpretability", 2020).

    .. math:: EC(a) = \big|\{i : |a_i| / \max_j |a_j| > \epsilon\}\big|

    Quantus's ``EffectiveComplexity`` with its defaults (``abs``, ``normalise`` by the max, ``eps=1e-5``), but
    each map normalised by its own maximum: Quantus divides by the maximum over the whole batch, so its
    score of a map depends on the other maps in the batch. Lower is simpler; 0 for an all-zero map.

    Returns:
        ``[B]`` counts (in the map's dtype).

    Example:
        >>> fxai.metrics.effective_complexity(torch.tensor([[0.0, 1e-7, 0.5, -1.0]]))
        tensor([2.])
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise ValueError(f"eps must be a number in [0, 1), got {eps!r}")
    a = _flat_abs(attribution)
    top = a.amax(1, keepdim=True)
    return ((a > eps * top) & (top > 0)).sum(1).to(a.dtype)
