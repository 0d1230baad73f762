"""A target for segmentation models: the summed logits of one category over a pixel mask."""

from __future__ import annotations

import numpy as np
import torch


class SegmentationTarget:
    r"""Callable target ``logits [N, classes, H, W] -> scores [N]``: :math:`\sum_{h,w} m_{hw}\, z_{c,h,w}`.

    Made by :func:`segmentation_target`. A shared mask ``[H, W]`` scores any
    number of rows alone (``rows_per_group = 1``, so methods may chunk freely);
    a per-input mask ``[B, H, W]`` scores a whole batch of ``B`` rows at a time,
    row ``i`` with mask ``i``, which is how methods hand callable targets their
    stacked rows (noise samples, path steps, targets).
    """

    __slots__ = ("category", "mask", "rows_per_group")

    def __init__(self, category: int, mask: torch.Tensor):
        self.category = category
        self.mask = mask
        if mask.ndim == 2:
            self.rows_per_group = 1

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"segmentation_target: needs per-pixel logits [N, classes, H, W], got {got}; for a "
                             "model returning a dict or a tuple, pick the logits with fxai.functional(module, "
                             "output=...)")
        n, classes, h, w = logits.shape
        if self.category >= classes:
            raise ValueError(f"segmentation_target: category {self.category} is out of range for a model with "
                             f"{classes} classes")
        if tuple(self.mask.shape[-2:]) != (h, w):
            raise ValueError(f"segmentation_target: the mask is {tuple(self.mask.shape[-2:])} but the model's "
                             f"output is {(h, w)} pixels")
        if self.mask.ndim == 3 and self.mask.shape[0] != n:
            raise ValueError(f"segmentation_target: a per-input mask [B, H, W] holds {self.mask.shape[0]} masks, "
                             f"but the batch holds {n} inputs; pass one mask per input of x, or one [H, W] mask")
        mask = self.mask.to(dtype=logits.dtype, device=logits.device)
        return (logits[:, self.category] * mask).sum((-2, -1))

    def __repr__(self) -> str:
        return f"segmentation_target({self.category}, mask {tuple(self.mask.shape)})"


def segmentation_target(category: int, mask) -> SegmentationTarget:
    r"""A target for segmentation models: the logits of ``category`` summed over the pixels in ``mask``.

    :math:`s_b = \sum_{h,w} m_{b,h,w}\, z_{b,c,h,w}` for logits ``z [B, classes, H, W]``: the
    score pytorch-grad-cam's ``SemanticSegmentationTarget`` explains (Vinogradova et al., 2020,
    "Towards interpretable semantic segmentation via gradient-weighted class activation
    mapping"). Pass it as ``target=`` to any method.

    Args:
        category: the class whose logits are summed (a non-negative int).
        mask: ``[H, W]`` shared by every input, or ``[B, H, W]`` one per input of ``x``, at the
            resolution of the model's output; boolean or floating (weights), a tensor or a
            numpy array. Typically the pixels the model assigns to ``category``:
            ``logits.argmax(1) == category``.

    Returns:
        A callable ``logits -> scores [B]``; the model's output must be the logits
        ``[B, classes, H, W]`` (``fxai.functional(module, output="out")`` for torchvision's
        segmentation models, which ``output=None`` also picks).

    Example:
        >>> seg = torch.nn.Conv2d(3, 4, 1).eval()
        >>> seg_fn, seg_params = fxai.functional(seg)
        >>> mask = seg_fn(seg_params, x).argmax(1)[0] == 2
        >>> amap = fxai.gradient(seg_fn, seg_params, x, fxai.segmentation_target(2, mask))
    """
    if isinstance(category, bool) or not isinstance(category, (int, np.integer)) or int(category) < 0:
        raise TypeError(f"segmentation_target: category must be a non-negative int class index, got "
                        f"{type(category).__name__} {category!r}")
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"segmentation_target: mask must be a tensor or numpy array [H, W] or [B, H, W], got "
                        f"{type(mask).__name__}")
    if mask.ndim not in (2, 3) or mask.numel() == 0:
        raise ValueError(f"segmentation_target: mask must be [H, W] (shared) or [B, H, W] (one per input), got "
                         f"shape {tuple(mask.shape)}")
    if mask.is_complex():
        raise TypeError(f"segmentation_target: mask must be boolean or real (weights per pixel), got {mask.dtype}")
    if mask.is_floating_point() and not torch.isfinite(mask).all():
        raise ValueError("segmentation_target: mask holds NaN or infinite weights")
    return SegmentationTarget(int(category), mask.detach().clone())


