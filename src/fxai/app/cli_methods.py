"""What ``--method`` and ``--option`` name, in every command (explain, roar, extract, evaluate): one spelling.

- methods: comma-separated registry names; a transform applied to a method is ``TRANSFORM:METHOD``
  (``smoothgrad_sq:gradient``; the older ``smoothgrad_sq(gradient)`` is still accepted, with a note);
- options: ``--option NAME=VALUE`` (repeatable) for every chosen method that takes ``NAME``, or
  ``--option METHOD.NAME=VALUE`` for one method; values read as int, float, true/false/none or
  comma-separated tuples (the older ``--options JSON`` of roar and extract is still accepted, with a note).

:func:`method_names` and :func:`parse_options` are what commands call; :func:`parse_methods` gives
``fxai explain`` its registry rows.
"""

from __future__ import annotations

import json
import re
import sys

from .._core.checks import closest, unknown_name
from .loading import UsageError

_OLD_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")


def note(text: str) -> None:
    """A one-line note on stderr (an older spelling that still works)."""
    print(f"fxai: note: {text}", file=sys.stderr)


def method_names(text: str, *, flag: str = "--method") -> list[str]:
    """The comma-separated names of ``text`` in the one spelling (``TRANSFORM:METHOD`` for a transform);
    ``TRANSFORM(METHOD)`` is rewritten with a note. Names are not checked here.

    Example:
        >>> method_names("gradient, smoothgrad_sq:gradient")
        ['gradient', 'smoothgrad_sq:gradient']
    """
    out, old = [], []
    for part in _split_outside_parentheses(text):
        match = _OLD_SPEC.match(part)
        if match:
            old.append(part.strip())
            part = f"{match.group(1)}:{match.group(2)}"
        if part.strip():
            out.append(part.strip())
    if old:
        note(f"{flag} {', '.join(old)}: write {', '.join(n for n in out if ':' in n)} (TRANSFORM:METHOD, no "
             "quoting needed); the older spelling still works")
    return out


