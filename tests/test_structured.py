"""Structured inputs: tuples and dicts of tensors, fixed leaves riding along, against Captum and round trips."""

import numpy as np
import pytest
import torch
from torch import nn

import fxai
from fxai import registry

captum_attr = pytest.importorskip("captum.attr")

B = 3


class TwoInputs(nn.Module):
    """An image and a vector, with an optional per-sample scale and integer ids (an embedding)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.lin = nn.Linear(5, 4)
        self.emb = nn.Embedding(7, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, img, vec, scale=None, ids=None):
        h = torch.tanh(self.conv(img)).mean((2, 3)) + torch.tanh(self.lin(vec))
        if scale is not None:
            h = h * scale[:, None]
        if ids is not None:
            h = h + self.emb(ids)
        return self.out(torch.tanh(h))


class Concatenated(nn.Module):
    """The same model with its two inputs concatenated into one ``[B, 3·8·8 + 5]`` tensor."""

    def __init__(self, two: TwoInputs):
        super().__init__()
        self.two = two

    def forward(self, flat):
        return self.two(flat[:, :192].reshape(-1, 3, 8, 8), flat[:, 192:])


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    module = TwoInputs().double().eval()
    model_fn, params = fxai.functional(module)
    img = torch.rand(B, 3, 8, 8, dtype=torch.double)
    vec = torch.rand(B, 5, dtype=torch.double)
    scale = torch.rand(B, dtype=torch.double) + 0.5
    ids = torch.tensor([1, 6, 3])
    return module, model_fn, params, img, vec, scale, ids


TARGET = torch.tensor([0, 2, 1])


def _close(ours, theirs, tol=1e-10, rel=0.0):
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max().item() < tol + rel * b.abs().max().item()


def test_gradient_and_input_x_gradient_match_captum(setup):
    module, model_fn, params, img, vec, scale, ids = setup
    x = (img, vec, fxai.fixed(scale), ids)
    _close(fxai.gradient(model_fn, params, x, TARGET)[:2],
           captum_attr.Saliency(module).attribute((img, vec), target=TARGET, abs=False,
                                                  additional_forward_args=(scale, ids)))
    _close(fxai.input_x_gradient(model_fn, params, x, TARGET)[:2],
           captum_attr.InputXGradient(module).attribute((img, vec), target=TARGET,
                                                        additional_forward_args=(scale, ids)))


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_integrated_gradients_matches_captum_with_riders_through_chunks(setup, chunk_size):
    module, model_fn, params, img, vec, scale, ids = setup
    ours, err = fxai.integrated_gradients(model_fn, params, (img, vec, fxai.fixed(scale), ids), TARGET,
                                          baseline=(0.5, torch.ones(5), None, None), steps=20,
                                          method="riemann_right", chunk_size=chunk_size, return_error=True)
    assert ours[2] is None and ours[3] is None
    theirs, delta = captum_attr.IntegratedGradients(module).attribute(
        (img, vec), baselines=(0.5, torch.ones(1, 5, dtype=torch.double)), target=TARGET,
        additional_forward_args=(scale, ids), n_steps=20, method="riemann_right",
        return_convergence_delta=True)
    _close(ours[:2], theirs, 1e-12, rel=1e-7)  # Captum's step sizes are float32
    assert (err - delta).abs().max() < 1e-8  # a difference of sums of ~0.1: float32 step sizes again


def test_occlusion_on_the_image_leaf_matches_captum(setup):
    module, model_fn, params, img, vec, scale, ids = setup
    ours = fxai.occlusion(model_fn, params, (img, fxai.fixed(vec), fxai.fixed(scale), ids), TARGET,
                          window=(3, 3), stride=2, chunk_size=5)
    theirs = captum_attr.Occlusion(module).attribute(img, sliding_window_shapes=(3, 3, 3), strides=(3, 2, 2),
                                                     target=TARGET, additional_forward_args=(vec, scale, ids))
    assert ours[1:] == (None, None, None)
    assert (ours[0] - theirs.double()).abs().max() < 1e-8  # Captum accumulates occlusion in float32


def test_a_tuple_model_equals_the_same_model_on_one_concatenated_input(setup):
    module, model_fn, params, img, vec, *_ = setup
    cat_fn, cat_params = fxai.functional(Concatenated(module))
    flat = torch.cat([img.flatten(1), vec], 1)

    def split(m):
        return m[..., :192].reshape(*m.shape[:-1], 3, 8, 8), m[..., 192:]

    refs = torch.rand(4, 197, dtype=torch.double)
    cases = [
        (fxai.gradient, {}, {}),
        (fxai.integrated_gradients, {"steps": 8, "chunk_size": 5}, {}),
        (fxai.integrated_gradients, {"steps": 8, "baseline": (0.25, torch.full((5,), 0.75))},
         {"baseline": torch.cat([torch.full((192,), 0.25), torch.full((5,), 0.75)]).double()}),
        (fxai.expected_gradients, {"samples": 6, "key": 3, "references": split(refs)}, {"references": refs}),
    ]
    for method, options, flat_options in cases:
        for target in (TARGET, torch.tensor([[0, 1], [2, 0], [1, 1]]), None):
            ours = method(model_fn, params, (img, vec), target, **options)
            theirs = split(method(cat_fn, cat_params, flat, target, **{**options, **flat_options}))
            _close(ours, theirs, 1e-12)


def test_smoothgrad_noise_is_per_leaf_and_riders_repeat(setup):
    _, model_fn, params, img, vec, scale, ids = setup
    sg = fxai.smoothgrad(fxai.gradient, samples=5, sigma=0.2)
    ours = sg(model_fn, params, (img, fxai.fixed(vec), fxai.fixed(scale), ids), TARGET, key=1)

    def closed(p, rows):  # the riders of a stack of copies of the batch, written out by hand
        n = rows.shape[0] // B
        return model_fn(p, (rows, vec.repeat(n, 1), scale.repeat(n), ids.repeat(n)))

    theirs = sg(closed, params, img, TARGET, key=1, chunk_size=1000)
    assert ours[1:] == (None, None, None)
    assert (ours[0] - theirs.double()).abs().max() < 1e-8  # Captum accumulates occlusion in float32

    def quadratic(p, inputs):
        a, b = inputs
        return torch.stack([(a ** 2).flatten(1).sum(1), (b ** 2).sum(1)], 1)

    quiet_b = fxai.smoothgrad(fxai.gradient, samples=4, sigma=(0.3, 0.0))(quadratic, {}, (img, vec), 1, key=0)
    assert torch.equal(quiet_b[1], 2 * vec)
    noisy_b = fxai.smoothgrad(fxai.gradient, samples=4, sigma=0.3)(quadratic, {}, (img, vec), 1, key=0)
    assert (noisy_b[1] - 2 * vec).abs().max() > 1e-3


def test_dict_inputs_are_keywords_and_integer_leaves_ride(setup):
    module, model_fn, params, img, vec, scale, ids = setup
    x = {"img": img, "vec": vec, "ids": ids}
    ours = fxai.gradient(model_fn, params, x, TARGET)
    assert set(ours) == {"img", "vec", "ids"} and ours["ids"] is None
    leaves = (img.clone().requires_grad_(), vec.clone().requires_grad_())
    module(*leaves, ids=ids).gather(1, TARGET[:, None]).sum().backward()
    assert torch.equal(ours["img"], leaves[0].grad) and torch.equal(ours["vec"], leaves[1].grad)


def _contract_rows():
    rows = [info for info in registry.METHODS.values() if info.structured]
    rows += [registry.applied(t, registry.method("input_x_gradient"), samples=3) for t in registry.TRANSFORMS.values()]
    return rows


@pytest.mark.parametrize("info", _contract_rows(), ids=lambda info: info.name)
def test_contract_on_a_structured_input(setup, info):
    """Every method that takes structured inputs: the structure back, batch = single inputs, chunks change
    nothing, same key same maps, nothing of the caller's changed, differentiable w.r.t. params."""
    _, model_fn, params, img, vec, scale, ids = setup
    one_leaf = info.family == "mask"
    x = (img, fxai.fixed(vec) if one_leaf else vec, fxai.fixed(scale), ids)
    refs = (torch.rand(4, 3, 8, 8, dtype=torch.double), torch.rand(4, 5, dtype=torch.double), None, None)
    options = registry.options(info, size=(8, 8), key=5, references=refs, quick=True)
    before = [t.clone() for t in (img, vec, scale, ids)]
    maps = info.fn(model_fn, params, x, TARGET, **options)
    assert isinstance(maps, tuple) and len(maps) == 4 and maps[2] is None and maps[3] is None
    assert (maps[1] is None) == one_leaf
    if not info.randomised:
        for i in range(B):
            single = info.fn(model_fn, params, (img[i:i + 1], fxai.fixed(vec[i:i + 1]) if one_leaf else vec[i:i + 1],
                                                fxai.fixed(scale[i:i + 1]), ids[i:i + 1]), TARGET[i:i + 1],
                             **options)
            _close([m[i:i + 1] for m in maps if m is not None] if one_leaf else [maps[0][i:i + 1]],
                   [m for m in single if m is not None][:1], 1e-10)
    again = info.fn(model_fn, params, x, TARGET, **{**options, "chunk_size": 2})
    _close([m for m in maps if m is not None], [m for m in again if m is not None], 1e-10)
    for t, b in zip((img, vec, scale, ids), before):
        assert torch.equal(t, b)
    if info.family != "mask":
        grads = torch.func.grad(lambda p: info.fn(model_fn, p, x, TARGET, **options)[0].square().sum())(params)
        assert all(torch.isfinite(g).all() for g in grads.values()) and grads["lin.weight"].abs().sum() > 0


