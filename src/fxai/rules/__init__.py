"""The modified-backward engine: rules that keep an op's forward and replace its backward.

One interception mechanism (:mod:`.engine`) swaps torch operations for rules inside a block, with no hooks
and no change to the model: ReLU rules (guided backprop, DeconvNet, :mod:`.relu`), DeepLIFT's multipliers
(:mod:`.multipliers`), LRP's rules, composites and canonizers (:mod:`.lrp`, :mod:`.lrp_mode`,
:mod:`.canonizers`), AttnLRP's rules (:mod:`.lrp_transformers`). :mod:`.attention` decomposes fused attention
so that its probabilities are tensors. :mod:`.ops` is the table of ops and their spellings.
"""
