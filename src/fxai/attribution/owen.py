"""Owen values over a balanced hierarchy of axis-aligned image regions (shap's PartitionExplainer for images).

The hierarchy is shap's ``maskers.Image`` partition tree as its masks read it: the whole image splits in
two along its longer side (rows first on a tie; the first part ``⌈n/2⌉`` long), recursively, down to single
pixels, and channels split only once a region is one pixel. (shap's tree builder cuts at ``⌊n/2⌋`` but
numbers its leaves in reverse, so the regions it masks are the mirror image: cuts at ``⌈n/2⌉``.) The traversal is shap's: a priority queue per image and
target, the node with the largest ``max |f(x_{S ∪ child}) − f(x_S)| · weight`` expanded first; each
expansion evaluates the two children added to the node's context, in rounds of ``per_round`` evaluations
per queue (shap's ``batch_size``), until ``max_evals`` evaluations are spent; what is left on a node is
spread evenly over its pixels. The rounds of all images and targets are stacked into one batch of rows,
evaluated in chunks.
"""

from __future__ import annotations

import heapq
import itertools

import torch

from .._core.checks import check_input, check_positive_int
from .._core.docs import documented
from .._core.targets import TargetLike, as_target
from .coalitions import Baseline, black_box, masked_scores


def children(node):
    """The two halves of a region ``(r0, r1, c0, c1, k0, k1)`` (rows, columns, channels), or ``None`` for a leaf."""
    r0, r1, c0, c1, k0, k1 = node
    rows, cols = r1 - r0, c1 - c0
    if rows == 1 and cols == 1 and k1 - k0 == 1:
        return None
    if rows >= cols and rows > 1:
        mid = r0 + (rows + 1) // 2
        return (r0, mid, c0, c1, k0, k1), (mid, r1, c0, c1, k0, k1)
    if cols > 1:
        mid = c0 + (cols + 1) // 2
        return (r0, r1, c0, mid, k0, k1), (r0, r1, mid, c1, k0, k1)
    mid = k0 + (k1 - k0 + 1) // 2
    return (r0, r1, c0, c1, k0, mid), (r0, r1, c0, c1, mid, k1)


def _paint(regions, shape, device) -> torch.Tensor:
    """The union of ``regions`` as a bool mask ``[C, H, W]``."""
    keep = torch.zeros(shape, dtype=torch.bool, device=device)
    for r0, r1, c0, c1, k0, k1 in regions:
        keep[k0:k1, r0:r1, c0:c1] = True
    return keep


def _spread(values, nodes, shape, dtype, device) -> torch.Tensor:
    """``Σ_n values_n / |n| · 1[n]`` as a map ``[C, H, W]`` (one einsum, differentiable in ``values``)."""
    if not nodes:
        return torch.zeros(shape, dtype=dtype, device=device)
    box = torch.tensor(nodes, device=device)
    ar = [torch.arange(n, device=device) for n in shape]
    k = ((ar[0] >= box[:, 4:5]) & (ar[0] < box[:, 5:6])).to(dtype)
    r = ((ar[1] >= box[:, 0:1]) & (ar[1] < box[:, 1:2])).to(dtype)
    c = ((ar[2] >= box[:, 2:3]) & (ar[2] < box[:, 3:4])).to(dtype)
    size = k.sum(1) * r.sum(1) * c.sum(1)
    return torch.einsum("n,nk,nr,nc->krc", torch.stack(values) / size, k, r, c)


@documented(max_evals="evaluations per image and target, the empty and full image included (default 500, "
                      "shap's).",
            per_round="evaluations per image and target in one round of the traversal (default 10, shap's "
                      "``batch_size``): the queue is read again only between rounds. Larger rounds mean fewer, "
                      "larger batches; with a budget that expands the whole tree the values do not depend on it.",
            baseline="what replaces a left-out region: a number, a tensor broadcastable to ``x``, a callable "
                     "``x -> tensor`` or a fill imputer of :mod:`fxai.metrics` (``\"blur\"``, ``\"mean\"``) "
                     "(default ``{default}``).")