def detections(output, max_detections: int | None = None) -> torch.Tensor:
    r"""A detector's per-image detections as one tensor ``[B, M, 6]``: box ``x1, y1, x2, y2``, score, label.

    Reads torchvision's detection output (a list of dicts with ``boxes [n, 4]``, ``scores [n]`` and
    ``labels [n]``, one per image: Faster R-CNN, RetinaNet, FCOS, SSD) and pads every image to the
    most detections ``M`` of the batch (or ``max_detections``) with empty rows (zero box and score,
    label ``-1``), at least one row. Pass it as ``fxai.functional(detector, output=fxai.detections)``
    and explain a :func:`box_target`. Differentiable: scores and boxes keep their graph.

    Example:
        >>> out = [{"boxes": torch.tensor([[0.0, 0, 4, 4]]), "scores": torch.tensor([0.9]),
        ...         "labels": torch.tensor([3])}, {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
        ...         "labels": torch.zeros(0, dtype=torch.long)}]
        >>> fxai.detections(out).shape
        torch.Size([2, 1, 6])
    """
    fields = {"boxes", "scores", "labels"}
    if not isinstance(output, (list, tuple)) or not all(isinstance(d, dict) and fields <= d.keys() for d in output):
        raise TypeError("detections: expected a detector's output, a list of dicts with 'boxes', 'scores' and "
                        f"'labels' (one per image), got {type(output).__name__}")
    m = max([1, *(len(d["scores"]) for d in output)]) if max_detections is None else max_detections
    rows = []
    for d in output:
        boxes, scores, labels = d["boxes"][:m], d["scores"][:m], d["labels"][:m]
        row = torch.cat([boxes, scores[:, None], labels[:, None].to(boxes.dtype)], 1)
        pad = row.new_zeros(m - row.shape[0], 6)
        pad[:, 5] = -1
        rows.append(torch.cat([row, pad]))
    return torch.stack(rows)


class BoxTarget:
    r"""Callable target ``detections [N, M, 6] -> scores [N]``, made by :func:`box_target`."""

    __slots__ = ("boxes", "labels", "iou_threshold", "rows_per_group")

    def __init__(self, boxes: torch.Tensor, labels: torch.Tensor, iou_threshold: float):
        self.boxes, self.labels, self.iou_threshold = boxes, labels, iou_threshold
        self.rows_per_group = 1

    def __call__(self, det: torch.Tensor) -> torch.Tensor:
        if not isinstance(det, torch.Tensor) or det.ndim != 3 or det.shape[-1] != 6:
            got = tuple(det.shape) if isinstance(det, torch.Tensor) else type(det).__name__
            raise ValueError(f"box_target: needs detections [N, M, 6] (box, score, label), got {got}; make the model "
                             "with fxai.functional(detector, output=fxai.detections)")
        given = self.boxes.to(det)
        iou = box_iou(given[None].expand(det.shape[0], -1, -1), det[..., :4])  # [N, K, M]
        best, index = iou.max(-1)
        labels = det[..., 5].gather(1, index)
        scores = det[..., 4].gather(1, index)
        hit = (best > self.iou_threshold) & (labels == self.labels.to(det))
        return torch.where(hit, best + scores, torch.zeros_like(best)).sum(-1)

    def __repr__(self) -> str:
        return f"box_target({len(self.boxes)} boxes, iou_threshold={self.iou_threshold})"


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes ``a [..., K, 4]`` and ``b [..., M, 4]`` (``x1, y1, x2, y2``): ``[..., K, M]``.
    """
    a, b = a[..., :, None, :], b[..., None, :, :]
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area - inter).clamp_min(1e-12)


def box_target(boxes, labels, *, iou_threshold: float = 0.5) -> BoxTarget:
    r"""A target for detectors: for each given box, the IoU plus the score of the detection that overlaps it
    most, when that IoU exceeds ``iou_threshold`` and the labels agree (0 otherwise), summed over the boxes.

    .. math:: s = \sum_k \big[\mathrm{IoU}_k > t \wedge l_{m_k} = l_k\big]\,(\mathrm{IoU}_k + p_{m_k}),\quad
              m_k = \arg\max_m \mathrm{IoU}(b_k, \hat b_m)

    pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``; its gradient flows through the detection's score
    and, through the IoU, its box. Typically the detections themselves: explain box ``k`` with
    ``box_target(boxes[k:k+1], labels[k:k+1])``, all of them with ``box_target(boxes, labels)``.

    Args:
        boxes: ``[K, 4]`` boxes ``x1, y1, x2, y2`` in the input's pixels, shared by every input.
        labels: ``[K]`` their class labels.
        iou_threshold: the overlap a detection needs to count (default 0.5).

    Returns:
        A callable ``detections [N, M, 6] -> scores [N]`` for a model made with
        ``fxai.functional(detector, output=fxai.detections)``.

    Example:
        >>> t = fxai.box_target(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([3]))
        >>> t(torch.tensor([[[0.0, 0, 4, 4, 0.9, 3]]]))
        tensor([1.9000])
    """
    boxes = torch.as_tensor(boxes)
    labels = torch.as_tensor(labels)
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
        raise ValueError(f"box_target: boxes must be a float tensor [K, 4] (x1, y1, x2, y2), got shape "
                         f"{tuple(boxes.shape)} {boxes.dtype}")
    if labels.shape != boxes.shape[:1]:
        raise ValueError(f"box_target: labels must be [K] = [{boxes.shape[0]}], one per box, got {tuple(labels.shape)}")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not 0 <= iou_threshold < 1:
        raise ValueError(f"box_target: iou_threshold must be a number in [0, 1), got {iou_threshold!r}")
    return BoxTarget(boxes.detach().clone(), labels.detach().clone(), float(iou_threshold))
