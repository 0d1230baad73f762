"""The CAM family: class activation maps from a layer's activations and gradients."""

from __future__ import annotations


def _todo(name):
    def method(model_fn, params, x, target=None, *, layer=None, **options):
        raise NotImplementedError(f"fxai.{name} is not implemented yet")
    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"{name} (not implemented yet)."
    return method


cam = _todo("cam")
grad_cam = _todo("grad_cam")
grad_cam_plus_plus = _todo("grad_cam_plus_plus")
xgrad_cam = _todo("xgrad_cam")
hires_cam = _todo("hires_cam")
layer_cam = _todo("layer_cam")
eigen_cam = _todo("eigen_cam")
eigen_grad_cam = _todo("eigen_grad_cam")
full_grad = _todo("full_grad")
guided_grad_cam = _todo("guided_grad_cam")
