"""LRP's op interception: a ``TorchFunctionMode`` that gives each op its relevance rule, without hooks.

While a forward runs under :class:`RelevanceMode`, every call of a linear or
convolutional op, a pooling/mean/sum, a same-shape addition, an elementwise
activation or a batch norm is replaced by an ``autograd.Function`` whose
forward is the original op and whose backward is the op's LRP rule (see
:mod:`fxai.rules.lrp`). Autograd then carries relevance instead of
gradients; ops not listed (max-pooling, reshapes, concatenation, indexing)
route it by their gradient, which conserves it. Ops are matched, not modules:
a module called twice, a functional call and a layer built inside ``forward``
all get their rule. Layers are named by their weight: inside
``functional_call`` the weight passed to ``F.conv2d`` is the ``params`` entry, so
its identity gives its name.

Exact derivatives of the maps: a rule's backward reads its inputs' values, and
differentiating the map must differentiate those values by the model's true
Jacobian. A first forward under ``RelevanceMode(..., record=[])`` runs the model
plainly and records, in call order, the inputs of every op that gets a rule;
the rule forward under ``RelevanceMode(..., truth=record)`` hands call k's
recorded inputs to the backward (the values are equal; the graphs differ).

Why a mode of its own rather than :mod:`fxai.rules.engine`'s ``Intercept``: the
engine binds each call to canonical operands and options per op, which
DeepLIFT needs (rules compare an op's operands with the reference pass's);
LRP passes pooling, means, sums and activations through as opaque calls and
needs only the input, so the engine would add binders for some thirty
spellings that exist only to be undone. Dispatch costs the same either way
(``benchmarks/bench_interception.py``).

Transformers (AttnLRP): attention calls are decomposed by :func:`fxai.rules.attention.decompose`, their
projections sent back through this mode and the attention product given its rule
(:mod:`fxai.rules.lrp_transformers`); LayerNorm/RMSNorm, products with a number and broadcast additions
get theirs when the composite asks (kinds ``"attention"``, ``"norm"``, ``"scale"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .attention import MHA, SDPA, SOFTMAX, decompose, explicit, is_attention_softmax, probabilities
from .lrp import AttentionCP, AttentionUniform, ConstantScale, Epsilon, Gradient, Norm, Pass
from .lrp_terms import stabilize
from .lrp_transformers import AttentionRelevance, FrozenScale, norm_parts


class _LayerRule(torch.autograd.Function):
    r"""A linear or convolutional op; ``reuse``: LRP-ε on ``F.linear`` at first order, whose backward reads the
    forward's output rather than computing it again (:math:`R_i = x_i [W^\top (R / \mathrm{stab}(z))]_i`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, x_true, w, b, op, rule, reuse):
        return op(x, w, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, x, w, b, ctx.op, ctx.rule, reuse = inputs
        ctx.save_for_backward(x, w, b)
        # a detached alias (no reference cycle through the graph) whose version tells if it was overwritten since
        ctx.z = output.detach() if reuse else None
        ctx.version = None if ctx.z is None else ctx.z._version

    @staticmethod
    def backward(ctx, relevance):
        x, w, b = ctx.saved_tensors
        if ctx.z is not None and ctx.z._version == ctx.version:
            return (relevance / stabilize(ctx.z, ctx.rule.epsilon)) @ w * x, None, None, None, None, None, None
        return ctx.rule.backward(ctx.op, x, w, b, relevance), None, None, None, None, None, None


class _NormRule(torch.autograd.Function):
    """``fn(x)`` for a linear, positive ``fn`` (pooling, mean, sum): relevance by each input's share."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, x_true, fn, eps):
        return fn(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, x, ctx.fn, ctx.eps = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, relevance):
        (x,) = ctx.saved_tensors
        z, pull = torch.func.vjp(ctx.fn, x.view_as(x))  # a view: see lrp_terms.pullback
        return x * pull(relevance / stabilize(z, ctx.eps))[0], None, None, None


class _AddRule(torch.autograd.Function):
    """``a + b``: relevance split in proportion to each summand (a residual connection's branches, a position
    embedding broadcast over the batch)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a, b, a_true, b_true, eps):
        return a + b

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, a, b, ctx.eps = inputs
        ctx.save_for_backward(a, b)

    @staticmethod
    def backward(ctx, relevance):
        a, b = ctx.saved_tensors
        s = relevance / stabilize(a + b, ctx.eps)
        return (a * s).sum_to_size(a.shape), (b * s).sum_to_size(b.shape), None, None, None


