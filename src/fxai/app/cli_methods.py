"""What ``fxai explain --method`` and ``--option`` name: registry rows (a transform applied as
``TRANSFORM:METHOD``) and method options read as Python values, checked against the methods' signatures."""

from __future__ import annotations

from .loading import UsageError


def parse_methods(text: str, settings: dict) -> list:
    """Registry rows for ``--method``: names, ``all``, or ``TRANSFORM:METHOD`` (the transform takes ``samples`` and
    ``sigma`` from ``settings``)."""
    from ..registry import METHODS, TRANSFORMS, applied

    names = [m.strip() for m in text.split(",") if m.strip()]
    if names == ["all"]:
        return list(METHODS.values())
    if not names:
        raise UsageError("--method is empty; give comma-separated names, e.g. gradient,grad_cam")
    rows = []
    for name in dict.fromkeys(names):
        transform, _, base = name.rpartition(":")
        if base not in METHODS:
            raise UsageError(f"unknown method {base!r} in --method; available: {', '.join(METHODS)}")
        if not transform:
            rows.append(METHODS[base])
            continue
        if transform not in TRANSFORMS:
            raise UsageError(f"unknown transform {transform!r} in --method {name}; available: {', '.join(TRANSFORMS)}")
        given = {k: settings[k] for k in ("samples", "sigma") if k in settings}
        rows.append(applied(TRANSFORMS[transform], METHODS[base], **given))
    return rows


_RESERVED = {"model_fn": None, "params": None, "x": None, "target": "--target", "layer": "--layer", "key": "--seed",
             "references": None, "chunk_size": "--chunk-size", "options": None}


def parse_options(items: list[str]) -> dict:
    """``--option NAME=VALUE`` pairs; values read as int, float, true/false/none or comma-separated tuples."""
    out = {}
    for item in items:
        name, eq, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not name.isidentifier() or not text.strip():
            raise UsageError(f"--option must be NAME=VALUE (e.g. steps=64 or window=16,16), got {item!r}")
        if name in _RESERVED:
            hint = f"; use {_RESERVED[name]}" if _RESERVED[name] else ""
            raise UsageError(f"--option {name}: not a method option{hint}")
        parts = [_value(v) for v in text.split(",")]
        out[name] = parts[0] if len(parts) == 1 else tuple(parts)
    return out


def _value(text: str):
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lowered]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def accepted(info) -> set:
    """The option names ``info``'s method accepts (of the method a transform returns, for transforms)."""
    names = {n for n, p in info.parameters.items() if p.kind == p.KEYWORD_ONLY}
    if "options" in info.parameters:                     # a transformed method: its own settings and the base's
        names |= {"samples", "sigma"}
    return names


def check_options(options: dict, methods: list) -> None:
    """Refuse an ``--option`` that none of the chosen methods takes, naming it and the methods."""
    for name in options:
        if not any(name in accepted(info) for info in methods):
            takes = sorted(set().union(*(accepted(info) for info in methods)) - set(_RESERVED))
            chosen = ", ".join(m.name for m in methods)
            raise UsageError(f"--option {name}: none of the chosen methods ({chosen}) takes "
                             f"{name!r}; they take: {', '.join(takes) or 'no options'}")


def help_epilog() -> str:
    """The end of ``fxai explain --help``: the methods, the transforms and their options."""
    from ..registry import METHODS, TRANSFORMS

    def opts(info):
        skip = {"model_fn", "params", "x", "target", "layer", "key", "references", "options", "chunk_size"}
        names = [n for n, p in info.parameters.items() if n not in skip and p.kind == p.KEYWORD_ONLY]
        return f"{info.name}" + (f" ({', '.join(names)})" if names else "")

    lines = ["methods and their options (--option NAME=VALUE):"]
    lines += [f"  {opts(info)}" for info in METHODS.values()]
    lines += ["transforms (--method TRANSFORM:METHOD; options samples, sigma):",
              "  " + ", ".join(TRANSFORMS)]
    return "\n".join(lines)
