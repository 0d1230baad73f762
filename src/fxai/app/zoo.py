"""Models from the zoos: timm model names and HuggingFace image classifiers saved in a local folder, with the
preprocessing (resize, crop, mean and std) their own configuration states.

What ``fxai explain --model`` accepts besides torchvision names and factories:

- ``timm:NAME`` (e.g. ``timm:resnet18``, ``timm:vit_tiny_patch16_224``): ``timm.create_model(NAME)`` with
  random weights, ``--weights FILE`` (a state dict) or ``--pretrained`` (timm's download); preprocessing from
  ``timm.data.resolve_data_config`` (input size, ``crop_pct``, interpolation, mean, std).
- ``hf:FOLDER``, or a folder holding a ``config.json``: ``AutoModelForImageClassification.from_pretrained(FOLDER)``
  and, when the folder has one, its ``AutoImageProcessor`` for the preprocessing; class names from the config's
  ``id2label``. Nothing is downloaded: ``local_files_only=True`` (and ``HF_HUB_OFFLINE=1`` while transformers is imported).

timm and transformers are optional (``pip install 'fxai[zoo]'``).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .loading import IMAGENET_MEAN, IMAGENET_STD, UsageError, classes_in, load_weights, read_weights

_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the model's input: resize, center-crop, scale to [0, 1], ``(x - mean) / std``.

    ``resize`` is the short side (an int) or an exact ``(height, width)``; ``crop`` the center crop (an int for a
    square, ``(height, width)``, or ``None`` for none); ``interpolation`` a torchvision ``InterpolationMode`` name.
    """

    resize: int | tuple[int, int] | None = 256
    crop: int | tuple[int, int] | None = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"


DEFAULT = Preprocessing()


def is_zoo_name(name: str) -> bool:
    """Whether ``--model name`` asks for a timm model or a HuggingFace folder."""
    return name.startswith(("timm:", "hf:")) or os.path.isfile(os.path.join(name, "config.json"))


def load_model(name: str, *, weights: str | None = None, pretrained: bool = False):
    """``(module in eval mode, class names or None, Preprocessing)`` for ``timm:NAME``, ``hf:FOLDER`` or a folder.

    Example:
        >>> module, names, prep = load_model("timm:resnet18")  # random weights (needs timm)
        >>> prep.crop, prep.interpolation
        (224, 'bicubic')
    """
    if name.startswith("timm:"):
        return _timm_model(name.removeprefix("timm:"), weights, pretrained)
    return _hf_model(name.removeprefix("hf:"), weights, pretrained)


# ---------------------------------------------------------------- timm


def _import_timm():
    try:
        import timm
    except ImportError:
        raise UsageError("--model timm:NAME needs timm, which is not installed: pip install timm "
                         "(or pip install 'fxai[zoo]')") from None
    return timm


def _timm_model(name: str, weights: str | None, pretrained: bool):
    timm = _import_timm()
    if not name:
        raise UsageError("--model timm:NAME: give a timm model name, e.g. timm:resnet18")
    base = name.partition(".")[0]
    if not timm.is_model(base):
        known = timm.list_models()
        close = [m for m in known if m.startswith(base.lower())][:8] or difflib.get_close_matches(base, known, n=8)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models())"
        raise UsageError(f"--model timm:{name}: timm has no model {name!r}{hint}")
    if pretrained:
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as err:  # noqa: BLE001 - a download failure: explain the offline route
            raise UsageError(f"cannot get timm's pretrained weights of {name} ({type(err).__name__}: "
                             f"{' '.join(str(err).split())[:160]}); if offline, save the state dict elsewhere and pass "
                             "it with --weights FILE") from None
        return model.eval(), _imagenet_names(timm, model), timm_preprocessing(model)
    model = timm.create_model(name, pretrained=False)
    if weights:
        state = read_weights(weights)
        classes = classes_in(model, state)
        if classes is not None and classes != getattr(model, "num_classes", classes):
            model = timm.create_model(name, pretrained=False, num_classes=classes)  # fine-tuned to other classes
        load_weights(model, state, weights)
    return model.eval(), None, timm_preprocessing(model)


