"""REMIX (continual memorisation of factoids) building blocks: data-mixing text sources, the mixing
step itself, a key-value recall fact set and a logit lens.

- :mod:`~workflow_scripts.remix.textsources`: (prompt, target) rows of random vocabulary words,
  generic prose windows, Python standard-library source windows and arithmetic word problems;
- :mod:`~workflow_scripts.remix.mixing`: append ``int(ratio * N)`` mixing rows to N fact rows;
- :mod:`~workflow_scripts.remix.kvr`: random key-value recall facts in the CounterFact schema;
- :mod:`~workflow_scripts.remix.lens`: per-layer rank of each answer's first token (logit lens) and
  the layer where it emerges as the top token.
"""
