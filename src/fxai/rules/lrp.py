r"""LRP rules and composites: how relevance flows back through each kind of layer.

A rule maps the relevance :math:`R_j` at a layer's output to relevance at its
input. For a linear layer :math:`z = f(x; W, b)` (``F.linear``, ``F.conv*``) a rule
is a *modified forward* :math:`z' = f'(x')` and the relevance is "gradient ×
input" of that modified forward (Montavon et al. 2019, sec. 10.2.2):

.. math:: R_i = x'_i \, \Big[ \tfrac{\partial z'}{\partial x'}^{\!\top} \tfrac{R}{\mathrm{stab}(z')} \Big]_i ,
          \qquad \mathrm{stab}(z) = z + \varepsilon\,(\mathrm{sign}(z) + [z = 0]).

Rules (``x⁺ = max(x, 0)``, ``W⁺ = max(W, 0)``, likewise ``⁻``):

- :class:`Epsilon` (LRP-ε, LRP-0 for ε = 0): :math:`z' = Wx + b`.
- :class:`ZPlus` (z⁺): :math:`z' = W^+x^+ + b^+ + W^-x^-`.
- :class:`AlphaBeta`: :math:`\alpha\,R^{(+)} - \beta\,R^{(-)}`, the positive part
  from :math:`W^+x^+ + b^+ + W^-x^-`, the negative from :math:`W^-x^+ + b^- + W^+x^-`.
- :class:`Gamma` (generalised γ-rule, Andéol et al. 2021): :math:`(W + \gamma W^+)x^+ + (b + \gamma b^+)
  + (W + \gamma W^-)x^-` where :math:`z > 0`, the mirrored form where :math:`z < 0`.
- :class:`Flat`: :math:`R_i = \sum_j R_j / \#\{i \to j\}` (all weights 1, no bias, input 1).
- :class:`WSquare` (w²): :math:`R_i = \sum_j W_{ji}^2 R_j / \sum_{i'} W_{ji'}^2` (no bias).
- :class:`ZBox` (z^B): :math:`z' = Wx - W^+l - W^-h` for inputs in the box :math:`[l, h]`.
- :class:`Norm`: relevance in proportion to each input's share, :math:`R_i = x_i\,[P^\top (R / \mathrm{stab}(Px))]_i`
  for average pooling, means, sums and residual additions :math:`a + b` (:math:`R_a = a R / (a + b)`).
- :class:`Pass`: relevance passes unchanged (activations, a BatchNorm not folded away).
- :class:`Gradient`: the plain gradient (no rule; max-pooling, reshapes and concatenations always use it).

For transformers (AttnLRP, Achtibat et al. 2024; see :func:`attnlrp`):

- :class:`AttentionUniform`: attention :math:`o = \mathrm{softmax}(q k^\top s + m)\, v` by the uniform rule on
  the products :math:`A v` and :math:`q k^\top` (half the relevance to each operand) and the softmax rule
  :math:`R_S = S \odot (R_A - A \textstyle\sum_j R_{A,j})`; :class:`AttentionCP` (CP-LRP, Ali et al. 2022): all
  relevance through :math:`v`, none through :math:`q, k`.
- :class:`ConstantScale`: LayerNorm / RMSNorm with the normalising scale treated as a constant; the linear map
  left gets LRP-ε.

A composite assigns rules to layers, by name (the prefix of the parameter
names, e.g. ``"features.0"`` or ``"layer4"``) or by kind: ``"first"`` (the first
linear or convolutional layer called), ``"conv"``, ``"linear"``, ``"pool"``,
``"add"``, ``"activation"`` and ``"batchnorm"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from .._core.checks import unknown_name
from .lrp_terms import negative_part, positive_part, pullback, share, split_signs, stabilize


class Rule:
    """A relevance rule for linear or convolutional layers: ``backward(op, x, w, b, R) -> R_in``."""

    def backward(self, op: Callable, x, w, b, relevance):  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε (Bach et al. 2015): :math:`R_i = x_i \\sum_j W_{ji} R_j / \\mathrm{stab}(z_j)`, :math:`z = Wx + b`."""

    epsilon: float = 1e-6

    def backward(self, op, x, w, b, relevance):
        return share(op, [(x, w, b, 1)], relevance, self.epsilon)