def owen_values(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, baseline=0.0,
                max_evals: int = 500, per_round: int = 10, chunk_size: int | None = None) -> torch.Tensor:
    r"""Owen values over shap's balanced hierarchy of image regions, within a budget of evaluations.

    .. math:: \phi_L \leftarrow \tfrac{w}{2}\big[v(S \cup L) - v(S)\big]
              + \tfrac{w}{2}\big[v(S \cup N) - v(S \cup R)\big]\ \text{(recursively)}

    Owen, "Values of games with a priori unions", 1977; Lundberg et al.'s ``PartitionExplainer`` (shap)
    for images, whose traversal this follows (see the module docstring): a node :math:`N` reached in
    context :math:`S` with weight :math:`w` (the root: :math:`S = \emptyset`, :math:`w = 1`) evaluates
    :math:`v(S \cup L)` and :math:`v(S \cup R)` for its halves :math:`L, R`; each half is then reached with
    weight :math:`w/2` in the context without and with its sibling, and a leaf, or a node left when the
    budget is spent, takes :math:`w\,(v(S \cup N) - v(S))`, :math:`v(S) = f_c(x_S)`. With a budget that reaches every leaf these are the exact Owen values of the hierarchy
    (about :math:`\tfrac23 N^2` evaluations for :math:`N` elements); below it, unexpanded regions keep
    their value, spread evenly over their pixels. Efficiency holds exactly at any budget:
    the map sums to :math:`f_c(x) - f_c(\text{baseline})`. Deterministic: ties between equal priorities go
    first come, first served (shap breaks them at random). Costs ``max_evals`` evaluations per image and
    target (500 by default); K targets traverse separately but share each round's forwards.

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets).

    Example:
        >>> phi = fxai.owen_values(model_fn, params, x, 3, max_evals=100, per_round=20)
        >>> phi.shape
        torch.Size([2, 3, 32, 32])
    """
    check_input(x, exact_ndim=4)
    check_positive_int(max_evals, name="max_evals")
    check_positive_int(per_round, name="per_round")
    base = Baseline(baseline, x, method="owen_values")
    if base.imputer is not None:
        raise ValueError("owen_values: the baseline must be a fill (a number, a tensor, a callable or a fill "
                         "imputer), not an imputer called per coalition")
    target = as_target(target, x).fixed(model_fn, params, x)
    batch, (c, h, w) = x.shape[0], x.shape[1:]
    shape, root = (c, h, w), (0, h, 0, w, 0, c)

    def evaluate(keeps):  # keeps[b]: the kept regions of image b's rows -> scores [R, B] or [R, B, K]
        rows = max(len(k) for k in keeps)

        def keep_of(s, i):  # rows of an image with fewer rows than others are padded with empty coalitions
            return torch.stack([_paint(keeps[b][r] if r < len(keeps[b]) else (), shape, x.device)
                                for r, b in zip(s.tolist(), i.tolist())])

        return masked_scores(model_fn, params, x, target, keep_of, rows, base, chunk_size=chunk_size)

    with black_box(params, x, base.fill):
        ends = evaluate([[(), (root,)]] * batch)
        k = ends.shape[2] if target.multi else 1
        pick = (lambda v, b, j: v[b, j]) if target.multi else (lambda v, b, j: v[b])
        queues = [(b, j) for b in range(batch) for j in range(k)]
        heaps, counts, values, tie = {}, {q: 2 for q in queues}, {q: {} for q in queues}, itertools.count()
        for q in queues:
            f00, f11 = pick(ends[0], *q), pick(ends[1], *q)
            heaps[q] = [(0.0, next(tie), ((), f00, f11, root, 1.0))]

        def credit(q, node, value):
            values[q][node] = values[q][node] + value if node in values[q] else value

        while any(heaps.values()):
            work, keeps = {}, [[] for _ in range(batch)]
            for q, heap in heaps.items():
                if heap and counts[q] >= max_evals:      # budget spent: what is left stays on its nodes
                    for _, _, (_, f00, f11, node, weight) in heap:
                        credit(q, node, (f11 - f00) * weight)
                    heap.clear()
                work[q] = []
                while heap and 2 * len(work[q]) < per_round and counts[q] + 2 * len(work[q]) < max_evals:
                    m00, f00, f11, node, weight = heapq.heappop(heap)[2]
                    halves = children(node)
                    if halves is None:
                        credit(q, node, (f11 - f00) * weight)
                        continue
                    work[q].append((m00, f00, f11, node, weight, halves, len(keeps[q[0]])))
                    keeps[q[0]] += [m00 + (halves[0],), m00 + (halves[1],)]
            if not any(keeps):
                continue
            scores = evaluate(keeps)
            for q, items in work.items():
                counts[q] += 2 * len(items)
                for m00, f00, f11, node, weight, (left, right), row in items:
                    f10, f01 = pick(scores[row], *q), pick(scores[row + 1], *q)
                    half = weight / 2
                    for args in ((m00, f00, f10, left, half), (m00, f00, f01, right, half),
                                 (m00 + (right,), f01, f11, left, half), (m00 + (left,), f10, f11, right, half)):
                        priority = -abs(float(args[2] - args[1])) * half
                        heapq.heappush(heaps[q], (priority, next(tie), args))

        maps = [_spread(list(values[q].values()), list(values[q].keys()), shape, x.dtype, x.device)
                for q in queues]
    out = torch.stack(maps).reshape(batch, k, *shape)
    return out if target.multi else out[:, 0]