def _imagenet_names(timm, model):
    """ImageNet class names for a pretrained timm model that has ImageNet's classes (``None`` otherwise)."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
        subset = infer_imagenet_subset(model)
        return list(ImageNetInfo(subset).label_descriptions()) if subset else None
    except Exception:  # noqa: BLE001 - names are a nicety: without them classes show as numbers
        return None


def timm_preprocessing(model) -> Preprocessing:
    """timm's evaluation transform for ``model``: resize to ``floor(size / crop_pct)``, center-crop ``size``.

    ``crop_mode="squash"`` resizes both sides to ``floor(size / crop_pct)`` (no aspect kept); ``"center"`` and
    ``"border"`` resize the short side.
    """
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    crop_pct = cfg.get("crop_pct") or 1.0
    scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    resize = scale if cfg.get("crop_mode") == "squash" or h != w else scale[0]
    interpolation = cfg.get("interpolation", "bilinear")
    return Preprocessing(resize=resize, crop=(h, w) if h != w else h, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                         interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest")
                         else "bilinear")


# ---------------------------------------------------------------- HuggingFace


def _hf_model(folder: str, weights: str | None, pretrained: bool):
    if pretrained:
        raise UsageError("--pretrained: a HuggingFace folder holds its own weights; drop --pretrained")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise UsageError(f"--model hf:{folder}: not a HuggingFace model folder (no config.json in {folder!r}); save "
                         "one with model.save_pretrained(FOLDER)")
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is first imported: a local folder, no network
    try:
        from transformers import AutoImageProcessor, AutoModelForImageClassification
    except ImportError:
        raise UsageError("--model with a HuggingFace folder needs transformers, which is not installed: "
                         "pip install transformers (or pip install 'fxai[zoo]')") from None
    finally:  # the caller's environment as it was; local_files_only=True below keeps every read local
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    try:
        model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - a folder transformers cannot read: say why
        raise UsageError(f"cannot load an image classifier from {folder}: {type(err).__name__}: "
                         f"{' '.join(str(err).split())[:300]}") from None
    if weights:
        load_weights(model, read_weights(weights), weights)
    prep = DEFAULT
    if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        try:
            processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as err:  # noqa: BLE001
            raise UsageError(f"cannot read the image processor in {folder}: {type(err).__name__}: "
                             f"{' '.join(str(err).split())[:300]}") from None
        prep = hf_preprocessing(processor)
    labels = getattr(model.config, "id2label", None) or {}
    names = [str(labels[k]) for k in sorted(labels, key=int)] if labels else None
    return model.eval(), names, prep


def _size(value, key: str):
    """``size[key]`` of a processor's size (a dict, or transformers' ``SizeDict``); ``None`` when unset."""
    return value.get(key) if isinstance(value, Mapping) else getattr(value, key, None)


def hf_preprocessing(processor) -> Preprocessing:
    """The resize, crop, rescaling and normalisation a HuggingFace image processor applies.

    ``size={"height", "width"}`` resizes to exactly that; ``size={"shortest_edge": s}`` resizes the short side
    to ``s`` (ConvNeXt's processor: to ``s / crop_pct`` then crops ``s``, below 384); ``crop_size`` is
    center-cropped when ``do_center_crop``. A ``rescale_factor`` other than 1/255 is folded into mean and std.
    """
    get = lambda name, default=None: getattr(processor, name, default)  # noqa: E731
    size, resize, crop = get("size") or {}, None, None
    h = w = short = None
    if not isinstance(size, int):
        h, w, short = _size(size, "height"), _size(size, "width"), _size(size, "shortest_edge")
    if get("do_resize", True):
        if isinstance(size, int):
            resize = crop = (size, size)
        elif h and w:
            resize = crop = (int(h), int(w))
        elif short:
            crop_pct = get("crop_pct")
            if crop_pct and "ConvNext" in type(processor).__name__ and short < 384:
                resize, crop = int(short / crop_pct), int(short)
            elif "ConvNext" in type(processor).__name__:
                resize = crop = (int(short), int(short))  # ConvNeXt warps to a square from 384 up
            else:
                resize = int(short)
    if get("do_center_crop", False) and get("crop_size"):
        ch, cw = _size(get("crop_size"), "height"), _size(get("crop_size"), "width")
        if ch and cw:
            crop = (int(ch), int(cw))
    scale = float(get("rescale_factor", 1 / 255)) * 255 if get("do_rescale", True) else 255.0
    if get("do_normalize", True) and get("image_mean") is not None:
        mean, std = get("image_mean"), get("image_std")
        mean = (mean,) * 3 if isinstance(mean, (int, float)) else tuple(mean)
        std = (std,) * 3 if isinstance(std, (int, float)) else tuple(std)
    else:
        mean, std = (0.0,) * 3, (1.0,) * 3
    mean = tuple(float(m) / scale for m in mean)  # (raw * 255 * factor - mean) / std, with raw in [0, 1]
    std = tuple(float(s) / scale for s in std)
    return Preprocessing(resize=resize, crop=crop, mean=mean, std=std, interpolation=_interpolation(get("resample")))


def _interpolation(resample) -> str:
    value = getattr(resample, "value", resample)
    if isinstance(value, str):
        return value.lower()
    return _PIL_FILTERS.get(value, "bilinear") if isinstance(value, int) else "bilinear"