@dataclass(frozen=True)
class ZPlus(Rule):
    """z⁺ (Montavon et al. 2017), the α1β0 rule: positive contributions only."""

    stabilizer: float = 1e-6

    def backward(self, op, x, w, b, relevance):
        xp, xn = split_signs(x)
        parts = [(xp, positive_part(w), positive_part(b), 1)]
        parts += [] if xn is None else [(xn, negative_part(w), None, 1)]
        return share(op, parts, relevance, self.stabilizer)


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """αβ (Bach et al. 2015): :math:`\\alpha R^{(+)} - \\beta R^{(-)}` with :math:`\\alpha - \\beta = 1`."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self):
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1) > 1e-12:
            raise ValueError(f"AlphaBeta: alpha and beta must be non-negative with alpha - beta = 1 "
                             f"(conservation), got alpha={self.alpha}, beta={self.beta}")

    def backward(self, op, x, w, b, relevance):
        xp, xn = split_signs(x)
        wp, wn = positive_part(w), negative_part(w)
        positive = share(op, [(xp, wp, positive_part(b), 1), (xn, wn, None, 1)], relevance, self.stabilizer)
        negative = share(op, [(xp, wn, negative_part(b), 1), (xn, wp, None, 1)], relevance, self.stabilizer)
        return self.alpha * positive - self.beta * negative


@dataclass(frozen=True)
class Gamma(Rule):
    """γ-rule (Montavon et al. 2019), generalised to signed inputs and outputs (Andéol et al. 2021)."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def backward(self, op, x, w, b, relevance):
        g = self.gamma
        up = lambda t: None if t is None else t + g * t.clamp(min=0)  # noqa: E731
        down = lambda t: None if t is None else t + g * t.clamp(max=0)  # noqa: E731
        z = op(x, w, b)
        xp, xn = split_signs(x)
        positive = share(op, [(xp, up(w), up(b), 1), (xn, down(w), None, 1)], relevance, self.stabilizer,
                          mask=(z > 0).to(z.dtype))
        negative = share(op, [(xp, down(w), down(b), 1), (xn, up(w), None, 1)], relevance, self.stabilizer,
                          mask=(z < 0).to(z.dtype))
        return positive + negative


@dataclass(frozen=True)
class Flat(Rule):
    """Flat (Lapuschkin et al. 2019): relevance spread evenly over each output's receptive field."""

    stabilizer: float = 1e-6

    def backward(self, op, x, w, b, relevance):
        ones = torch.ones_like(x)
        z, pull = pullback(op, ones, torch.ones_like(w), None)
        return pull(relevance / stabilize(z, self.stabilizer))[0]


@dataclass(frozen=True)
class WSquare(Rule):
    """w² (Montavon et al. 2017): :math:`R_i = \\sum_j W_{ji}^2 R_j / \\sum_{i'} W_{ji'}^2` (no bias)."""

    stabilizer: float = 1e-6

    def backward(self, op, x, w, b, relevance):
        z, pull = pullback(op, torch.ones_like(x), w.square(), None)
        return pull(relevance / stabilize(z, self.stabilizer))[0]


@dataclass(frozen=True)
class ZBox(Rule):
    """z^B (Montavon et al. 2017) for inputs bounded by ``low <= x <= high`` (broadcast against the input)."""

    low: torch.Tensor | float
    high: torch.Tensor | float
    stabilizer: float = 1e-6

    def backward(self, op, x, w, b, relevance):
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand_as(x)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand_as(x)
        return share(op, [(x, w, None, 1), (low, positive_part(w), None, -1), (high, negative_part(w), None, -1)],
                      relevance, self.stabilizer)


@dataclass(frozen=True)
class Norm:
    """Relevance in proportion to each input's contribution to a sum-like op (pooling, mean, addition)."""

    stabilizer: float = 1e-6


@dataclass(frozen=True)
class Pass:
    """Relevance passes through unchanged (elementwise activations; an unfolded BatchNorm)."""


@dataclass(frozen=True)
class Gradient:
    """No rule: the op's own gradient carries the relevance back."""


@dataclass(frozen=True)
class AttentionUniform:
    """AttnLRP in attention: the uniform rule on ``q kᵀ`` and ``A v``, the softmax rule in between."""

    stabilizer: float = 1e-12


@dataclass(frozen=True)
class AttentionCP:
    """CP-LRP in attention: the attention probabilities held constant, all relevance through ``v``."""

    stabilizer: float = 1e-12


