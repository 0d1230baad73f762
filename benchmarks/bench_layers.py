"""Time of layer and neuron attribution on resnet18 (CPU, batch 2): fxai against Captum and the floor.

- ``layer IG``: ``fxai.at_layer(fxai.integrated_gradients, "layer3")`` against Captum's
  ``LayerIntegratedGradients(model, model.layer3)`` with ``internal_batch_size`` set to fxai's default
  chunk (rows of 8 images at 224×224, as a tuned Captum user sets it); floor: the trunk up to ``layer3``
  once, then ``layer4``, pooling and ``fc`` forward and backward over the stacked layer-space path rows
  (Captum runs the trunk again for every row; fxai runs only the graph after ``layer3``, which nothing
  bypasses).
- ``layer IG, bypassed layer``: the same at ``layer3.0.conv1``, which the block's shortcut bypasses, so every
  row runs the model from ``x``; floor: the model on the stacked copies of ``x`` with the layer's output
  replaced by the path rows (a forward hook), backward to them.
- ``conductance``: ``fxai.layer_conductance(..., layer="layer3", method="gausslegendre")`` against
  ``LayerConductance``; floor: one forward over the ``steps + 1`` stacked input rows and one backward from
  the scores to ``layer3``'s output.
- ``neuron IG``: ``fxai.integrated_gradients`` on ``fxai.layer_output(model_fn, "layer3")`` against
  ``NeuronIntegratedGradients``; floor: the trunk up to ``layer3`` forward and backward to the input over the
  stacked path rows.

Every floor runs in the rows per pass of fxai's default chunk (the same memory). Variants run interleaved in
one process (medians of ``--repeats`` after a warm-up). Prints a Markdown table.

Run: ``python benchmarks/bench_layers.py --threads 2 --repeats 3``
(quick: ``--size 64 --steps 4 --repeats 1``)
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torchvision

import fxai
from fxai._core.batching import auto_chunk
from timing import interleaved_medians


def _gl(steps, x):
    alphas, weights = fxai.path_rule("gausslegendre", steps)
    return alphas.to(x.dtype), weights.to(x.dtype)


def _activations(model, layer, x):
    store = []
    handle = layer.register_forward_hook(lambda m, i, o: store.append(o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from captum.attr import LayerConductance, LayerIntegratedGradients, NeuronIntegratedGradients

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    target, steps, batch = torch.tensor([3, 7]), args.steps, x.shape[0]
    model_fn, params = fxai.functional(model)
    chunk = auto_chunk(None, x)
    trunk = torch.nn.Sequential(*list(model.children())[:-3])  # conv1 ... layer3
    tail = torch.nn.Sequential(model.layer4, model.avgpool, torch.nn.Flatten(), model.fc)
    neurons = fxai.layer_output(model_fn, "layer3")
    neuron = fxai.neuron(neurons, params, x, (5, 1, 1))
    alphas, _ = _gl(steps, x)
    points, _ = _gl(steps + 1, x)  # conductance: steps + 1 path points

    def chunked(rows, fn):  # the floors run in fxai's default chunks: the same rows per pass, the same memory
        return [fn(rows[a:a + chunk], a) for a in range(0, rows.shape[0], chunk)]

    def scores(logits, a):
        return logits.gather(1, target.repeat(steps + 1)[a:a + logits.shape[0], None]).sum()

    def floor_layer_ig():
        with torch.no_grad():
            a, a0 = trunk(x), trunk(torch.zeros_like(x))
        path = (a0 + alphas.view(-1, 1, 1, 1, 1) * (a - a0)).flatten(0, 1)
        return chunked(path, lambda rows, i: torch.autograd.grad(scores(tail(rows.requires_grad_()), i), rows)[0])

    inner = model.layer3[0].conv1  # bypassed by the block's shortcut: every row runs the model from x

    def floor_bypassed_ig():
        a, a0 = _activations(model, inner, x), _activations(model, inner, torch.zeros_like(x))
        path = (a0 + alphas.view(-1, 1, 1, 1, 1) * (a - a0)).flatten(0, 1)
        xs = x.repeat(steps, 1, 1, 1)

        def one(rows, i):
            rows = rows.requires_grad_()
            handle = inner.register_forward_hook(lambda m, inp, out: rows)
            try:
                return torch.autograd.grad(scores(model(xs[i:i + rows.shape[0]]), i), rows)[0]
            finally:
                handle.remove()
        return chunked(path, one)

    def floor_conductance():
        def one(rows, i):
            acts = trunk(rows)
            leaf = acts.detach().requires_grad_()
            return torch.autograd.grad(scores(tail(leaf), i), leaf)[0]
        return chunked((points.view(-1, 1, 1, 1, 1) * x).flatten(0, 1), one)

    def floor_neuron_ig():
        path = (alphas.view(-1, 1, 1, 1, 1) * x).flatten(0, 1)
        return chunked(path, lambda rows, i: torch.autograd.grad(trunk(rows.requires_grad_())[:, 5, 1, 1].sum(),
                                                                 rows)[0])

    cases = {
        "layer IG": {
            "fxai": lambda: fxai.at_layer(fxai.integrated_gradients, "layer3")(model_fn, params, x, target,
                                                                               steps=steps),
            "captum": lambda: LayerIntegratedGradients(model, model.layer3).attribute(
                x, target=target, n_steps=steps, internal_batch_size=chunk),
            "floor": floor_layer_ig,
        },
        "layer IG, bypassed layer": {
            "fxai": lambda: fxai.at_layer(fxai.integrated_gradients, "layer3.0.conv1")(model_fn, params, x, target,
                                                                                       steps=steps),
            "captum": lambda: LayerIntegratedGradients(model, inner).attribute(
                x, target=target, n_steps=steps, internal_batch_size=chunk),
            "floor": floor_bypassed_ig,
        },
        "conductance": {
            "fxai": lambda: fxai.layer_conductance(model_fn, params, x, target, layer="layer3", steps=steps,
                                                   method="gausslegendre"),
            "captum": lambda: LayerConductance(model, model.layer3).attribute(
                x, target=target, n_steps=steps, internal_batch_size=chunk),
            "floor": floor_conductance,
        },
        "neuron IG": {
            "fxai": lambda: fxai.integrated_gradients(neurons, params, x, neuron, steps=steps),
            "captum": lambda: NeuronIntegratedGradients(model, model.layer3).attribute(
                x, (5, 1, 1), n_steps=steps, internal_batch_size=chunk),
            "floor": floor_neuron_ig,
        },
    }
    print(f"resnet18, B={batch}, {args.size}x{args.size}, {steps} steps, layer3, CPU, {args.threads} threads, "
          f"median of {args.repeats}; Captum's internal_batch_size = fxai's default chunk = {chunk} rows\n")
    print("| case | fxai (ms) | captum (ms) | floor (ms) | fxai / captum | fxai / floor |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, variants in cases.items():
        med = interleaved_medians(variants, args.repeats)
        print(f"| {name} | {1000 * med['fxai']:.0f} | {1000 * med['captum']:.0f} | {1000 * med['floor']:.0f} | "
              f"{med['fxai'] / med['captum']:.2f} | {med['fxai'] / med['floor']:.2f} |")


if __name__ == "__main__":
    main()
