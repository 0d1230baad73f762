"""A differentiable attribution loss: "Right for the Right Reasons" (Ross et al., IJCAI 2017).

Data: 8×8 images whose label shows both in a noisy true signal (bottom-right
3×3 block) and in a noise-free decoy (top-left 2×2 corner). A plain
cross-entropy model leans on the decoy. Adding the penalty
``lam * |mask ⊙ ∂ Σ log p / ∂x|²`` and training a few steps through
``fxai.gradient`` (second-order, w.r.t. params) moves the input gradient out
of the decoy region while the model stays accurate, and makes it right on
images whose decoy is shuffled.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxai

MASK = torch.zeros(1, 1, 8, 8)
MASK[..., :2, :2] = 1


def _data(n, gen, decoy=True):
    y = torch.randint(2, (n,), generator=gen)
    sign = (2 * y - 1).float().view(n, 1, 1)
    x = 0.5 * torch.randn(n, 1, 8, 8, generator=gen)
    x[:, 0, 5:, 5:] += 0.6 * sign
    x[:, 0, :2, :2] = sign if decoy else (2 * torch.randint(2, (n,), generator=gen) - 1).float().view(n, 1, 1)
    return x, y


def _log_prob_sum(logits):
    return logits.log_softmax(-1).sum(-1)


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Softplus(), nn.Linear(32, 2))
    model_fn, params = fxai.functional(model)
    return model, model_fn, params, _data(256, gen), _data(512, gen), _data(512, gen, decoy=False)


def _loss(model_fn, p, x, y, lam):
    ce = F.cross_entropy(model_fn(p, x), y)
    if lam == 0:
        return ce
    g = fxai.gradient(model_fn, p, x, _log_prob_sum)
    return ce + lam * (MASK * g).square().sum() / x.shape[0]


def _train(model_fn, p, data, lam, steps, lr):
    for _ in range(steps):
        grads = torch.func.grad(lambda p: _loss(model_fn, p, *data, lam))(p)
        p = {k: v - lr * grads[k] for k, v in p.items()}
    return p


def _region_share(model_fn, p, x):
    g = fxai.gradient(model_fn, p, x, _log_prob_sum).abs()
    return float((g * MASK).sum() / g.sum())


def _accuracy(model_fn, p, data):
    x, y = data
    return float((model_fn(p, x).argmax(1) == y).float().mean())


def test_right_for_the_right_reasons(problem):
    _, model_fn, params, train, test, shuffled = problem
    plain = _train(model_fn, params, train, lam=0.0, steps=100, lr=0.5)
    assert _accuracy(model_fn, plain, test) > 0.95
    assert _accuracy(model_fn, plain, shuffled) < 0.8  # it leans on the decoy
    before = _region_share(model_fn, plain, test[0])
    assert before > 0.2

    right = _train(model_fn, plain, train, lam=1.0, steps=25, lr=0.2)
    after = _region_share(model_fn, right, test[0])
    assert after < 0.5 * before, (before, after)
    assert _accuracy(model_fn, right, test) > 0.9
    assert _accuracy(model_fn, right, shuffled) > 0.9  # and now for the right reasons


def test_autograd_equals_torch_func(problem):
    model, model_fn, params, (x, y), _, _ = problem
    expected = torch.func.grad(lambda p: _loss(model_fn, p, x, y, 1.0))(params)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    _loss(model_fn, leaves, x, y, 1.0).backward()
    for k, v in leaves.items():
        torch.testing.assert_close(v.grad, expected[k], rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # the module itself is never touched


def test_penalty_gradient_matches_finite_differences():
    # float64 check of the second-order derivative through fxai.gradient
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    model_fn, params = fxai.functional(model)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)

    def penalty(w):
        p = dict(params, **{"1.weight": w})
        return fxai.gradient(model_fn, p, x, _log_prob_sum)[..., :2, :2].square().sum()

    w = params["1.weight"]
    grad = torch.func.grad(penalty)(w)
    direction = torch.randn_like(w)
    eps = 1e-6
    fd = (penalty(w + eps * direction) - penalty(w - eps * direction)) / (2 * eps)
    torch.testing.assert_close((grad * direction).sum(), fd, rtol=1e-6, atol=1e-9)
