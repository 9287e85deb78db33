"""The one place that knows module names.

For each supported architecture family it lists where the transformer blocks live and which linear
modules each block has, with a short, architecture-independent type name (``attn_q``, ``mlp_down``…).
Everything else (hooks, neuron usage, masks) asks this module instead of hard-coding names.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from torch import nn


@dataclass(frozen=True)
class BlockLayout:
    family: str
    blocks: str  # dotted attribute path from the *ForCausalLM model to the list of blocks
    linear: tuple[tuple[str, str], ...]  # (module path inside a block, module type)


LLAMA = BlockLayout(
    family="llama",
    blocks="model.layers",
    linear=(
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_out"),
        ("mlp.gate_proj", "mlp_gate"),
        ("mlp.up_proj", "mlp_up"),
        ("mlp.down_proj", "mlp_down"),
    ),
)

GPT2 = BlockLayout(
    family="gpt2",
    blocks="transformer.h",
    linear=(
        ("attn.c_attn", "attn_qkv"),
        ("attn.c_proj", "attn_out"),
        ("mlp.c_fc", "mlp_in"),
        ("mlp.c_proj", "mlp_out"),
    ),
)

# config.model_type -> layout. Llama-style decoders share module names.
LAYOUTS: dict[str, BlockLayout] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "gemma": LLAMA,
    "gemma2": LLAMA,
    "gemma3_text": LLAMA,
    "olmo": LLAMA,
    "olmo2": LLAMA,
    "gpt2": GPT2,
}


@dataclass(frozen=True)
class LinearModule:
    """One tracked linear module: ``name`` is its full dotted name in the model."""

    block: int
    type: str
    name: str
    module: nn.Module

    @property
    def out_features(self) -> int:
        return output_width(self.module)


def layout_for(model: nn.Module) -> BlockLayout:
    model_type = getattr(model.config, "model_type", None)
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise ValueError(
            f"unsupported architecture {model_type!r}; supported: {sorted(LAYOUTS)} "
            "(add its block layout to workflow_scripts/models/architectures.py)"
        ) from None


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(layout_for(model).blocks)


def linear_modules(model: nn.Module) -> list[LinearModule]:
    """Every tracked linear module, block by block, in the layout's order."""
    layout = layout_for(model)
    out = []
    for i, block in enumerate(model.get_submodule(layout.blocks)):
        for path, mtype in layout.linear:
            out.append(LinearModule(i, mtype, f"{layout.blocks}.{i}.{path}", block.get_submodule(path)))
    return out


def _in_out(module: nn.Module) -> tuple[int, int]:
    """(input features, output units): nn.Linear stores its weight (out, in), GPT-2's Conv1D (in, out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return tuple(module.weight.shape)
    raise TypeError(f"not a linear module: {type(module).__name__}")


def output_width(module: nn.Module) -> int:
    """Number of output units (neurons)."""
    return _in_out(module)[1]


def weight_is_transposed(module: nn.Module) -> bool:
    """True for GPT-2's Conv1D, whose weight is (in_features, out_features)."""
    return type(module).__name__ == "Conv1D"


# Families whose logits are exactly lm_head(final hidden state): no soft-capping or scaling.
_PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "gpt2"}