def test_structured_inputs_are_refused_clearly(setup):
    _, model_fn, params, img, vec, scale, ids = setup
    with pytest.raises(ValueError, match="same batch size"):
        fxai.gradient(model_fn, params, (img, vec[:2]), 0)
    with pytest.raises(ValueError, match="no leaf to attribute"):
        fxai.gradient(model_fn, params, (fxai.fixed(img), ids), 0)
    with pytest.raises(TypeError, match="leaf 1 is str"):
        fxai.gradient(model_fn, params, (img, "text"), 0)
    with pytest.raises(ValueError, match="structure of x"):
        fxai.integrated_gradients(model_fn, params, (img, vec), 0, baseline=(0.0,))
    with pytest.raises(TypeError, match="as a structure"):
        fxai.integrated_gradients(model_fn, params, (img, vec), 0, baseline=torch.zeros(5))
    with pytest.raises(ValueError, match="does not broadcast"):
        fxai.integrated_gradients(model_fn, params, (img, vec), 0, baseline=(0.0, torch.zeros(4)))
    with pytest.raises(ValueError, match="mark the others with fxai.fixed"):
        fxai.occlusion(model_fn, params, (img, vec), 0, window=3, stride=3)
    with pytest.raises(TypeError, match="Structured inputs .* work with gradient"):
        fxai.grad_cam(model_fn, params, (img, vec), 0, layer="conv")
    with pytest.raises(TypeError, match="fixed\\(tensor\\): expected a torch.Tensor"):
        fxai.fixed([1, 2])


