"""Feed-forward coefficients: the input of each block's MLP output projection, averaged over text.

In block l the MLP computes ``down(c)`` with ``c = act_fn(gate(h)) * up(h)`` (llama-style SwiGLU) or
``c = gelu(c_fc(h))`` (GPT-2), where h is the hidden state entering the MLP. The m-dimensional c is
what knowledge entropy measures: c is captured as the input of the output projection (the editors'
site, :func:`~workflow_scripts.models.architectures.edit_module_name`: llama's ``mlp.down_proj``,
GPT-2's ``mlp.c_proj``), through :class:`~workflow_scripts.models.hooks.Trace`.

Two accountings (``mode``):

- ``"paper"`` (default): the attention mask is passed and pads are excluded. For each sequence s,
  ``c̄_s = mean over its real tokens of |c|``; the dataset's c̄ is the mean of c̄_s over sequences.
  A sequence's value does not depend on what it is batched with.
- ``"code"``: reproduces the seed's accounting (spec B.4.1): the model is called without an attention
  mask and |c| is summed over *every* position of the padded batch, pads included; the total is
  divided by the number of sequences. Here a sequence's value is the sum over its padded row, so it
  depends on the batch's padding width. Kept only for parity with the seed's numbers; for
  equal-length unpadded sequences it is ``"paper"`` times the length (the scale cancels in the
  entropy's normalisation), otherwise it is biased towards whatever the pads produce.

Everything is accumulated in float64, and the per-sequence values are kept (not only their mean) so
that CIs can come from a paired bootstrap over sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from workflow_scripts.models.architectures import blocks, body_and_head, edit_module_name
from workflow_scripts.models.encoding import length_sorted_batches, pad_id, pad_right
from workflow_scripts.models.hooks import Trace

MODES = ("paper", "code")

__all__ = ["MODES", "SequenceCoefficients", "coefficient_modules", "encode_texts", "sequence_coefficients",
           "average_coefficients"]


@dataclass(frozen=True)
class SequenceCoefficients:
    """Per-sequence mean |coefficient| of every neuron of every layer.

    ``values[s, l, i]``: sequence s's mean (``"paper"``) or padded-row sum (``"code"``) of |c_i| in
    layer l, float64, sequences in the order of the texts given. ``n_tokens[s]``: s's real tokens.
    """

    values: torch.Tensor  # (n_sequences, n_layers, m) float64
    n_tokens: torch.Tensor  # (n_sequences,) int64
    modules: tuple[str, ...]  # the hooked module of each layer
    mode: str

    @property
    def n_sequences(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.values.shape[1])

    @property
    def width(self) -> int:
        """m, the number of coefficients (neurons) per layer."""
        return int(self.values.shape[2])

    def cbar(self) -> torch.Tensor:
        """The dataset's average coefficients, (n_layers, m) float64: the mean over sequences."""
        return self.values.mean(dim=0)


def coefficient_modules(model: nn.Module) -> list[str]:
    """Full dotted name of each block's MLP output projection, whose input is the coefficient vector."""
    return [edit_module_name(model, layer) for layer in range(len(blocks(model)))]


def encode_texts(tokenizer, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """Token ids of each text (with the tokenizer's special tokens), cut to ``max_length`` tokens."""
    out = []
    for k, text in enumerate(texts):
        ids = list(tokenizer(text)["input_ids"])
        if max_length is not None:
            ids = ids[: int(max_length)]
        if not ids:
            raise ValueError(f"text {k} ({text!r}) has no tokens")
        out.append(ids)
    return out


def sequence_coefficients(model: nn.Module, tokenizer, texts: Sequence[str], *, mode: str = "paper",
                          batch_size: int = 8, max_length: int | None = None) -> SequenceCoefficients:
    """Measure every sequence's mean |coefficient| per layer and neuron (see the module docstring).

    Texts are tokenised, cut to ``max_length`` tokens, batched by similar length and padded on the
    right. Only the transformer body runs when the architecture allows it (no LM head). The model is
    used as it is (call ``eval()`` first; :func:`~workflow_scripts.models.loading.load_model` does).
    """
    if mode not in MODES:
        raise ValueError(f"unknown coefficient mode {mode!r}; use one of {MODES}")
    if not texts:
        raise ValueError("no texts to measure coefficients on")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    encoded = encode_texts(tokenizer, texts, max_length)
    names = coefficient_modules(model)
    layer_of = {name: layer for layer, name in enumerate(names)}
    parts = body_and_head(model)
    runner = parts[0] if parts is not None else model
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)

    per_layer: list[torch.Tensor | None] = [None] * len(names)
    state: dict[str, torch.Tensor] = {}

    def on_input(name: str, coefficients: torch.Tensor) -> None:
        a = coefficients.detach().abs().to(torch.float64)  # (batch, width, m)
        if mode == "paper":
            mask = state["mask"]
            value = (a * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
        else:
            value = a.sum(dim=1)
        layer = layer_of[name]
        if per_layer[layer] is None:
            per_layer[layer] = torch.zeros((len(encoded), a.shape[-1]), dtype=torch.float64)
        per_layer[layer][state["rows"]] = value.cpu()

    with torch.inference_mode(), Trace(model, names, retain_output=False, on_input=on_input):
        for batch in length_sorted_batches([len(ids) for ids in encoded], batch_size):
            input_ids, mask = pad_right([encoded[k] for k in batch], pad)
            state["rows"] = torch.tensor(batch, dtype=torch.long)
            state["mask"] = mask.to(device=device, dtype=torch.float64)
            inputs = {"input_ids": input_ids.to(device), "use_cache": False}
            if mode == "paper":
                inputs["attention_mask"] = mask.to(device=device, dtype=torch.long)
            runner(**inputs)

    missing = [names[layer] for layer, value in enumerate(per_layer) if value is None]
    if missing:
        raise RuntimeError(f"the forward pass never reached {missing}")
    widths = {value.shape[-1] for value in per_layer}
    if len(widths) != 1:
        raise ValueError(f"MLP widths differ between layers ({sorted(widths)}); cannot stack them")
    return SequenceCoefficients(
        values=torch.stack(per_layer, dim=1),
        n_tokens=torch.tensor([len(ids) for ids in encoded], dtype=torch.long),
        modules=tuple(names),
        mode=mode,
    )


def average_coefficients(model: nn.Module, tokenizer, texts: Sequence[str], *, mode: str = "paper",
                         batch_size: int = 8, max_length: int | None = None) -> torch.Tensor:
    """c̄: the dataset's average |coefficient| per layer and neuron, (n_layers, m) float64."""
    return sequence_coefficients(model, tokenizer, texts, mode=mode, batch_size=batch_size,
                                 max_length=max_length).cbar()
