"""Knowledge entropy: how evenly a model spreads its feed-forward coefficients over its neurons, and
resuscitation, which amplifies the neurons it uses least.

One concept per module:

- ``coefficients``: the feed-forward coefficients (the input of each block's MLP output projection),
  averaged per sequence over its real tokens, from forward hooks with the attention mask passed;
- ``entropy``: per-layer entropy of the L1-normalised average coefficients, their sum over layers,
  and a paired bootstrap over sequences for CIs of a checkpoint's total and of ΔH between two;
- ``resuscitate``: the one-off edit that scales the linear "up" rows of the least-used neurons.
"""
