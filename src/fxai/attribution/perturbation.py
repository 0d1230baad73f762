"""Attribution by evaluating masked inputs: Score-CAM, Ablation-CAM, RISE, occlusion."""

from __future__ import annotations

from .cam import _todo

score_cam = _todo("score_cam")
ablation_cam = _todo("ablation_cam")
rise = _todo("rise")
occlusion = _todo("occlusion")
