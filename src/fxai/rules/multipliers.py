r"""DeepLIFT's backward rules: multipliers from an op's input and its reference input.

Shrikumar et al., "Learning Important Features Through Propagating
Activation Differences", ICML 2017. Each rule is an ``autograd.Function``
whose forward is the op itself and whose backward passes multipliers
:math:`m` with :math:`\sum_i m_i\,\Delta x_i = \Delta y` (summation to delta);
linear ops keep their gradient, which already has that property. Backwards
are written in torch ops on the saved inputs, so the maps stay differentiable.
A reference shared by a batch comes as one row and broadcasts.

Exact derivatives of the maps: a rule's multiplier is a function of the op's
input :math:`z(x)`, and differentiating it must differentiate :math:`z(x)`
by the model's true Jacobian, not by the rules. So each rule takes two
copies of its input: the live one, through which its multiplier flows back,
and a *true* one from a plain forward of the same model (``truth``: the
values are equal), which is the only one its backward reads. A derivative of
the map then reaches ``x`` and the params through the plain forward's graph.
Without a plain forward both copies are the same tensor.

:func:`replay_rules` gives the rules by op name for
:class:`fxai._core.engine.Replayer`.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from . import ops as O


def _safe(delta, small):
    return torch.where(small, torch.ones_like(delta), delta)


def secant(op, z, ref, options, eps):
    r""":math:`(f(z) - f(z')) / (z - z')`, or :math:`f'(z)` where :math:`|z - z'| < \epsilon`."""
    delta = z - ref
    small = delta.abs() < eps
    ratio = (op.compute(z, **options) - op.compute(ref, **options)) / _safe(delta, small)
    return torch.where(small, op.derivative(z, **options), ratio)


class Rescale(torch.autograd.Function):
    """The Rescale rule for an elementwise ``y = f(z)``: the multiplier is the secant slope from the reference."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, z_true, ref, op, options, eps):
        return op.compute(z, **options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, z_true, ref, ctx.op, ctx.options, ctx.eps = inputs
        ctx.save_for_backward(z_true, ref)

    @staticmethod
    def backward(ctx, grad):
        z, ref = ctx.saved_tensors
        return grad * secant(ctx.op, z, ref, ctx.options, ctx.eps), None, None, None, None, None


def fast_secant(op, z, out, ref, options, eps):
    """:func:`secant` from the op's output ``out = f(z)``, in fewer passes over memory; first order only (no graph)."""
    delta = z - ref
    m = out - op.compute(ref, **options)
    m /= delta
    size = delta.abs_()
    if size.numel() and bool(size.amin() < eps):  # rare: a unit the input does not move
        m = torch.where(size < eps, op.derivative(z, **options).to(m.dtype), m)
    return m


class QuietRescale(torch.autograd.Function):
    """:class:`Rescale` for first-order use: the multiplier is computed in the forward and saved alone, so the
    op's input may be overwritten in place afterwards. Not differentiable twice, not for ``torch.func``."""

    @staticmethod
    def forward(ctx, z, ref, op, options, eps):
        out = op.compute(z, **options)
        ctx.save_for_backward(fast_secant(op, z, out, ref, options, eps))
        return out

    @staticmethod
    def backward(ctx, grad):
        (m,) = ctx.saved_tensors
        return grad * m, None, None, None, None


class RevealCancel(torch.autograd.Function):
    r"""The RevealCancel rule for ``y = f(z)`` with ``z - z' = Δ⁺ + Δ⁻`` split into positive and negative terms.

    .. math:: \Delta y^+ = \tfrac12\big(f(z' + \Delta^+) - f(z')\big)
              + \tfrac12\big(f(z' + \Delta^- + \Delta^+) - f(z' + \Delta^-)\big)

    and symmetrically :math:`\Delta y^-`; the multipliers are :math:`\Delta y^\pm / \Delta^\pm`, passed back to
    the positive and the negative terms separately (``pos`` and ``neg``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z, pos, neg, z_true, pos_true, neg_true, ref, op, options, eps):
        return op.compute(z, **options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        *_, z, pos, neg, ref, ctx.op, ctx.options, ctx.eps = inputs
        ctx.save_for_backward(z, pos, neg, ref)

    @staticmethod
    def backward(ctx, grad):
        z, pos, neg, ref = ctx.saved_tensors
        f = lambda t: ctx.op.compute(t, **ctx.options)  # noqa: E731
        fz, fr, fp, fn = f(z), f(ref), f(ref + pos), f(ref + neg)
        up = 0.5 * ((fp - fr) + (fz - fn))
        down = 0.5 * ((fn - fr) + (fz - fp))
        slope = ctx.op.derivative(z, **ctx.options)
        small_p, small_n = pos.abs() < ctx.eps, neg.abs() < ctx.eps
        m_pos = torch.where(small_p, slope, up / _safe(pos, small_p))
        m_neg = torch.where(small_n, slope, down / _safe(neg, small_n))
        return None, grad * m_pos, grad * m_neg, None, None, None, None, None, None, None


def _flat(t):
    return t.flatten(-2)


class MaxPool(torch.autograd.Function):
    r"""Max-pooling: :math:`\Delta y` split as :math:`(\max(y, y') - y') + (y - \max(y, y'))`, the first part
    routed to the input's argmax, the second to the reference's, summed over overlapping windows."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, z_true, ref, options, eps):
        return O.max_pool2d(z, **{**options, "return_indices": False})

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, z_true, ref, ctx.options, ctx.eps = inputs
        ctx.save_for_backward(z_true, ref)

    @staticmethod
    def backward(ctx, grad):
        z, ref = ctx.saved_tensors
        opts = {**ctx.options, "return_indices": True}
        y, at = O.max_pool2d(z, **opts)
        y_ref, at_ref = O.max_pool2d(ref, **opts)
        top = torch.maximum(y, y_ref)
        zero = torch.zeros_like(_flat(z))
        routed = (zero.scatter_add(-1, _flat(at), _flat(grad * (top - y_ref)))
                  .scatter_add(-1, _flat(at_ref).expand_as(_flat(at)), _flat(grad * (y - top))))
        plain = zero.scatter_add(-1, _flat(at), _flat(grad))
        delta = _flat(z - ref)
        small = delta.abs() < ctx.eps
        return torch.where(small, plain, routed / _safe(delta, small)).view_as(z), None, None, None, None


def _pair(v):
    return list(v) if isinstance(v, (list, tuple)) else [v, v]


class QuietMaxPool(torch.autograd.Function):
    r""":class:`MaxPool` for first-order use: indices, routing weights and :math:`1/\Delta` computed in the forward
    (no input saved), the backward three native max-pool backwards (which sum over overlapping windows).
    Not differentiable twice, not for ``torch.func``."""

    @staticmethod
    def forward(ctx, z, ref, options, eps):
        opts = {**options, "return_indices": True}
        y, at = O.max_pool2d(z, **opts)
        y_ref, at_ref = O.max_pool2d(ref, **opts)
        top = torch.maximum(y, y_ref)
        delta = z - ref
        small = None
        if delta.numel() and bool(delta.abs().amin() < eps):  # units the input does not move: the gradient
            small = delta.abs() < eps
            inv = delta.masked_fill_(small, 1.0).reciprocal_().masked_fill_(small, 0.0)
            small = small.to(z.dtype)
        else:
            inv = delta.reciprocal_()
        ctx.pool = [_pair(options[k]) for k in ("kernel_size", "stride", "padding", "dilation")] + \
            [options["ceil_mode"]]
        ctx.small = small is not None
        ctx.save_for_backward(at, at_ref.expand_as(at).contiguous(), top - y_ref, y - top, inv,
                              *(() if small is None else (small,)))
        return y

    @staticmethod
    def backward(ctx, grad):
        at, at_ref, up, down, inv, *small = ctx.saved_tensors

        def unpool(g, index):
            return torch.ops.aten.max_pool2d_with_indices_backward(g, inv, *ctx.pool, index)

        out = (unpool(grad * up, at) + unpool(grad * down, at_ref)).mul_(inv)
        if ctx.small:
            out += unpool(grad, at).mul_(small[0])
        return out, None, None, None


class Product(torch.autograd.Function):
    r"""An elementwise product :math:`y = ab`: :math:`m_a = (b + b')/2`, :math:`m_b = (a + a')/2` (exact:
    :math:`\Delta(ab) = \tfrac{b + b'}2\Delta a + \tfrac{a + a'}2\Delta b`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a, b, a_true, b_true, ref_a, ref_b):
        return a * b

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[2:])

    @staticmethod
    def backward(ctx, grad):
        a, b, ref_a, ref_b = ctx.saved_tensors
        ga = (grad * (b + ref_b) / 2).sum_to_size(a.shape)
        gb = (grad * (a + ref_a) / 2).sum_to_size(b.shape)
        return ga, gb, None, None, None, None


class Softmax(torch.autograd.Function):
    r"""(Log-)softmax over ``dim``: the smallest multiplier with summation to delta that ignores shifts.

    With :math:`\tilde\Delta = \Delta z - \operatorname{mean}(\Delta z)` (softmax is blind to adding a constant
    to every input), :math:`m = \big(\sum_i g_i \Delta y_i\big)\,\tilde\Delta / \lVert\tilde\Delta\rVert^2`, so
    :math:`\sum_j m_j \Delta z_j = \sum_i g_i \Delta y_i`; for one input this is the Rescale rule. The
    gradient where :math:`\lVert\tilde\Delta\rVert < \epsilon`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z, z_true, ref, log, dim, eps):
        return torch.log_softmax(z, dim) if log else torch.softmax(z, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, z_true, ref, ctx.log, ctx.dim, ctx.eps = inputs
        ctx.save_for_backward(z_true, ref)

    @staticmethod
    def backward(ctx, grad):
        z, ref = ctx.saved_tensors
        dim, f = ctx.dim, (torch.log_softmax if ctx.log else torch.softmax)
        y = f(z, dim)
        shift = (z - ref) - (z - ref).mean(dim, keepdim=True)
        norm2 = shift.square().sum(dim, keepdim=True)
        change = (grad * (y - f(ref, dim))).sum(dim, keepdim=True)
        p = torch.softmax(z, dim)
        plain = grad - p * grad.sum(dim, keepdim=True) if ctx.log else p * (grad - (grad * p).sum(dim, keepdim=True))
        small = norm2.sqrt() < ctx.eps
        return torch.where(small, plain, change * shift / _safe(norm2, small)), None, None, None, None, None


class Signs:
    """RevealCancel's bookkeeping: the positive and negative parts of a linear layer's output difference.

    A linear op's output ``z`` is rebuilt as ``z' + Δ⁺ + Δ⁻`` from its terms, so that the gradient of each part
    reaches its own terms; the next nonlinearity finds the parts here by the tensor's identity. A tensor
    written in place afterwards (``out += identity``) loses its entry.
    """

    def __init__(self):
        self.parts: dict[int, tuple] = {}

    def put(self, z, pos, neg):
        self.parts[id(z)] = (weakref.ref(z), getattr(z, "_version", None), pos, neg)

    def get(self, z):
        entry = self.parts.get(id(z))
        if entry is None or entry[0]() is not z or entry[1] != getattr(z, "_version", None):
            return None
        return entry[2], entry[3]

    def observe(self, func, args, kwargs):
        if args and isinstance(args[0], torch.Tensor) and O.is_inplace(func):
            self.parts.pop(id(args[0]), None)
        out = kwargs.get("out")
        if isinstance(out, torch.Tensor):
            self.parts.pop(id(out), None)


def _split(delta):
    positive = (delta > 0).to(delta.dtype).detach()
    return delta * positive, delta * (1 - positive)


def _linear_rule(signs: Signs):
    def rule(op, operands, refs, options, truth=None):
        (a,), (a_ref,) = operands, refs
        parts = signs.get(a)
        pos_in, neg_in = parts if parts is not None else _split(a - a_ref)
        if op is O.BATCH_NORM:
            w = torch.rsqrt(options["running_var"] + options["eps"])
            if options["weight"] is not None:
                w = w * options["weight"]
            w = w.view(-1, *([1] * (a.ndim - 2)))
            lin = torch.mul
        else:
            w = options["weight"]
            rest = {k: v for k, v in options.items() if k not in ("weight", "bias")}
            lin = lambda t, weight: op.compute(t, weight=weight, bias=None, **rest)  # noqa: E731
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        pos = lin(pos_in, wp) + lin(neg_in, wn)
        neg = lin(neg_in, wp) + lin(pos_in, wn)
        z = op.compute(a_ref, **options) + pos + neg
        signs.put(z, pos, neg)
        return z
    return rule


def replay_rules(rule: str, eps: float, signs: Signs | None = None, *, quiet: bool = False) -> dict:
    """DeepLIFT's rules by op name, ``rule(op, operands, references, options, truth) -> output``.

    ``rule`` is ``"rescale"`` or ``"reveal_cancel"`` (which needs ``signs``, and the linear ops intercepted).
    ``truth``: ``(operands, parts)`` of the same call in a plain forward (see :func:`truth_rules`), read by the
    backward instead of the live operands; ``None`` reads the live ones.
    ``quiet``: the multipliers are needed to first order only, outside ``torch.func`` transforms.
    """

    def elementwise(op, operands, refs, options, truth=None):
        (z,), (ref,) = operands, refs
        parts = None if signs is None else signs.get(z)
        true = operands if truth is None else truth[0]
        if parts is not None:
            true_parts = parts if truth is None or truth[1] is None else truth[1]
            return RevealCancel.apply(z, *parts, true[0], *true_parts, ref, op, options, eps)
        if quiet:
            return QuietRescale.apply(z, ref, op, options, eps)
        return Rescale.apply(z, true[0], ref, op, options, eps)

    def max_pool(op, operands, refs, options, truth=None):
        true = operands if truth is None else truth[0]
        if quiet:
            out = QuietMaxPool.apply(operands[0], refs[0], options, eps)
        else:
            out = MaxPool.apply(operands[0], true[0], refs[0], options, eps)
        if options["return_indices"]:
            return out, F.max_pool2d_with_indices(operands[0].detach(), **{
                k: v for k, v in options.items() if k != "return_indices"})[1]
        return out

    def product(op, operands, refs, options, truth=None):
        return Product.apply(*operands, *(operands if truth is None else truth[0]), *refs)

    def softmax(log):
        def rule(op, operands, refs, options, truth=None):
            true = operands if truth is None else truth[0]
            return Softmax.apply(operands[0], true[0], refs[0], log, options["dim"], eps)
        return rule

    rules = {op.name: elementwise for op in O.ELEMENTWISE}
    rules["max_pool2d"] = max_pool
    rules["mul"] = product
    rules["softmax"], rules["log_softmax"] = softmax(False), softmax(True)
    if rule == "reveal_cancel":
        rules.update({op.name: _linear_rule(signs) for op in O.LINEAR_OPS})
    return rules


def truth_rules(rule: str, record: list, signs: Signs | None = None) -> dict:
    """Rules for the plain forward whose values the backward reads (exact derivatives): each op computes its
    plain value, and call k appends ``(operands, parts)`` to ``record`` (``parts``: RevealCancel's
    ``(Δ⁺, Δ⁻)`` of the operand, or ``None``). Linear ops under ``"reveal_cancel"`` build their output from the
    parts, ``z' + Δ⁺ + Δ⁻``, which is the plain output with the plain derivative."""
    linear = _linear_rule(signs) if rule == "reveal_cancel" else None

    def plain(op, operands, refs, options, truth=None):
        parts = None if signs is None else signs.get(operands[0])
        record.append((tuple(operands), parts))
        if linear is not None and op in O.LINEAR_OPS:
            return linear(op, operands, refs, options)
        return op.compute(*operands, **options)

    return {op.name: plain for op in intercepted_ops(rule)}


def inplace_copier(quiet: bool, signs: Signs | None):
    """What an in-place op hands its rule (see :class:`fxai._core.engine.Intercept`): a copy of the operand, which
    keeps RevealCancel's parts; the operand itself for the quiet Rescale rule, which saves no input."""
    elementwise = set(O.ELEMENTWISE)

    def copy(op, operand):
        if quiet and signs is None and op in elementwise:
            return operand
        out = operand.clone()
        if signs is not None and (parts := signs.get(operand)) is not None:
            signs.put(out, *parts)
        return out
    return copy


NONLINEAR_OPS = (*O.ELEMENTWISE, O.MAX_POOL2D, O.MAX_POOL2D_WITH_INDICES, O.MUL, O.SOFTMAX, O.LOG_SOFTMAX)


def intercepted_ops(rule: str) -> tuple:
    """The ops DeepLIFT's ``rule`` intercepts (in both passes)."""
    return NONLINEAR_OPS + (O.LINEAR_OPS if rule == "reveal_cancel" else ())