@pytest.mark.parametrize("target, expected", [
    ([0, 2, 1], [0, 2, 1]),
    ((2, 2, 0), [2, 2, 0]),
    (np.array([1, 0, 2]), [1, 0, 2]),
    (np.int64(2), [2, 2, 2]),
    (torch.tensor([1]), [1, 1, 1]),
])
def test_targets_as_lists_tuples_numpy_and_one_element_tensors(target, expected):
    torch.manual_seed(0)
    model_fn = lambda p, x: x @ p["w"]  # noqa: E731
    params = {"w": torch.randn(4, 3)}
    x = torch.randn(3, 4)
    assert torch.equal(fxai.gradient(model_fn, params, x, target), params["w"].T[expected])


def test_target_sequences_are_validated():
    model_fn = lambda p, x: x @ p["w"]  # noqa: E731
    params, x = {"w": torch.randn(4, 3)}, torch.randn(3, 4)
    with pytest.raises(TypeError, match="integer class indices"):
        fxai.gradient(model_fn, params, x, [0.5, 1.0, 2.0])
    with pytest.raises(ValueError, match="rectangular"):
        fxai.gradient(model_fn, params, x, [[0, 1], [2], [1, 1]])
    with pytest.raises(ValueError, match=r"shape \[B\] or \[B, K\] with B = 3"):
        fxai.gradient(model_fn, params, x, [0, 1])
    with pytest.raises(TypeError, match="got a bool"):
        fxai.gradient(model_fn, params, x, True)
    nested = fxai.gradient(model_fn, params, x, [[0, 1], [2, 0], [1, 1]])
    assert nested.shape == (3, 2, 4)


def test_the_documented_example_runs():
    from pathlib import Path
    import re
    page = (Path(__file__).resolve().parents[1] / "docs" / "inputs.md").read_text()
    (block,) = re.findall(r"^```python\n(.*?)^```", page, flags=re.S | re.M)
    namespace = {}
    exec(compile(block, "docs/inputs.md", "exec"), namespace)
    assert namespace["g_view"].shape == (4, 12) and namespace["g_scale"] is None