@dataclass(frozen=True)
class ConstantScale:
    """LayerNorm / RMSNorm with the normalising scale held constant; LRP-ε on the linear map that leaves."""

    stabilizer: float = 1e-12


LAYER_KINDS = ("first", "conv", "linear", "pool", "add", "activation", "batchnorm", "attention", "norm", "scale")
_DEFAULTS = {"conv": Epsilon(), "linear": Epsilon(), "pool": Norm(), "add": Norm(), "activation": Pass(),
             "batchnorm": Pass(), "attention": Gradient(), "norm": Gradient(), "scale": Gradient()}
_KIND_RULES = {"pool": (Norm, Pass, Gradient), "add": (Norm, Pass, Gradient), "activation": (Pass, Gradient),
               "batchnorm": (Pass, Gradient), "attention": (AttentionUniform, AttentionCP, Gradient),
               "norm": (ConstantScale, Gradient), "scale": (Pass, Gradient)}


@dataclass(frozen=True)
class Composite:
    """Rules assigned to layers, by name prefix (longest wins) or by kind (see :data:`LAYER_KINDS`).

    Kinds left out keep their defaults: ε for ``conv``/``linear``, :class:`Norm` for ``pool``
    and ``add``, :class:`Pass` for ``activation`` and ``batchnorm``, :class:`Gradient` for ``attention``,
    ``norm`` (LayerNorm, RMSNorm) and ``scale`` (products with a number); ``first`` falls back to its kind.
    """

    rules: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        for key, rule in self.rules.items():
            if not isinstance(key, str):
                raise TypeError(f"composite: keys must be layer kinds {LAYER_KINDS} or layer names, got {key!r}")
            if key in _KIND_RULES and not isinstance(rule, _KIND_RULES[key]):
                allowed = " or ".join(f"{c.__name__}()" for c in _KIND_RULES[key])
                raise TypeError(f"composite[{key!r}] must be {allowed}, got {rule!r}")
            if key not in _KIND_RULES and not isinstance(rule, (Rule, Gradient)):
                raise TypeError(f"composite[{key!r}] must be an LRP rule (Epsilon(), ZPlus(), ...) or "
                                f"Gradient(), got {rule!r}")

    def check_names(self, param_names, *, name: str = "composite") -> None:
        """Raise if a layer-name key of this composite names no parameter's layer (a typo would do nothing)."""
        layers = {k.rpartition(".")[0] for k in param_names}
        for key in self.rules:
            if key not in LAYER_KINDS and not any(n == key or n.startswith(key + ".") for n in layers):
                shown = ", ".join(sorted(layers)[:8]) + (", ..." if len(layers) > 8 else "")
                raise ValueError(f"{name}: {key!r} is neither a layer kind ({', '.join(LAYER_KINDS)}) nor the name "
                                 f"(or a prefix ending at a dot) of a layer with parameters; layers: {shown}")

    def layer_rule(self, name: str | None, kind: str, first: bool):
        """The rule of a linear or convolutional layer called ``name`` (None when unnamed)."""
        if name is not None:
            best = max((k for k in self.rules if k not in LAYER_KINDS and (name == k or name.startswith(k + "."))),
                       key=len, default=None)
            if best is not None:
                return self.rules[best]
        if first and "first" in self.rules:
            return self.rules["first"]
        return self.rules.get(kind, _DEFAULTS[kind])

    def kind_rule(self, kind: str):
        """The rule of an op of ``kind`` (``pool``, ``add``, ``activation``, ``batchnorm``, ``attention``, ``norm``,
        ``scale``)."""
        return self.rules.get(kind, _DEFAULTS[kind])


