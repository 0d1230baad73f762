"""Attribution methods: pure functions ``(model_fn, params, x, target, *, options) -> map``."""
