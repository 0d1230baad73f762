"""Loading what a user points the command line at: torchvision or custom models, saved weights, image files,
the device. Problems with what was passed raise :class:`UsageError` with a one-line message."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import numpy as np
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


def _import_factory_module(module_name: str, name: str):
    """The module of ``--model MODULE:FACTORY``: a file path (``path/to/net.py``) or a dotted name importable from
    the current folder (as ``python -m`` would find it)."""
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise UsageError(f"--model {name!r}: file not found: {module_name}")
        spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
        module = importlib.util.module_from_spec(spec)
        folder = os.path.dirname(path)
        added = folder not in sys.path
        if added:                                        # the file's own folder, for its sibling imports
            sys.path.insert(0, folder)
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001 - the user's file failed: say where
            raise UsageError(f"--model {name!r}: running {module_name} failed: {type(err).__name__}: {err}") from None
        finally:
            if added:
                sys.path.remove(folder)
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(f"cannot import {module_name!r} for --model {name!r} ({err}); run fxai from the folder that "
                         f"holds {module_name.split('.')[0]!r}, add that folder to PYTHONPATH, or give the file: "
                         f"--model path/to/{module_name.split('.')[-1]}.py:{name.partition(':')[2]}") from None


def build_model(name: str, classes: int | None = None):
    """``(module, weights_enum_or_None)`` for a torchvision name (with ``classes`` outputs), ``package.module:factory``
    (importable from the current folder) or ``path/to/file.py:factory``."""
    if ":" in name:
        module_name, _, attr = name.rpartition(":")
        module = _import_factory_module(module_name, name)
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
    """The state dict in ``path`` (a plain one, or one held by a checkpoint), read with ``weights_only``."""
    if not os.path.isfile(path):
        raise UsageError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unreadable file
        raise UsageError(f"cannot read weights file {path}: {_load_cause(err)}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_cause(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to load unsafely."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    cause = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("WeightsUnpickler error")), None)
    if cause is not None:
        cause = cause.split(". ")[0].rstrip(".")
        return (f"it holds Python objects, not only tensors ({cause}); save the model's state dict instead: "
                "torch.save(model.state_dict(), FILE)")
    safe = [ln for ln in lines if "weights_only" not in ln and "Weights only load failed" not in ln]
    detail = " ".join(safe) or type(err).__name__
    return f"{detail} (expected a state dict saved with torch.save)"


def classes_in(model, state: dict) -> int | None:
    """The number of classes ``state`` was trained for, read at the model's last linear layer."""
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    weight = state.get(f"{linears[-1]}.weight") if linears else None
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim == 2 else None


def load_weights(model, state: dict, path: str) -> None:
    """Load ``state`` into ``model``; keys or shapes that do not fit give a :class:`UsageError`."""
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
    """torchvision's model with its pretrained ``weights``; offline, the error says which file to fetch."""
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
    """The number of input channels the model's first convolution takes (3 without one)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    return 3


def load_images(paths, channels: int, keep_size: bool, resize, interpolation: str = "bilinear"):
    """``[(path, original RGB tensor [C, H, W] in [0, 1])]`` after conversion and resizing.

    ``resize = (size, crop)``: ``size`` is the short side (an int) or an exact ``(height, width)``, ``crop`` the
    center crop (``None``: none); ``interpolation`` names a torchvision ``InterpolationMode``."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF

    loaded = []
    for path in paths:
        if os.path.isdir(path):
            raise UsageError(f"image {path} is a directory; give image files (e.g. {os.path.join(path, '*.png')})")
        if not os.path.isfile(path):
            raise UsageError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                if img.mode in _DEEP_MODES:
                    img = _deep_to_float(img)
                else:
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
        if not keep_size and resize[0] is not None:
            img = TF.resize(img, resize[0], interpolation=TF.InterpolationMode(interpolation))
        if not keep_size and resize[1] is not None:
            img = TF.center_crop(img, resize[1])
        if channels not in (1, 3):
            raise UsageError(f"the model takes {channels} input channels; only 1 (grayscale) or 3 (RGB) are supported")
        if img.mode == "F":
            tensor = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).clamp(0, 1)[None]
            tensor = tensor.expand(channels, -1, -1).contiguous()
        else:
            tensor = TF.to_tensor(img)
        loaded.append((path, tensor.to(torch.float32)))
    return loaded


_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
DEPTHS = (8, 10, 12, 14, 16, 32)


def _deep_to_float(img):
    """A grayscale image of more than 8 bits as a float image in [0, 1].

    Integer images (16-bit PNG/TIFF, mode ``I;16`` or ``I``) are divided by :math:`2^b - 1` for the
    smallest common bit depth ``b`` (8, 10, 12, 14, 16, 32) that holds their largest value: a 12-bit
    scan stored in 16 bits spans [0, 1] (a 16-bit image whose values all stay below 4096 reads as
    12-bit). Float images (mode ``F``) already in [0, 1] are kept; others are scaled from their
    minimum to their maximum.
    """
    from PIL import Image

    values = np.asarray(img.convert("I") if img.mode.startswith("I;16") else img).astype(np.float64)
    if img.mode == "F":
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    else:
        values = np.clip(values, 0, None)
        peak = float(values.max())
        depth = next((b for b in DEPTHS if peak <= 2 ** b - 1), DEPTHS[-1])
        values = values / (2 ** depth - 1)
    return Image.fromarray(values.astype(np.float32), mode="F")


def check_writable(out: str) -> None:
    """Create the output folder ``out`` if needed and check that files can be written there."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".fxai-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise UsageError(f"output folder {out!r} is not writable: {err.strerror or err}") from None


def torchvision_task_model(name: str, weights: str | None, device):
    """``(module in eval mode on device, class names)`` of a torchvision detector or segmenter called ``name``,
    with the state dict in the file ``weights`` (random weights and no class names without one: names would
    mislead)."""
    import torchvision

    module = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    names = list(torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories", ()))
    if weights:
        load_weights(module, read_weights(weights), weights)
    else:
        names = []
    return module.to(device).eval(), names

