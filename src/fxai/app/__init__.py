"""The applications over the library: the ``fxai`` command, the demo, model and image loading, model zoos."""
