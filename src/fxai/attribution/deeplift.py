"""DeepLIFT and DeepLiftShap: multipliers from a reference pass replayed into the input pass, without hooks."""

from __future__ import annotations

import contextlib

import torch

from .._core import keys
from .._core.batching import auto_chunk, needs_graph, plain_autograd, row_chunks, score_gradients
from .._core.checks import check_choice, check_input, check_positive_int
from .._core.docs import documented
from ..rules.engine import Intercept, Recorder, Replayer
from ..rules.multipliers import Signs, inplace_copier, intercepted_ops, replay_rules, truth_rules
from .._core.targets import Target, TargetLike, as_target, check_logits

RULES = ("rescale", "reveal_cancel")


def _references(baseline, x: torch.Tensor) -> torch.Tensor:
    """The baseline as reference rows ``[1, ...]`` (one for the whole batch) or ``[B, ...]`` (one per input)."""
    if callable(baseline) and not isinstance(baseline, torch.Tensor):
        baseline = baseline(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full((1, *x.shape[1:]), float(baseline), dtype=x.dtype, device=x.device)
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline must be a number, a tensor broadcastable to x or a callable x -> tensor; "
                        f"got {type(baseline).__name__}")
    try:
        shared = baseline.ndim < x.ndim or baseline.shape[0] == 1
        return baseline.to(x).expand((1,) + x.shape[1:] if shared else x.shape)
    except RuntimeError:
        raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to x of shape "
                         f"{tuple(x.shape)}") from None


def _matcher(n_ref: int, n_live: int, index):
    """Adapt a recorded reference operand to the live one: as is, or its rows repeated for the live rows
    (one shared row stays one row: the rules broadcast it, so a shared baseline costs one row's work)."""
    def match(ref, live):
        if ref.shape == live.shape:
            return ref
        if ref.ndim == live.ndim and ref.shape[0] == n_ref and live.shape[0] == n_live and \
                ref.shape[1:] == live.shape[1:]:
            return ref if n_ref == 1 else ref.index_select(0, index.to(ref.device))
        return None
    return match


def _rows_for(t: torch.Tensor, n_live: int, index):
    if index is None:
        return t if t.shape[0] == n_live else t.expand(n_live, *t.shape[1:])
    return t.index_select(0, index)


