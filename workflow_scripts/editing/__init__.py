"""Knowledge editing: ROME and MEMIT, re-implemented from their equations.

One concept per module:

- ``site``: where an edit is written (the MLP output projection of a block), through the architecture map;
- ``positions``: which token an edit reads and writes at (the subject's last token, by character offsets);
- ``hooks``: capture keys/hidden states at (row, position) pairs and add vectors there;
- ``templates``: seeded context templates generated from the model;
- ``corpora`` / ``covariance``: the key second moment C = E[k kᵀ] from offline text, cached by weights;
- ``targets``: the batched z*/v* optimisation shared by ROME and MEMIT;
- ``rome`` / ``memit``: the weight updates; ``hparams``: typed settings; ``trace``: causal tracing and
  the quick layer sweep.

Every update is computed as an (out × in) matrix Δ and applied as ``W += Δ`` (``nn.Linear``) or
``W += Δᵀ`` (GPT-2's ``Conv1D``), in float64 where it is solved.
"""

from workflow_scripts.editing.requests import EditRequest, requests_from_facts

__all__ = ["EditRequest", "requests_from_facts"]
