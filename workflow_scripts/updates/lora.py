"""The LoRA arm: peft adapters on every tracked linear module, trained by the one routine."""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.models.architectures import layout_for


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0


def add_lora(model, settings: LoraSettings):
    """Inject LoRA adapters in place; returns (the same model object, trainable filter).

    Target modules come from the architecture map (all linear modules of every block).
    """
    from peft import LoraConfig, inject_adapter_in_model

    layout = layout_for(model)
    targets = sorted({path.split(".")[-1] for path, _ in layout.linear})
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none",
                        fan_in_fan_out=layout.family == "gpt2")  # GPT-2's Conv1D stores (in, out)
    model = inject_adapter_in_model(config, model)
    return model, (lambda name, param: "lora_" in name)


def merge_lora(model):
    """Fold the adapters into the base weights and put the plain base layers back in place, so the
    result is an ordinary model again (same module types, no adapter parameters)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    return model
