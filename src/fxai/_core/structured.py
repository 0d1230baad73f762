"""Structured inputs: ``x`` as a tuple, list or dict of tensors with a common batch axis.

A method that accepts them sees one tensor: the attributed leaves packed side
by side (a single attributed leaf is passed as it is, shape and all), and a
``model_fn`` that unpacks its rows into the structure again. Leaves that are
not attributed (integer or boolean tensors such as token ids and attention
masks, and any tensor wrapped in :func:`fixed`) ride along: a row ``r`` of a
stack of copies of the batch (noise samples, path steps, masks) belongs to
input ``r % B``, the convention every method already keeps for its targets, and
each chunked pass declares the first row it evaluates (:func:`rows_from`), so
the model gets each row's own riders. Maps come back in the structure of ``x``,
with ``None`` at the leaves that are not attributed.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

_ROW_START: contextvars.ContextVar = contextvars.ContextVar("fxai_row_start", default=None)

SUPPORTED = ("gradient, input_x_gradient, guided_backprop, deconvnet, integrated_gradients, expected_gradients, "
             "the SmoothGrad transforms, occlusion and rise")


class Fixed:
    """A tensor of a structured input that is not attributed (see :func:`fixed`)."""

    __slots__ = ("value",)

    def __init__(self, value: torch.Tensor):
        self.value = value

    def __repr__(self) -> str:
        return f"fixed(tensor of shape {tuple(self.value.shape)})"


def fixed(tensor: torch.Tensor) -> Fixed:
    """Mark one leaf of a structured input as not attributed: it travels with its batch rows.

    Integer and boolean leaves (token ids, masks) are never attributed and need
    no mark; wrap floating ones (per-sample conditioning, a second image held
    fixed) whose attribution is not wanted. Maps hold ``None`` there.

    Example:
        >>> model_fn = lambda p, inputs: (inputs[0].flatten(1) * inputs[1]) @ p["w"]
        >>> x2 = (torch.rand(2, 12), torch.rand(2, 12))
        >>> g_img, g_cond = fxai.gradient(model_fn, {"w": torch.randn(12, 5)}, (x2[0], fxai.fixed(x2[1])), 3)
        >>> g_cond is None
        True
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"fixed(tensor): expected a torch.Tensor, got {type(tensor).__name__}")
    return Fixed(tensor)


@contextlib.contextmanager
def rows_from(start: int | None):
    """Within the block, the model evaluates stacked rows starting at row ``start`` (``None``: the batch itself)."""
    token = _ROW_START.set(start)
    try:
        yield
    finally:
        _ROW_START.reset(token)


def each(fn, maps):
    """``fn`` applied to every map of a tensor or structured result (``None`` left as it is)."""
    return tree_map(lambda m: None if m is None else fn(m), maps)


def is_structured(x) -> bool:
    """Whether ``x`` is a structured input (a tuple, list or dict) rather than one tensor."""
    return isinstance(x, (tuple, list, dict))


def plain(x):
    """``x`` with every :func:`fixed` mark removed: what the model is called with."""
    return tree_map(lambda leaf: leaf.value if isinstance(leaf, Fixed) else leaf, x) if is_structured(x) else x


def leaves(x) -> list[torch.Tensor]:
    """The tensors of ``x`` (a tensor or a structure), marks removed."""
    return [x] if isinstance(x, torch.Tensor) else [t for t in tree_flatten(plain(x))[0] if isinstance(t, torch.Tensor)]


def batch_size(x) -> int:
    """The batch size of a tensor or structured input."""
    return x.shape[0] if isinstance(x, torch.Tensor) else Structure(x).batch


def device_of(x) -> torch.device:
    """The device of a tensor or of a structured input's first tensor."""
    return leaves(x)[0].device


def clone(x):
    """A copy of every tensor of ``x`` (a model may write into its input)."""
    return x.clone() if isinstance(x, torch.Tensor) else tree_map(
        lambda t: t.clone() if isinstance(t, torch.Tensor) else t, plain(x))