def _split_outside_parentheses(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def spelled(name: str) -> str:
    """A registry row's name in the one spelling: ``smoothgrad_sq(gradient)`` -> ``smoothgrad_sq:gradient``."""
    match = _OLD_SPEC.match(name)
    return f"{match.group(1)}:{match.group(2)}" if match else name


def as_roar_spec(name: str) -> str:
    """``TRANSFORM:METHOD`` as the ROAR grid names it internally (``TRANSFORM(METHOD)``)."""
    transform, _, base = name.rpartition(":")
    return f"{transform}({base})" if transform else base


def parse_methods(text: str, settings: dict) -> list:
    """Registry rows for ``--method``: names, ``all``, or ``TRANSFORM:METHOD`` (the transform takes ``samples`` and
    ``sigma`` from ``settings``)."""
    from ..registry import METHODS, TRANSFORMS, applied

    names = method_names(text)
    if names == ["all"]:
        return list(METHODS.values())
    if not names:
        raise UsageError("--method is empty; give comma-separated names, e.g. gradient,grad_cam")
    rows = []
    for name in dict.fromkeys(names):
        transform, _, base = name.rpartition(":")
        if base not in METHODS:
            raise UsageError(unknown_name("method", base, METHODS) + " (in --method)")
        if not transform:
            rows.append(METHODS[base])
            continue
        if transform not in TRANSFORMS:
            raise UsageError(unknown_name("transform", transform, TRANSFORMS) + f" (in --method {name})")
        given = {k: v for k, v in options_for(name, settings).items() if k in ("samples", "sigma")}
        rows.append(applied(TRANSFORMS[transform], METHODS[base], **given))
    return rows


_RESERVED = {"model_fn": None, "params": None, "x": None, "target": "--target", "layer": "--layer", "key": "--seed",
             "references": None, "chunk_size": "--chunk-size", "options": None}


def parse_options(items: list[str], *, legacy_json: str | None = None) -> dict:
    """``--option [METHOD.]NAME=VALUE`` pairs as ``{NAME: value}`` for every method and ``{METHOD: {NAME: value}}``
    for one; values read as int, float, true/false/none or comma-separated tuples. ``legacy_json``: the older
    ``--options`` JSON object (``{METHOD: {NAME: value}}``), merged under the pairs, with a note.

    Example:
        >>> parse_options(["steps=16", "rise.num_masks=500", "window=8,8"])
        {'steps': 16, 'rise': {'num_masks': 500}, 'window': (8, 8)}
    """
    out: dict = {}
    if legacy_json is not None:
        try:
            value = json.loads(legacy_json)
        except json.JSONDecodeError as err:
            raise UsageError(f"--options: not valid JSON ({err})") from None
        if not isinstance(value, dict):
            raise UsageError("--options: expected a JSON object")
        pairs = [f"{m}.{k}={v}" if isinstance(o, dict) else f"{m}={o}" for m, o in value.items()
                 for k, v in (o.items() if isinstance(o, dict) else [(None, None)])]
        note(f"--options JSON: write --option {' --option '.join(pairs)}; the older spelling still works")
        for m, o in value.items():
            if isinstance(o, dict):
                out.setdefault(m.replace("(", ":").rstrip(")") if "(" in m else m, {}).update(o)
            else:
                out[m] = o
    for item in items:
        name, eq, text = item.partition("=")
        name = name.strip().replace("-", "_")
        method, _, name = name.rpartition(".")
        if not eq or not name.isidentifier() or not text.strip() or (method and not method.replace(":", "").replace(
                "_", "a").isalnum()):
            raise UsageError(f"--option must be NAME=VALUE or METHOD.NAME=VALUE (e.g. steps=64, window=16,16 or "
                             f"integrated_gradients.steps=64), got {item!r}")
        if name in _RESERVED:
            hint = f"; use {_RESERVED[name]}" if _RESERVED[name] else ""
            raise UsageError(f"--option {name}: not a method option{hint}")
        parts = [_value(v) for v in text.split(",")]
        value = parts[0] if len(parts) == 1 else tuple(parts)
        if method:
            out.setdefault(method, {})[name] = value
        else:
            out[name] = value
    return out


def options_for(name: str, settings: dict, takes: set | None = None) -> dict:
    """The options of method ``name`` (``TRANSFORM:METHOD`` or a plain name) in ``settings`` from
    :func:`parse_options`: the shared ones it takes (all when ``takes`` is ``None``), then its own."""
    shared = {k: v for k, v in settings.items() if not isinstance(v, dict) and (takes is None or k in takes)}
    return {**shared, **settings.get(name, {})}


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
    """Refuse an ``--option`` that none of the chosen methods takes (or a ``METHOD.`` prefix naming a method that
    was not chosen, or an option that method does not take), naming it and the methods."""
    chosen = {spelled(info.name): info for info in methods}
    for method, value in options.items():
        if not isinstance(value, dict):
            continue
        if method not in chosen:
            raise UsageError(f"--option {method}.NAME: {method!r} is not among the chosen methods "
                             f"({', '.join(chosen)})")
        for name in value:
            if name not in accepted(chosen[method]):
                takes = sorted(accepted(chosen[method]) - set(_RESERVED))
                close = closest(name, takes)
                hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
                raise UsageError(f"--option {method}.{name}: {method} does not take {name!r}; {hint}it takes: "
                                 f"{', '.join(takes) or 'no options'}")
    for name in (k for k, v in options.items() if not isinstance(v, dict)):
        if not any(name in accepted(info) for info in methods):
            takes = sorted(set().union(*(accepted(info) for info in methods)) - set(_RESERVED))
            chosen = ", ".join(m.name for m in methods)
            close = closest(name, takes)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise UsageError(f"--option {name}: none of the chosen methods ({chosen}) takes "
                             f"{name!r}; {hint}they take: {', '.join(takes) or 'no options'}")


def help_epilog() -> str:
    """The end of ``fxai explain --help``: the methods, the transforms and their options."""
    from ..registry import METHODS, TRANSFORMS

    def opts(info):
        skip = {"model_fn", "params", "x", "target", "layer", "key", "references", "options", "chunk_size"}
        names = [n for n, p in info.parameters.items() if n not in skip and p.kind == p.KEYWORD_ONLY]
        return f"{info.name}" + (f" ({', '.join(names)})" if names else "")

    lines = ["methods and their options (--option NAME=VALUE for every chosen method that takes it, "
             "--option METHOD.NAME=VALUE for one):"]
    lines += [f"  {opts(info)}" for info in METHODS.values()]
    lines += ["transforms (--method TRANSFORM:METHOD; options samples, sigma):",
              "  " + ", ".join(TRANSFORMS)]
    return "\n".join(lines)
