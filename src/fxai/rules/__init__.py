"""The modified-backward engine: rules that keep an op's forward and replace its backward, with no hooks.

- :mod:`.engine`: op interception. :class:`~.engine.Intercept` (a ``TorchFunctionMode``) sends each call of an
  op in its table to a rule, bound to one canonical form; :class:`~.engine.Recorder` and
  :class:`~.engine.Replayer` pair two passes through a model call by call.
- :mod:`.ops`: the op table, every spelling torch has for each op (``F.relu``, ``Tensor.relu_``, ``aten``...).
- :mod:`.relu`: ReLU rules (guided backprop, DeconvNet) on the engine.
- :mod:`.multipliers`, :mod:`.mixing`: DeepLIFT's multipliers (Rescale, RevealCancel; max-pooling, products,
  softmax) as replay rules on the engine.
- :mod:`.lrp`: LRP's rules and composites, on the arithmetic of :mod:`.lrp_terms`; :mod:`.canonizers`: ``params -> params`` rewrites (BatchNorm
  folding, whose pairs are found on the engine).
- :mod:`.lrp_mode`: LRP's interception mode; :mod:`.lrp_transformers`: AttnLRP's rules (softmax, the products
  of attention, LayerNorm/RMSNorm with the scale held constant), taken by that mode.
- :mod:`.attention`: fused attention (``F.scaled_dot_product_attention``, ``F.multi_head_attention_forward``)
  decomposed into ``softmax(q kᵀ / √d + mask) v`` so that its probabilities are tensors a method reads.

LRP keeps a mode of its own rather than running on :class:`~.engine.Intercept`: the engine binds each call to
canonical operands and options, which DeepLIFT needs (its rules compare an op's operands with the reference
pass's), while LRP passes pooling, means, sums and activations through as opaque calls and reads only their
input, so the engine would need binders for some thirty spellings that exist only to be undone. Dispatch
costs the same either way (``benchmarks/bench_interception.py``: ~50 µs per intercepted call for both, on
resnet18 and vgg16; docs/benchmarks.md). A new LRP rule (a transformer op, say) goes into :mod:`.lrp` (the
rule) and :mod:`.lrp_mode` (which calls get it); a new DeepLIFT rule into :mod:`.ops` and
:mod:`.multipliers`.
"""