def deeplift_rows(model_fn, params, xs, refs, per: int, target: Target, *, rule: str, eps: float,
                  chunk_size: int | None = None, scores: bool = False):
    """DeepLIFT contributions of stacked rows ``xs [N, ...]``, row ``i`` against reference ``refs[i // per]``.

    Per chunk of rows: the reference pass over the chunk's reference rows under a recorder, then the
    input pass under the replaying rules, differentiated once. Where the map itself may be differentiated
    (inside ``torch.func`` transforms, or inputs that require grad), a plain forward of the input rows comes
    first, and the rules' backwards read its values, so the map's derivative is the true one (see
    :mod:`fxai.rules.multipliers`). Returns the contributions (``[N, ...]`` or ``[N, K, ...]``), and with
    ``scores`` also ``(f(x), f(reference))`` per row.
    """
    ops = intercepted_ops(rule)
    # the map may be differentiated: inside torch.func transforms, or tensors that require grad
    exact = needs_graph(params, xs, refs) or torch._C._functorch.peek_interpreter_stack() is not None
    # first order on torch.autograd (one target per row, no graph kept): the rules may skip the second-order path
    quiet = plain_autograd() and not exact and not target.multi
    parts, fx_parts, fr_parts = [], [], []
    for a, b in row_chunks(xs.shape[0], chunk_size, target.group):
        lo, hi = a // per, (b - 1) // per + 1
        index = None if hi - lo == b - a else (torch.arange(a, b, device=xs.device) // per - lo)
        recorder = Recorder()
        with torch.no_grad() if quiet else contextlib.nullcontext(), Intercept(
                dict.fromkeys(ops, recorder), copy_inplace=True):
            ref_logits = model_fn(params, refs[lo:hi].clone())  # a copy: the model may write into its input
        check_logits(ref_logits, refs[lo:hi])
        match, what = _matcher(hi - lo, b - a, index), "DeepLIFT's input pass and reference pass"
        truth, true_logits = None, None
        if exact:
            truth, true_signs = [], (Signs() if rule == "reveal_cancel" else None)
            plain = Replayer(recorder.calls, truth_rules(rule, truth, true_signs), match, what=what)
            with Intercept(dict.fromkeys(ops, plain), copy_inplace=inplace_copier(False, true_signs),
                           observe=None if true_signs is None else true_signs.observe):
                true_logits = model_fn(params, xs[a:b].clone())
            plain.finish()
        signs = Signs() if rule == "reveal_cancel" else None
        replayer = Replayer(recorder.calls, replay_rules(rule, eps, signs, quiet=quiet), match, what=what,
                            truth=truth)
        observe = None if signs is None else signs.observe
        copy = inplace_copier(quiet, signs)

        def score(rows, a=a, replayer=replayer, observe=observe, copy=copy):
            with Intercept(dict.fromkeys(ops, replayer), copy_inplace=copy, observe=observe):
                logits = model_fn(params, rows)
            replayer.finish()
            check_logits(logits, rows)
            s = target.scores(logits, a)
            return s, logits

        (g,), fx, logits = score_gradients(score, (xs[a:b],), also=(params, refs), multi=target.multi)
        diff = xs[a:b] - _rows_for(refs[lo:hi], b - a, index)
        parts.append((diff.unsqueeze(1) if g.ndim > diff.ndim else diff) * g)
        if scores:
            if true_logits is not None:  # the same values, differentiated by the plain forward
                fx, logits = target.scores(true_logits, a), true_logits
            ref_logits = _rows_for(ref_logits, b - a, index)
            if target.top1:  # the class picked on the input, not the reference's own top-1
                top = Target(b - a, index=logits.detach().argmax(-1, keepdim=True))
                fr_parts.append(top.scores(ref_logits))
            else:
                fr_parts.append(target.scores(ref_logits, a))
            fx_parts.append(fx)
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    if scores:
        return out, torch.cat(fx_parts), torch.cat(fr_parts)
    return out


def _check_options(rule, eps, chunk_size, x) -> int:
    check_choice(rule, RULES, name="rule")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a non-negative number (the |Δ| below which the gradient is used), got {eps!r}")
    return auto_chunk(chunk_size, x)


def _error(attribution, fx, fr, lead: int):
    return attribution.flatten(start_dim=lead).sum(-1) - (fx - fr)


@documented(
    baseline="the reference :math:`x'`: a number, a tensor broadcastable to ``x`` (one for the batch or one per "
             "input) or a callable ``x -> baseline``; zeros by default, as in Captum.",
    rule="``\"rescale\"`` or ``\"reveal_cancel\"``.",
    eps="|Δ| below which a rule falls back to the gradient (Captum's default; contributions mΔ stay accurate for "
        "any tiny Δ, so a small ``eps`` keeps completeness).",
    x="input batch ``[B, ...]``.",
    return_error="also return the completeness error :math:`\\sum\\phi - (f_c(x) - f_c(x'))`, shape ``[B]`` "
                 "(or ``[B, K]``).")
def deeplift(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, baseline=0.0,
             rule: str = "rescale", eps: float = 1e-10, chunk_size: int | None = None,
             return_error: bool = False):
    r"""DeepLIFT: multipliers from the baseline to the input, times the difference.

    .. math:: \phi(x) = m(x, x') \odot (x - x'),\qquad \textstyle\sum \phi = f_c(x) - f_c(x')

    Shrikumar et al., "Learning Important Features Through Propagating Activation
    Differences", ICML 2017. The multipliers :math:`m` are the gradient with each
    nonlinearity's derivative replaced by a rule on its input :math:`z` and its
    reference input :math:`z'` (the same op in the baseline's pass, matched by call
    order, so a module called twice gets two multipliers):

    - ReLU, LeakyReLU, ELU, sigmoid, tanh, softplus, GELU, SiLU, hardtanh, ReLU6,
      hardsigmoid, hardswish (modules, functional calls, tensor methods, in place):
      Rescale :math:`(f(z) - f(z'))/(z - z')`,
      the derivative :math:`f'(z)` where :math:`|z - z'| <` ``eps``;
      with ``rule="reveal_cancel"``, RevealCancel where the input comes from a
      linear or conv layer (through an eval-mode BatchNorm or not).
    - max-pooling: the difference routed to the input's and the reference's
      argmax, summed over overlapping windows; a product :math:`ab` of two tensors:
      :math:`m_a = (b + b')/2`; softmax: :math:`(\sum g\Delta y)\,\tilde\Delta z/\lVert\tilde\Delta z\rVert^2`.
    - every other op (conv, linear, BatchNorm, pooling by averages, additions...):
      its gradient.

    See docs/deeplift.md for the rules and where they differ from Captum's.

    A model whose two passes call different ops (control flow on values) gets a ``RouteError`` (a
    ``ValueError``).

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets), and the error if asked.

    Example:
        >>> a, err = fxai.deeplift(model_fn, params, x, 3, baseline=0.0, return_error=True)
    """
    check_input(x)
    chunk_size = _check_options(rule, eps, chunk_size, x)
    refs = _references(baseline, x)
    target = as_target(target, x)
    per = x.shape[0] // refs.shape[0]
    out = deeplift_rows(model_fn, params, x, refs, per, target, rule=rule, eps=eps, chunk_size=chunk_size,
                        scores=return_error)
    if return_error:
        attribution, fx, fr = out
        return attribution, _error(attribution, fx, fr, fx.ndim)
    return out


@documented(
    references="reference batch ``[R, ...]`` (e.g. training images).",
    samples="use this many references drawn without replacement from ``key`` (the same draw for every input); all "
            "of them when ``None``.",
    key="int seed or ``torch.Generator``, required with ``samples``.",
    rule="``\"rescale\"`` or ``\"reveal_cancel\"``.",
    eps="|Δ| below which a rule falls back to the gradient (Captum's default; contributions mΔ stay accurate for "
        "any tiny Δ, so a small ``eps`` keeps completeness).",
    x="input batch ``[B, ...]``.",
    return_error="also return :math:`\\sum\\phi - (f_c(x) - \\operatorname{mean}_r f_c(x'_r))`.")
def deeplift_shap(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, references: torch.Tensor,
                  samples: int | None = None, key: keys.Key | None = None, rule: str = "rescale",
                  eps: float = 1e-10, chunk_size: int | None = None, return_error: bool = False):
    r"""DeepLiftShap: DeepLIFT averaged over a set of references.

    .. math:: \phi(x) = \frac1R \sum_{r=1}^R m(x, x'_r) \odot (x - x'_r),\qquad
              \textstyle\sum\phi = f_c(x) - \frac1R\sum_r f_c(x'_r)

    Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS
    2017 (DeepSHAP); rules as :func:`fxai.deeplift`. Every input is paired with every
    reference as one stacked batch, each reference pass shared by the whole batch;
    ``chunk_size`` bounds the rows per pass.

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets), and the error if asked.

    Example:
        >>> refs = torch.randn(8, 3, 32, 32)
        >>> a = fxai.deeplift_shap(model_fn, params, x, 3, references=refs)
    """
    check_input(x)
    check_input(references, name="references")
    chunk_size = _check_options(rule, eps, chunk_size, x)
    if references.shape[1:] != x.shape[1:]:
        raise ValueError(f"references must be a batch of inputs shaped like x's, "
                         f"[R, {', '.join(map(str, x.shape[1:]))}]; got {tuple(references.shape)}")
    refs = references.to(x)
    if samples is not None:
        check_positive_int(samples, name="samples")
        if samples > refs.shape[0]:
            raise ValueError(f"samples must be at most the number of references ({refs.shape[0]}), got {samples}")
        gen = keys.generator(key)
        pick = torch.randperm(refs.shape[0], generator=gen, device=gen.device)[:samples]
        refs = refs.index_select(0, pick.to(refs.device))
    r, batch = refs.shape[0], x.shape[0]
    target = as_target(target, x).fixed(model_fn, params, x)
    xs = x.unsqueeze(0).expand(r, *x.shape).flatten(0, 1)
    out = deeplift_rows(model_fn, params, xs, refs, batch, target, rule=rule, eps=eps, chunk_size=chunk_size,
                        scores=return_error)
    attribution = out[0] if return_error else out
    attribution = attribution.reshape(r, batch, *attribution.shape[1:]).mean(0)
    if return_error:
        fx, fr = (t.reshape(r, batch, *t.shape[1:]) for t in out[1:])
        return attribution, _error(attribution, fx[0], fr.mean(0), fx.ndim - 1)
    return attribution
