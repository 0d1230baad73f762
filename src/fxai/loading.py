"""Loading what a user points the command line at: torchvision or custom models, saved weights, image files,
the device. Problems with what was passed raise :class:`UsageError` with a one-line message."""

from __future__ import annotations

import importlib
import os

import torch
import torchvision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UsageError(ValueError):
    """A problem with what the user passed (a file, a name, an index): shown as one line."""


def resolve_device(device: str | None) -> torch.device:
    """``"auto"``/``None``: CUDA if available, else CPU; otherwise the named device (checked)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"--device {device!r} is not usable here: {str(err).splitlines()[0]}") from None
    return dev


def build_model(name: str, classes: int | None = None):
    """``(module, weights_enum_or_None)`` for a torchvision name (with ``classes`` outputs) or ``package.module:factory``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UsageError(f"cannot import {module_name!r} for --model {name!r}: {err}") from None
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise UsageError(f"--model {name!r}: {module_name} has no callable {attr!r}")
        model = factory()
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"--model {name!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
        return model, None
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = [m for m in available if name.lower().replace("-", "_") in m][:8]
        hint = f" (did you mean {', '.join(close)}?)" if close else " (e.g. resnet18, resnet50, vgg16, convnext_tiny)"
        raise UsageError(f"unknown model {name!r}: give a torchvision classification model name{hint} "
                         "or package.module:factory")
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return torchvision.models.get_model(name, weights=None, **({"num_classes": classes} if classes else {})), weights


def read_weights(path: str) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unreadable file
        raise UsageError(f"cannot read weights file {path}: {' '.join(str(err).split())[:200] or type(err).__name__} "
                         "(expected a state dict saved with torch.save)") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def classes_in(model, state: dict) -> int | None:
    """The number of classes ``state`` was trained for, read at the model's last linear layer."""
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    weight = state.get(f"{linears[-1]}.weight") if linears else None
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim == 2 else None


def load_weights(model, state: dict, path: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise UsageError(f"weights in {path} do not fit the model: {' '.join(detail.split())[:300]}") from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        parts = ([f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})"] if unexpected else [])
        raise UsageError(f"weights in {path} do not fit the model: {'; '.join(parts)}")


def pretrained(model_name: str, weights, device):
    try:
        return torchvision.models.get_model(model_name, weights=weights)
    except Exception as err:  # noqa: BLE001 - any download failure: explain the offline route
        filename = os.path.basename(weights.url)
        from torch.hub import get_dir

        raise UsageError(f"cannot get the pretrained weights of {model_name} ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:120]}); if offline, download {weights.url} elsewhere and pass "
                         f"it with --weights FILE, or place it at {os.path.join(get_dir(), 'checkpoints', filename)}") \
            from None


def input_channels(model) -> int:
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    return 3


def load_images(paths, channels: int, keep_size: bool, resize):
    """``[(path, original RGB tensor [C, H, W] in [0, 1])]`` after conversion and resizing."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF

    loaded = []
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                if img.mode == "P" and "transparency" in img.info:
                    img = img.convert("RGBA")
                if img.mode in ("RGBA", "LA"):
                    canvas = Image.new("RGB", img.size, (255, 255, 255))
                    canvas.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
                    img = canvas
                img = img.convert("L" if channels == 1 else "RGB")
        except UnidentifiedImageError:
            raise UsageError(f"cannot read image {path}: not a recognised image file") from None
        except OSError as err:
            raise UsageError(f"cannot read image {path}: {err}") from None
        if not keep_size:
            img = TF.center_crop(TF.resize(img, resize[0]), resize[1])
        tensor = TF.to_tensor(img)
        if channels not in (1, 3):
            raise UsageError(f"the model takes {channels} input channels; only 1 (grayscale) or 3 (RGB) are supported")
        loaded.append((path, tensor.to(torch.float32)))
    return loaded
