"""Keys and hidden states at the subject's last token, over context templates, in batched passes."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from workflow_scripts.editing.hooks import capture
from workflow_scripts.editing.positions import encode_edit
from workflow_scripts.editing.requests import EditRequest
from workflow_scripts.editing.site import edit_site
from workflow_scripts.editing.templates import check_templates
from workflow_scripts.models.architectures import block_name
from workflow_scripts.models.encoding import length_sorted_batches, pad_id, pad_right


def at_subject(model: nn.Module, tokenizer, requests: Sequence[EditRequest], templates: Sequence[str],
               inputs: Sequence[str] = (), outputs: Sequence[str] = (), batch_size: int = 64
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """({name: (n_requests, n_templates, width)} of module inputs, same for outputs) at the subject's
    last token of each request's prompt filled into each template (no target appended)."""
    texts = [(i, j, encode_edit(tokenizer, r.prompt, r.subject, None, t))
             for i, r in enumerate(requests) for j, t in enumerate(templates)]
    n, m = len(requests), len(templates)
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    got_in: dict[str, torch.Tensor] = {}
    got_out: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in length_sorted_batches([len(e.ids) for _, _, e in texts], batch_size):
            ids, mask = pad_right([texts[k][2].ids for k in batch], pad)
            rows = torch.arange(len(batch))
            pos = torch.tensor([texts[k][2].subject_last for k in batch])
            cin, cout = capture(model, ids.to(device), mask.long().to(device), rows, pos, inputs, outputs)
            for store, part in ((got_in, cin), (got_out, cout)):
                for name, values in part.items():
                    if name not in store:
                        store[name] = torch.zeros(n, m, values.shape[-1], dtype=torch.float32)
                    for row, k in enumerate(batch):
                        store[name][texts[k][0], texts[k][1]] = values[row].cpu()
    finally:
        model.train(was_training)
    return got_in, got_out


def subject_keys(model: nn.Module, tokenizer, requests: Sequence[EditRequest], layers: Sequence[int],
                 templates: Sequence[str], batch_size: int = 64) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """({layer: template-mean key (n, d_k)}, {layer: bare-prompt key (n, d_k)}): the edit module's
    input at the subject's last token. The bare prompt is template 0 (``"{}"``)."""
    templates = check_templates(templates)
    names = {edit_site(model, layer).name: int(layer) for layer in layers}
    got, _ = at_subject(model, tokenizer, requests, templates, inputs=list(names), batch_size=batch_size)
    mean = {layer: got[name].mean(1) for name, layer in names.items()}
    bare = {layer: got[name][:, 0] for name, layer in names.items()}
    return mean, bare


def subject_keys_and_hidden(model: nn.Module, tokenizer, requests: Sequence[EditRequest], layers: Sequence[int],
                            hidden_layer: int, templates: Sequence[str], batch_size: int = 64
                            ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """({layer: template-mean key (n, d_k)}, block ``hidden_layer``'s output at the subject's last
    token of the bare prompt (n, d)) from one set of passes."""
    templates = check_templates(templates)
    names = {edit_site(model, layer).name: int(layer) for layer in layers}
    block = block_name(model, hidden_layer)
    got_in, got_out = at_subject(model, tokenizer, requests, templates, inputs=list(names), outputs=[block],
                                 batch_size=batch_size)
    return {layer: got_in[name].mean(1) for name, layer in names.items()}, got_out[block][:, 0]