def epsilon_plus_flat(*, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """Flat on the first layer, z⁺ on convolutions, ε on dense layers (Kohlbrenner et al. 2020)."""
    return Composite({"first": Flat(stabilizer), "conv": ZPlus(stabilizer), "linear": Epsilon(epsilon),
                      "pool": Norm(stabilizer), "add": Norm(stabilizer)})


def epsilon_plus(*, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """z⁺ on convolutions, ε on dense layers."""
    return Composite({"conv": ZPlus(stabilizer), "linear": Epsilon(epsilon), "pool": Norm(stabilizer),
                      "add": Norm(stabilizer)})


def epsilon_alpha2_beta1(*, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """α2β1 on convolutions, ε on dense layers."""
    return Composite({"conv": AlphaBeta(2.0, 1.0, stabilizer), "linear": Epsilon(epsilon),
                      "pool": Norm(stabilizer), "add": Norm(stabilizer)})


def epsilon_alpha2_beta1_flat(*, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """Flat on the first layer, α2β1 on convolutions, ε on dense layers."""
    return Composite({"first": Flat(stabilizer), "conv": AlphaBeta(2.0, 1.0, stabilizer), "linear": Epsilon(epsilon),
                      "pool": Norm(stabilizer), "add": Norm(stabilizer)})


def epsilon_gamma_box(*, low, high, epsilon: float = 1e-6, gamma: float = 0.25,
                      stabilizer: float = 1e-6) -> Composite:
    """z^B on the first layer (inputs in ``[low, high]``), γ on convolutions, ε on dense layers
    (Montavon et al. 2019)."""
    return Composite({"first": ZBox(low, high, stabilizer), "conv": Gamma(gamma, stabilizer),
                      "linear": Epsilon(epsilon), "pool": Norm(stabilizer), "add": Norm(stabilizer)})


def attnlrp(*, variant: str = "uniform", epsilon: float = 1e-12, gamma=None, stabilizer: float = 1e-12) -> Composite:
    """AttnLRP (Achtibat et al., ICML 2024) for transformers: attention by the uniform and softmax rules
    (``variant="uniform"``) or CP-LRP (``variant="cp"``, no relevance through ``q`` and ``k``), LayerNorm/RMSNorm
    with their scale constant, elementwise activations (GELU, SiLU...) by the identity rule, products with a
    number passed through, linear and convolutional layers by LRP-ε (``epsilon`` tiny: LRP-0 as in LXT).
    ``gamma``: a number (γ-rule on every linear layer) or a mapping ``{layer name: γ}``."""
    if variant not in ("uniform", "cp"):
        raise ValueError(f"attnlrp: variant must be 'uniform' or 'cp', got {variant!r}")
    linear = Epsilon(epsilon)
    rules = {"conv": linear, "linear": linear, "pool": Norm(stabilizer), "add": Norm(stabilizer),
             "activation": Pass(), "attention": AttentionUniform(stabilizer) if variant == "uniform"
             else AttentionCP(stabilizer), "norm": ConstantScale(stabilizer), "scale": Pass()}
    if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
        rules["linear"] = Gamma(float(gamma), stabilizer)
    elif isinstance(gamma, Mapping):
        rules.update({name: Gamma(float(g), stabilizer) for name, g in gamma.items()})
    elif gamma is not None:
        raise TypeError(f"attnlrp: gamma must be None, a number or a mapping {{layer name: gamma}}, got {gamma!r}")
    return Composite(rules)


def cp_lrp(**options) -> Composite:
    """:func:`attnlrp` with ``variant="cp"`` (CP-LRP inside attention; LXT's default for torchvision's ViT)."""
    return attnlrp(variant="cp", **options)


COMPOSITES = {"attnlrp": attnlrp, "cp_lrp": cp_lrp, "epsilon_plus_flat": epsilon_plus_flat,
              "epsilon_plus": epsilon_plus, "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
              "epsilon_alpha2_beta1_flat": epsilon_alpha2_beta1_flat, "epsilon_gamma_box": epsilon_gamma_box}


def as_composite(composite, *, name: str = "composite") -> Composite:
    """A :class:`Composite` from a composite, a name in :data:`COMPOSITES` or a mapping ``{layer: rule}``."""
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, str):
        if composite not in COMPOSITES:
            raise ValueError(f"{name}: " + unknown_name("composite", composite, COMPOSITES) +
                             " (or pass a Composite or a mapping from layer kind or name to rule)")
        if composite == "epsilon_gamma_box":
            raise ValueError(f"{name}: 'epsilon_gamma_box' needs the input bounds: pass "
                             "epsilon_gamma_box(low=..., high=...)")
        return COMPOSITES[composite]()
    if isinstance(composite, Mapping):
        return Composite(dict(composite))
    raise TypeError(f"{name} must be a Composite, a composite name ({', '.join(COMPOSITES)}) or a mapping "
                    f"from layer kind or name to rule; got {type(composite).__name__}")