class Structure:
    """A structured input taken apart: attributed leaves, riders, the batch size, and how to put it back."""

    def __init__(self, x, *, name: str = "x"):
        flat, self.spec = tree_flatten(x)
        if not flat:
            raise ValueError(f"{name} is an empty {type(x).__name__}; give at least one tensor")
        self.attributed: list[int] = []
        self.leaves: list[torch.Tensor] = []
        for i, leaf in enumerate(flat):
            value = leaf.value if isinstance(leaf, Fixed) else leaf
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name}: every leaf of a structured input must be a tensor (or fxai.fixed(tensor)); "
                                f"leaf {i} is {type(value).__name__}")
            if value.ndim == 0:
                raise ValueError(f"{name}: leaf {i} is a scalar tensor; every leaf needs the batch axis first [B, ...]")
            if not isinstance(leaf, Fixed) and value.is_floating_point():
                self.attributed.append(i)
            self.leaves.append(value)
        self.batch = self.leaves[0].shape[0]
        sizes = [t.shape[0] for t in self.leaves]
        if any(s != self.batch for s in sizes):
            raise ValueError(f"{name}: every leaf needs the same batch size on its first axis, got {sizes}")
        if not self.attributed:
            raise ValueError(f"{name}: no leaf to attribute: every leaf is fixed or not floating-point; leave at least "
                             "one floating tensor unmarked")
        first = self.leaves[self.attributed[0]]
        for i in self.attributed:
            t = self.leaves[i]
            if t.dtype != first.dtype or t.device != first.device:
                raise TypeError(f"{name}: attributed leaves must share one dtype and device; leaf {i} is {t.dtype} on "
                                f"{t.device}, leaf {self.attributed[0]} is {first.dtype} on {first.device}")
        self.shapes = [self.leaves[i].shape[1:] for i in self.attributed]
        self.sizes = [math.prod(s) for s in self.shapes]

    @property
    def single(self) -> bool:
        return len(self.attributed) == 1

    def pack(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Attributed leaves ``[N, ...]`` as one tensor: the leaf itself, or the leaves flattened side by side."""
        return parts[0] if self.single else torch.cat([p.reshape(p.shape[0], -1) for p in parts], 1)

    def unpack(self, packed: torch.Tensor) -> list[torch.Tensor]:
        """The inverse of :meth:`pack` on rows ``[N, ..., D]`` (extra axes, e.g. K targets, kept)."""
        if self.single:
            return [packed]
        pieces = packed.split(self.sizes, dim=-1)
        return [p.reshape(*p.shape[:-1], *s) for p, s in zip(pieces, self.shapes)]

    def packed_input(self) -> torch.Tensor:
        return self.pack([self.leaves[i] for i in self.attributed])

    def riders(self) -> dict[int, torch.Tensor]:
        return {i: t for i, t in enumerate(self.leaves) if i not in self.attributed}

    def rebuild(self, attributed: list, riders: dict) -> object:
        """The structure of ``x`` with these attributed leaves and riders (marks removed)."""
        flat = [None] * len(self.leaves)
        for i, t in zip(self.attributed, attributed):
            flat[i] = t
        for i, t in riders.items():
            flat[i] = t
        return tree_unflatten(flat, self.spec)

    def maps(self, packed_map: torch.Tensor):
        """A method's map of the packed input, in the structure of ``x`` (``None`` at the riders)."""
        return self.rebuild(self.unpack(packed_map), {i: None for i in self.riders()})

    def model(self, model_fn):
        """``model_fn`` on packed rows: the rows unpacked, each row's riders beside them."""
        riders, batch = self.riders(), self.batch

        def packed_model(params, rows):
            start = _ROW_START.get()
            n = rows.shape[0]
            if start is None and n != batch:
                raise ValueError(f"structured inputs: this method evaluated {n} rows of a batch of {batch} without "
                                 f"saying which inputs they belong to; structured inputs work with {SUPPORTED}")
            if start is None or (start == 0 and n == batch):
                own = riders
            else:
                index = torch.arange(start, start + n, device=rows.device) % batch
                own = {i: r.index_select(0, index.to(r.device)) for i, r in riders.items()}
            return model_fn(params, self.rebuild(self.unpack(rows), own))

        return packed_model

    def option(self, value, name: str, x):
        """A per-input option (``baseline``, ``references``) given as a structure like ``x`` (a number or a tensor
        broadcastable to each attributed leaf, anything at the others), packed. A number passes through, a
        tensor too when one leaf is attributed, and a callable is called on ``x`` first."""
        if callable(value) and not isinstance(value, torch.Tensor):
            value = value(plain(x))
        if not is_structured(value):
            if isinstance(value, torch.Tensor) and not self.single:
                raise TypeError(f"{name}: x has {len(self.attributed)} attributed leaves; give {name} as a structure "
                                "like x's (a value per leaf, anything at the fixed ones) or as one number")
            return value
        flat, spec = tree_flatten(value, is_leaf=lambda v: v is None)
        if spec != self.spec:
            raise ValueError(f"{name} must have the structure of x ({self.spec}); got {spec}")
        parts = []
        for i, shape in zip(self.attributed, self.shapes):
            v, like = flat[i], self.leaves[i]
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = torch.tensor(float(v))
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{name}: leaf {i} must be a number or a tensor, got {type(v).__name__}")
            v = v.to(like).reshape((1,) * max(0, like.ndim - v.ndim) + tuple(v.shape))
            try:
                parts.append(v.expand(v.shape[0], *shape))
            except RuntimeError:
                raise ValueError(f"{name}: leaf {i} of shape {tuple(v.shape)} does not broadcast to x's leaf of "
                                 f"shape {tuple(like.shape)}") from None
        rows = {p.shape[0] for p in parts} - {1}
        if len(rows) > 1:
            raise ValueError(f"{name}: its leaves have different numbers of rows {sorted(rows)}")
        n = rows.pop() if rows else 1
        return self.pack([p.expand(n, *p.shape[1:]) for p in parts])


PACKED_OPTIONS = ("baseline", "references")


def accepts_structured(method=None, *, one_leaf: bool = False):
    """Let ``method`` (one tensor ``x``) take structured inputs: packed in, maps unpacked out.

    A plain tensor ``x`` goes straight to ``method``. ``one_leaf``: the method needs the attributed leaf's own
    shape (an image to mask), so exactly one leaf may be attributed.
    """
    if method is None:
        return functools.partial(accepts_structured, one_leaf=one_leaf)

    @functools.wraps(method)
    def wrapper(model_fn, params, x, target=None, **options):
        if not is_structured(x):
            return method(model_fn, params, x, target, **options)
        s = Structure(x)
        if one_leaf and not s.single:
            raise ValueError(f"x: {method.__name__} masks one image, but {len(s.attributed)} leaves of x are "
                             "attributed; mark the others with fxai.fixed(...)")
        for name in PACKED_OPTIONS:
            if name in options:
                options[name] = s.option(options[name], name, x)
        with contextlib.nullcontext() if torch.compiler.is_compiling() else rows_from(None):  # this call's rows
            out = method(s.model(model_fn), params, s.packed_input(), target, **options)
        if isinstance(out, tuple):
            return (s.maps(out[0]), *out[1:])
        return s.maps(out)

    wrapper.structured = True
    return wrapper
