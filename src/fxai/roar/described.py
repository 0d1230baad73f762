"""Model files that say how to rebuild their model: the demo's ``model.pt`` and ``fxai roar``'s
``model.safetensors`` carry, beside the weights, the architecture, its width, the number of classes and
their names, and the preprocessing, so ``fxai explain --weights FILE`` (or ``--model FILE``) needs nothing else.

In a ``torch.save`` checkpoint the description is the dict under :data:`KEY`; in a safetensors file it is
the JSON text of the metadata entry :data:`KEY`.
"""

from __future__ import annotations

import json
import os

KEY = "fxai_model"


def description(arch: str, *, classes: int, width: int, channels: int = 3, size: int | None = None,
                class_names=None, mean=None, std=None) -> dict:
    """What rebuilds a network of :func:`fxai.roar.nets.build` (``smallcnn``, ``resnet8``, ``resnet20``) and
    prepares its inputs: images resized (short side) and center-cropped to ``size``, then ``(x - mean) / std``
    (default: no normalisation, the inputs in [0, 1]).

    Example:
        >>> description("smallcnn", classes=4, width=24, size=32)["arch"]
        'smallcnn'
    """
    return {"arch": arch, "classes": int(classes), "width": int(width), "channels": int(channels),
            "size": None if size is None else int(size),
            "class_names": None if class_names is None else [str(n) for n in class_names],
            "mean": list(mean) if mean is not None else [0.0] * channels,
            "std": list(std) if std is not None else [1.0] * channels}


def safetensors_metadata(desc: dict) -> dict:
    """``desc`` as safetensors metadata (string values only)."""
    return {KEY: json.dumps(desc)}


def read(path: str) -> tuple[dict, dict] | None:
    """``(description, state dict)`` of a described model file, or ``None`` for any other file."""
    if not os.path.isfile(path):
        return None
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(path, "pt") as fh:
                meta = fh.metadata() or {}
        except Exception:  # noqa: BLE001 - not a readable safetensors file: not a described one either
            return None
        if KEY not in meta:
            return None
        return json.loads(meta[KEY]), load_file(path)
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the ordinary weights reader gives the error
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get(KEY), dict):
        return None
    state = saved.get("model", saved.get("state_dict"))
    if not isinstance(state, dict):
        return None
    return saved[KEY], state


def rebuild(desc: dict, state: dict):
    """The module (in eval mode, weights loaded) of :func:`read`'s pair."""
    from .nets import build

    module = build(desc["arch"], desc["classes"], channels=desc.get("channels", 3), width=desc["width"],
                   size=desc.get("size"))
    module.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return module.eval()
