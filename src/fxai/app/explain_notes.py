"""What ``fxai explain`` tells about its model and maps: random weights, ties between classes, constant maps,
methods that will take long, and what a grid page shows."""

from __future__ import annotations

from .cli_methods import spelled

RANDOM_WEIGHTS = "random weights: maps describe an untrained network"


LONG = 20.0   # seconds: a method estimated to take longer per image says so before it starts


def cost_warning(info, options: dict, forward: float, size, device) -> str | None:
    """A line saying that ``info`` will take long, and which option bounds it, or ``None``.

    The estimate: the passes its ``cost`` options ask for (RISE's masks, IG's steps, ...) times the time of one
    forward pass (three for methods that also go backward)."""
    passes, named = 1, []
    for name in info.cost:
        value = options.get(name, getattr(info.parameters.get(name), "default", None))
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            passes *= value
            named.append(f"{name}={value}")
    estimate = passes * forward * (1 if info.family == "mask" else 3)
    if not named or estimate < LONG:
        return None
    first, value = named[0].split("=")
    smaller = max(2, int(int(value) * LONG / estimate))
    return (f"{info.name}: {', '.join(named)} at {size[0]}×{size[1]} on {device.type} will take about "
            f"{estimate:.0f} s per image; bound it with --option {spelled(info.name)}.{first}={smaller} "
            "(fewer passes, a noisier map) or a smaller --resize")


GRID_WRAP, GRID_BANDS = 6, 4   # panels per row, rows per page of grid.png (2-inch cells: a page fits a screen)


def ranked(logits) -> list[int]:
    """Class indices by decreasing score; ties in index order (the console and the figures agree)."""
    import torch

    return [int(c) for c in torch.sort(logits, descending=True, stable=True).indices]


def ranked_batch(logits) -> list[int]:
    """The top class of each row, ties to the lowest index (as :func:`ranked`)."""
    return [ranked(row)[0] for row in logits]


def constant_text(flat) -> str:
    """How a constant map ``flat`` reads: identically zero, or constant at its value."""
    value = float(flat[0])
    return "identically zero" if value == 0 else f"constant ({value:.3g} everywhere)"


def constant_cause(untrained: bool, logits) -> str:
    """The likely cause of a constant map, from the model's ``logits`` and whether its weights are random."""
    if bool((logits == logits[0]).all()):
        return ("every class has the same score: the output does not depend on the input (e.g. a zero-initialised "
                "head, as a random ViT's)" + (f"; {RANDOM_WEIGHTS}" if untrained else ""))
    if untrained:
        return f"likely cause: {RANDOM_WEIGHTS} (e.g. a zero-initialised layer)"
    return "likely cause: the class score does not depend on the input at this layer (e.g. a dead or zero layer)"


def grid_title(sign: str, methods) -> str:
    """What the grid shows, for the kinds of methods that ran only."""
    from .. import viz

    parts = []
    if any(m.kind == "pixel" for m in methods):
        parts.append(f"pixel maps: {SIGN_TEXT[sign]}")
    if any(m.kind == "cam" and viz.origin_for(m.kind, m.family) == "zero" for m in methods):
        parts.append("CAMs: positive part")
    if any(viz.origin_for(m.kind, m.family) == "min" for m in methods):
        parts.append("RISE: above its minimum")
    return "; ".join(parts)


SIGN_TEXT = {"positive": "positive part of the channel sum", "negative": "negative part of the channel sum",
              "absolute": "|a| summed over channels", "all": "channel sum, signed"}