def body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(transformer body, LM head) when logits are plainly ``head(body(x).last_hidden_state)``.

    Lets callers compute the large vocabulary projection only at the positions they need.
    Returns None for architectures that post-process logits.
    """
    if getattr(model.config, "model_type", None) not in _PLAIN_HEAD:
        return None
    head = model.get_output_embeddings()
    return (model.base_model, head) if head is not None else None


# Attention implementations that keep packed facts apart when position ids restart inside a row.
_PACKING_ATTENTION = ("sdpa", "eager", "flash_attention_2")


def supports_packing(model: nn.Module) -> bool:
    """Whether several facts may share one row (transformers builds a block-diagonal causal mask
    from position ids that restart at 0) for this architecture and attention implementation."""
    config = model.config
    return (getattr(config, "model_type", None) in LAYOUTS
            and getattr(config, "_attn_implementation", None) in _PACKING_ATTENTION)


def count_neurons(model: nn.Module) -> int:
    return sum(m.out_features for m in linear_modules(model))


def module_table(model: nn.Module) -> pd.DataFrame:
    """One row per tracked linear module, in :func:`linear_modules` order: its full dotted ``name``,
    ``block`` index, architecture-independent ``type`` and ``width`` (output units = neurons)."""
    mods = linear_modules(model)
    return pd.DataFrame({
        "name": pd.Series([m.name for m in mods], dtype=object),
        "block": pd.Series([m.block for m in mods], dtype="int64"),
        "type": pd.Series([m.type for m in mods], dtype=object),
        "width": pd.Series([m.out_features for m in mods], dtype="int64"),
    })


def describe(model: nn.Module) -> dict:
    mods = linear_modules(model)
    return {
        "family": layout_for(model).family,
        "n_blocks": len(blocks(model)),
        "n_linear_modules": len(mods),
        "n_neurons": sum(m.out_features for m in mods),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


# --- Edit sites (ROME / MEMIT) ------------------------------------------------------------------


@dataclass(frozen=True)
class EditLayout:
    """Where knowledge editors (ROME, MEMIT) write, as module paths inside a block.

    ``edit_module`` is the MLP's output projection: its input is the editor's key k, its output the
    value it writes (``nn.Linear`` for llama-style models, GPT-2's transposed ``Conv1D``).
    ``mlp_module`` is the whole MLP (ROME's value site); a block's output is the residual stream
    (MEMIT's target site). ``final_norm`` is the dotted path, from the model, of the norm that
    precedes the LM head.
    """

    edit_module: str
    mlp_module: str
    final_norm: str


# family (BlockLayout.family) -> edit layout
EDIT_LAYOUTS: dict[str, EditLayout] = {
    "llama": EditLayout(edit_module="mlp.down_proj", mlp_module="mlp", final_norm="model.norm"),
    "gpt2": EditLayout(edit_module="mlp.c_proj", mlp_module="mlp", final_norm="transformer.ln_f"),
}


def edit_layout(model: nn.Module) -> EditLayout:
    family = layout_for(model).family
    try:
        return EDIT_LAYOUTS[family]
    except KeyError:
        raise ValueError(f"no edit site known for family {family!r}; known: {sorted(EDIT_LAYOUTS)} "
                         "(add it to EDIT_LAYOUTS in workflow_scripts/models/architectures.py)") from None


def block_name(model: nn.Module, layer: int) -> str:
    """Full dotted name of block ``layer`` (its output is the residual stream after that block)."""
    return f"{layout_for(model).blocks}.{layer}"


def edit_module_name(model: nn.Module, layer: int) -> str:
    """Full dotted name of the module an editor changes in block ``layer`` (the MLP output projection)."""
    return f"{block_name(model, layer)}.{edit_layout(model).edit_module}"


def mlp_module_name(model: nn.Module, layer: int) -> str:
    """Full dotted name of the MLP of block ``layer``."""
    return f"{block_name(model, layer)}.{edit_layout(model).mlp_module}"


def mlp_up_module_name(model: nn.Module, layer: int) -> str:
    """Full dotted name of the linear "up" half of block ``layer``'s gated MLP (type ``mlp_up``): its
    output unit i multiplies the gate's activation i, so scaling its row i scales the MLP coefficient i
    linearly. Raises ValueError for families without one (GPT-2's MLP is ``gelu(c_fc x)``)."""
    layout = layout_for(model)
    paths = [path for path, mtype in layout.linear if mtype == "mlp_up"]
    if not paths:
        raise ValueError(f"family {layout.family!r} has no linear up projection (type 'mlp_up'): its MLP "
                         "coefficients are not linear in any one weight row")
    return f"{block_name(model, layer)}.{paths[0]}"


def final_norm_name(model: nn.Module) -> str:
    return edit_layout(model).final_norm


def input_width(module: nn.Module) -> int:
    """Number of input features (an editor's key width)."""
    return _in_out(module)[0]


def mlp_adds_to_residual(model: nn.Module) -> bool:
    """True when a block's output is exactly ``residual + mlp(...)`` with nothing after the MLP, so
    adding a vector to the MLP output at a position equals adding it to the block output there.
    Holds for the plain llama and GPT-2 blocks (not, e.g., Gemma-2's post-feed-forward norm)."""
    return getattr(model.config, "model_type", None) in _PLAIN_HEAD


__all__ = [
    "BlockLayout",
    "LinearModule",
    "LAYOUTS",
    "layout_for",
    "blocks",
    "linear_modules",
    "output_width",
    "weight_is_transposed",
    "body_and_head",
    "count_neurons",
    "module_table",
    "describe",
    "EditLayout",
    "EDIT_LAYOUTS",
    "edit_layout",
    "block_name",
    "edit_module_name",
    "mlp_module_name",
    "mlp_up_module_name",
    "final_norm_name",
    "input_width",
    "mlp_adds_to_residual",
]