class _PassRule(torch.autograd.Function):
    """``fn(x)`` elementwise, relevance passed through unchanged."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, fn):
        return fn(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, relevance):
        return relevance, None


class _PassRuleInPlace(torch.autograd.Function):
    """``fn_(x)`` in place, relevance passed through unchanged: no copy back (eager autograd only)."""

    @staticmethod
    def forward(ctx, x, fn_):
        fn_(x)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, relevance):
        return relevance, None


_NORMS = (F.layer_norm, F.rms_norm)
_SCALE = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.div, torch.Tensor.div,
          torch.Tensor.__truediv__}
_LINEAR = {F.linear: "linear", F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv"}
_POOL = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
         F.adaptive_avg_pool3d, torch.mean, torch.Tensor.mean, torch.sum, torch.Tensor.sum}
_ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_ADD_INPLACE = {torch.Tensor.add_, torch.Tensor.__iadd__}
# activation -> position of its ``inplace`` argument (None: has none)
_ACTIVATION = {F.relu: 1, torch.relu: None, torch.Tensor.relu: None, torch.sigmoid: None, torch.Tensor.sigmoid: None,
               torch.tanh: None, torch.Tensor.tanh: None, F.gelu: None, F.silu: 1, F.elu: 2, F.leaky_relu: 2,
               F.softplus: None, F.hardtanh: 3, F.relu6: 1, F.hardswish: 1, F.mish: 1, F.selu: 1, F.celu: 2}
_ACTIVATION_INPLACE = {F.relu_: F.relu, torch.relu_: torch.relu, torch.Tensor.relu_: torch.relu,
                       torch.sigmoid_: torch.sigmoid, torch.Tensor.sigmoid_: torch.sigmoid,
                       torch.tanh_: torch.tanh, torch.Tensor.tanh_: torch.tanh, F.elu_: F.elu,
                       F.leaky_relu_: F.leaky_relu, F.hardtanh_: F.hardtanh}


def _linear_parts(func, args, kwargs):
    """``(x, w, b, op)`` of a call of ``F.linear``/``F.conv*``, ``op(x, w, b)`` redoing it with its other options."""
    names = ("input", "weight", "bias")
    given = list(args[:3]) + [kwargs.pop(n, None) for n in names[len(args[:3]):]]
    x, w, b = given
    rest = args[3:]
    return x, w, b, lambda x, w, b: func(x, w, b, *rest, **kwargs)


def _without_inplace(func, args, kwargs):
    """``(x, fn, inplace)``: the activation as an out-of-place ``fn(x)``, and whether it was asked in place."""
    if func in _ACTIVATION_INPLACE:
        func, inplace = _ACTIVATION_INPLACE[func], True
        if func is F.hardtanh:
            args = args[:3]
    else:
        pos = _ACTIVATION[func]
        inplace = bool(kwargs.pop("inplace", False))
        if pos is not None and len(args) > pos:
            inplace = inplace or bool(args[pos])
            args = args[:pos]
        if func in (F.relu6, F.hardtanh, F.silu, F.elu, F.leaky_relu, F.hardswish, F.mish, F.selu, F.celu, F.relu):
            kwargs = {**kwargs, "inplace": False}
    x, rest = args[0], args[1:]
    return x, (lambda t: func(t, *rest, **kwargs)), inplace


def _scalar_operand(func, args, kwargs):
    """The tensor of a product or quotient of a floating tensor and a Python number (else ``None``)."""
    if kwargs or len(args) != 2:
        return None
    a, b = args
    if isinstance(a, torch.Tensor) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return a if a.is_floating_point() else None
    if func in (torch.mul, torch.Tensor.__rmul__) and isinstance(b, torch.Tensor) and isinstance(a, (int, float)):
        return b if b.is_floating_point() else None
    return None


def _broadcast(a, b, *, inplace: bool) -> bool:
    """Whether ``a + b`` broadcasts (into ``a``'s shape when in place)."""
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        return False
    return shape == a.shape if inplace else True


def _folded_away(args, kwargs) -> bool:
    """Whether an eval-mode ``F.batch_norm`` is the identity left by :func:`fxai.fold_batchnorm` (checked on
    its small statistics, outside ``torch.func`` transforms and compilation only)."""
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    a = {**dict(zip(names, args)), **kwargs}
    mean, var, weight, bias, eps = (a.get(k) for k in ("running_mean", "running_var", "weight", "bias", "eps"))
    if a.get("training") or mean is None or var is None:
        return False
    eps = 1e-5 if eps is None else eps
    unit = (var == 1).all() and (weight == (1 + eps) ** 0.5).all() if weight is not None else (var == 1 - eps).all()
    return bool(unit and (mean == 0).all() and (bias is None or (bias == 0).all()))


def _in_place_ok(x) -> bool:
    """Whether an in-place activation may run in place under :class:`_PassRuleInPlace`: eager autograd (no
    ``torch.func``, no compilation) on a non-leaf tensor that is not a view."""
    return (torch.is_grad_enabled() and not x.is_leaf and x._base is None and not torch.compiler.is_compiling()
            and torch._C._functorch.peek_interpreter_stack() is None)


class RelevanceMode(TorchFunctionMode):
    """Within the block, ops carry LRP relevance backward by the rules of ``composite``.

    ``params`` names the layers: a weight that is the entry ``"features.0.weight"``
    belongs to the layer ``"features.0"``. ``first`` tells whether the next linear or
    convolutional op is the first of the forward. ``record``: a list; the forward runs plainly
    and appends the inputs of each op that has a rule. ``truth``: such a record of a plain
    forward of the same inputs, whose values the rules' backwards read.
    """

    def __init__(self, composite, params, *, record: list | None = None, truth: list | None = None):
        super().__init__()
        self.composite = composite
        self.names = {id(t): k.rpartition(".")[0] for k, t in params.items() if isinstance(t, torch.Tensor)}
        self.first = True
        self.record, self.truth, self.position = record, truth, 0

    def _apply(self, rule, tensors, compute, *rest):
        """``rule.apply(*tensors, *true tensors, *rest)``; plainly ``compute(*tensors)`` when recording."""
        if self.record is not None:
            self.record.append(tensors)
            return compute(*tensors)
        true = tuple(t.detach() for t in tensors)  # no plain forward: first order only, values suffice
        if self.truth is not None:
            k = self.position
            if k >= len(self.truth) or any(t.shape != u.shape for t, u in zip(self.truth[k], tensors)):
                raise ValueError("lrp: the model took different routes through its ops in two forwards of the "
                                 "same input (control flow on values?)")
            true, self.position = self.truth[k], k + 1
        return rule.apply(*tensors, *true, *rest)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in SDPA or func in MHA:
            return self._attention(func, args, kwargs)
        if func in SOFTMAX and is_attention_softmax(args, kwargs) and \
                not isinstance(self.composite.kind_rule("attention"), Gradient):
            raise ValueError("lrp: the model computes attention by matmul and softmax (an unfused 'eager' path), "
                             "whose products the attention rules do not see; use its fused path: timm "
                             "Attention.fused_attn = True, HuggingFace attn_implementation='sdpa'")
        if func in _NORMS and isinstance(self.composite.kind_rule("norm"), ConstantScale):
            x, frozen = norm_parts(func, args, kwargs)
            fn = lambda t: func(t, *args[1:], **kwargs)  # noqa: E731
            return self._apply(FrozenScale, (x,), fn, fn, frozen, self.composite.kind_rule("norm").stabilizer)
        if func in _SCALE and isinstance(self.composite.kind_rule("scale"), Pass):
            x = _scalar_operand(func, args, kwargs)
            if x is not None:
                return self._pass(x, lambda t: func(*(t if a is x else a for a in args)))
        if func in _LINEAR:
            x, w, b, op = _linear_parts(func, args, kwargs)
            rule = self.composite.layer_rule(self.names.get(id(w)), _LINEAR[func], self.first)
            self.first = False
            if isinstance(rule, Gradient):
                return op(x, w, b)
            reuse = (func is F.linear and type(rule) is Epsilon and self.truth is None
                     and torch._C._functorch.peek_interpreter_stack() is None)
            return self._apply(_LayerRule, (x,), lambda x: op(x, w, b), w, b, op, rule, reuse)
        if func in _POOL:
            rule = self.composite.kind_rule("pool")
            if isinstance(rule, Norm) and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                x, rest = args[0], args[1:]
                fn = lambda t: func(t, *rest, **kwargs)  # noqa: E731
                return self._apply(_NormRule, (x,), fn, fn, rule.stabilizer)
            return self._pass_or_grad(func, args, kwargs, rule)
        if func in _ADD or func in _ADD_INPLACE:
            return self._add(func, args, kwargs)
        if func in _ACTIVATION or func in _ACTIVATION_INPLACE:
            rule = self.composite.kind_rule("activation")
            if self.record is not None or not isinstance(rule, Pass):  # a plain forward keeps the activation
                return func(*args, **kwargs)
            given = dict(kwargs)
            x, fn, inplace = _without_inplace(func, args, kwargs)
            if inplace and _in_place_ok(x):
                return _PassRuleInPlace.apply(x, lambda t: func(t, *args[1:], **given))
            out = self._pass(x, fn)
            return x.copy_(out) if inplace else out
        if func is F.batch_norm and isinstance(self.composite.kind_rule("batchnorm"), Pass):
            if _folded_away(args, kwargs):
                return args[0]
            rest = args[1:]
            return self._pass(args[0], lambda t: func(t, *rest, **kwargs))
        return func(*args, **kwargs)

    def _attention(self, func, args, kwargs):
        """An attention call: decomposed, its projections through this mode, the attention by its rule."""
        rule = self.composite.kind_rule("attention")
        if isinstance(rule, Gradient) and func in SDPA:
            return func(*args, **kwargs)

        def attend(q, k, v, bias, scale):
            if isinstance(rule, Gradient):
                return explicit(q, k, v, bias, scale)
            compute = lambda q, k, v: explicit(q, k, v, bias, scale)[0]  # noqa: E731
            probs = None
            if self.truth is None and self.record is None and torch._C._functorch.peek_interpreter_stack() is None:
                with torch.no_grad():
                    probs = probabilities(q, k, bias, scale)
            out = self._apply(AttentionRelevance, (q, k, v), compute, bias, scale, isinstance(rule, AttentionCP),
                              rule.stabilizer, probs)
            return out, None

        return decompose(func, args, kwargs, attend=attend,
                         linear=lambda x, w, b: self.__torch_function__(F.linear, (), (x, w, b), {}))

    def _pass(self, x, fn):
        return fn(x) if self.record is not None else _PassRule.apply(x, fn)

    def _pass_or_grad(self, func, args, kwargs, rule):
        if isinstance(rule, Pass):
            x, rest = args[0], args[1:]
            return self._pass(x, lambda t: func(t, *rest, **kwargs))
        return func(*args, **kwargs)

    def _add(self, func, args, kwargs):
        rule = self.composite.kind_rule("add")
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        plain = (len(args) <= 2 and set(kwargs) <= {"other"} and isinstance(a, torch.Tensor)
                 and isinstance(b, torch.Tensor) and a.is_floating_point() and b.is_floating_point()
                 and _broadcast(a, b, inplace=func in _ADD_INPLACE))
        if not plain or not isinstance(rule, Norm):
            return func(*args, **kwargs)
        if func in _ADD_INPLACE:
            return a.copy_(self._apply(_AddRule, (a.clone(), b), torch.add, rule.stabilizer))
        return self._apply(_AddRule, (a, b), torch.add, rule.stabilizer)
