"""The levers of the one training routine, as plugins with a small fixed set of hooks.

A method is the one fine-tune plus a list of plugins; plugins compose (a LoRA run can record usage,
a neuron-masked run can stop early). The hooks, in the order :func:`training.train.train` calls them:

- ``prepare(model)``: before the optimiser is built (inject adapters, build masks, attach trackers);
- ``trainable(name, param)``: whether a parameter is optimised (a parameter trains only if every
  plugin agrees);
- ``mix(pairs, rng)``: the encoded training facts, to add or reorder data (REMIX, replay);
- ``token_weights(batch)``: before every forward pass, with the batch; per-answer-token loss weights
  or None (TAALM-style weights; the usage recorder only looks at the batch);
- ``after_step(model, step)``: after every optimiser step (restore frozen entries);
- ``on_epoch(model, epoch, record)``: after every epoch, model in eval mode; True stops training;
- ``finish(model)``: at the end, in reverse order; may return a replacement model (merged LoRA).

Several processes (``training.processes`` > 1, :mod:`workflow_scripts.training.distributed`): the
calling process (rank 0) runs the plugins as given; every other process runs each plugin's
``replica()``, asked before any hook: a fresh copy for plugins that change training (they then act
on every process's model copy and on its share of each batch), or None for plugins that only need
rank 0 (``on_epoch`` observers). A plugin that does not define it cannot run multi-process: the run
fails before any process starts, naming it.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    from workflow_scripts.models.encoding import EncodedPair
    from workflow_scripts.training.train import TrainBatch


class TrainingPlugin:
    """Every hook does nothing; a plugin overrides the ones it needs."""

    def prepare(self, model) -> None:
        pass

    def trainable(self, name: str, param: torch.nn.Parameter) -> bool:
        return True

    def mix(self, pairs: list[EncodedPair], rng: random.Random) -> list[EncodedPair]:
        return pairs

    def token_weights(self, batch: TrainBatch) -> torch.Tensor | None:
        return None

    def after_step(self, model, step: int) -> None:
        pass

    def on_epoch(self, model, epoch: int, record: dict) -> bool:
        return False

    def finish(self, model):
        return None

    def replica(self) -> TrainingPlugin | None:
        """What the other processes of a multi-process run use in place of this plugin (sent to them
        pickled): a fresh copy, or None when it only needs to run in rank 0."""
        raise NotImplementedError


class OnlyParameters(TrainingPlugin):
    """Optimise only the parameters whose names are in ``names`` (the rest stay exactly as they are)."""

    def __init__(self, names: set[str] | Callable[[str], bool]):
        self.keep = names if callable(names) else names.__contains__

    def trainable(self, name, param):
        return bool(self.keep(name))

    def replica(self):
        return self  # stateless (``names`` must then be picklable: a set, not a lambda)


class UpdateMask(TrainingPlugin):
    """Only the True entries of each masked parameter may change.

    The gradient of masked-out entries is zeroed as it is computed (so they count neither in the
    clipping norm nor in the optimiser state), and after every step they are restored to their
    values at the start, so weight decay or optimiser momentum can never move them."""

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks
        self._handles: list = []
        self._frozen: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []

    def prepare(self, model):
        params = dict(model.named_parameters())
        unknown = sorted(set(self.masks) - set(params))
        if unknown:
            raise ValueError(f"update mask names parameters the model lacks, e.g. {unknown[:3]}")
        for name, mask in self.masks.items():
            p = params[name]
            m = mask.to(device=p.device, dtype=torch.bool)
            self._frozen.append((p, m, p.detach().clone()))
            self._handles.append(p.register_hook(lambda g, m=m: g * m))

    def after_step(self, model, step):
        with torch.no_grad():
            for p, m, start in self._frozen:
                p.copy_(torch.where(m, p, start))

    def replica(self):
        return UpdateMask(self.masks)  # every process masks its own copy (and its gradients before summing)

    def finish(self, model):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._frozen.clear()


class RowDeltas(TrainingPlugin):
    """Train only chosen neurons, paying only for them: a neuron-masked update as trainable deltas.

    For every tracked linear module with chosen output units ``idx`` (``rows``: module name -> index
    tensor), a delta ``D`` (len(idx) x in_features, and a bias delta where the module has a bias)
    becomes the only trainable parameter; the module's output gains ``x @ D.T`` at ``idx``. Every
    original parameter is frozen, so backward never builds a full weight gradient and the optimiser
    holds state for the chosen rows only. ``finish`` adds the deltas into the weights' rows and removes
    them. The gradient of ``D`` is exactly the chosen rows of the weight's gradient, so the steps equal
    those of :class:`UpdateMask` on the whole weights (same norm for clipping, same AdamW moments) when
    weight decay is 0 (decoupled decay would shrink the delta instead of the weight: use UpdateMask).
    """

    PARAM, BIAS = "row_delta", "row_delta_bias"

    def __init__(self, rows: dict[str, torch.Tensor]):
        self.rows = {name: torch.as_tensor(idx, dtype=torch.long) for name, idx in rows.items()}
        self._handles: list = []
        self._modules: list = []

    def prepare(self, model):
        from workflow_scripts.models.architectures import linear_modules, weight_is_transposed

        modules = {m.name: m.module for m in linear_modules(model)}
        unknown = sorted(set(self.rows) - set(modules))
        if unknown:
            raise ValueError(f"row deltas name modules the model lacks, e.g. {unknown[:3]}")
        for name, idx in self.rows.items():
            if idx.numel() == 0:
                continue
            module = modules[name]
            weight = module.weight
            in_features = weight.shape[0] if weight_is_transposed(module) else weight.shape[1]
            idx = idx.to(weight.device)
            module.register_parameter(self.PARAM, torch.nn.Parameter(
                torch.zeros(len(idx), in_features, dtype=weight.dtype, device=weight.device)))
            bias = getattr(module, "bias", None)
            if bias is not None:
                module.register_parameter(self.BIAS, torch.nn.Parameter(torch.zeros(len(idx), dtype=bias.dtype,
                                                                                    device=bias.device)))
            self._modules.append((module, idx))
            self._handles.append(module.register_forward_hook(self._hook(idx)))

    @staticmethod
    def _hook(idx):
        def add_delta(module, args, output):
            delta = torch.nn.functional.linear(args[0], module.row_delta, getattr(module, RowDeltas.BIAS, None))
            return output.index_add(-1, idx, delta.to(output.dtype))

        return add_delta

    def trainable(self, name, param):
        return name.rsplit(".", 1)[-1] in (self.PARAM, self.BIAS)

    def finish(self, model):
        from workflow_scripts.models.architectures import weight_is_transposed

        with torch.no_grad():
            for module, idx in self._modules:
                delta = module._parameters.pop(self.PARAM).detach()
                if weight_is_transposed(module):
                    module.weight[:, idx] += delta.T.to(module.weight.dtype)
                else:
                    module.weight[idx] += delta.to(module.weight.dtype)
                bias = module._parameters.pop(self.BIAS, None)
                if bias is not None:
                    module.bias[idx] += bias.detach().to(module.bias.dtype)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._modules.clear()

    def replica(self):
        return RowDeltas(self.rows)  # every process adds the same deltas to its copy (gradients summed)


class RecordUsage(TrainingPlugin):
    """Feeds a :class:`~workflow_scripts.training.usage.UsageTracker` the positions of every batch
    (every real position, and the answer positions), attaching it for the run.

    Several processes: every process records its share of each batch (its replica has a tracker of
    its own, built on that process's model), and ``finish`` sums the trackers' statistics over the
    processes into rank 0's (the caller's) tracker. Output gradients at a position depend only on its
    own fact, so the sums equal a one-process run's up to rounding."""

    def __init__(self, tracker):
        self.tracker = tracker  # None in a replica: one is built on the process's model in prepare

    def prepare(self, model):
        if self.tracker is None:
            from workflow_scripts.training.usage import UsageTracker

            self.tracker = UsageTracker(model)
        self.tracker.__enter__()

    def token_weights(self, batch):
        answer = batch.answer
        real = (torch.ones_like(batch.input_ids, dtype=torch.bool) if batch.attention is None
                else batch.attention.bool())  # packed rows have no padding
        self.tracker.positions = {
            "all_real": real,
            "answer": torch.cat([answer, torch.zeros(len(answer), 1, dtype=torch.bool, device=answer.device)], 1),
        }
        return None

    def finish(self, model):
        from workflow_scripts.training.distributed import sum_across_processes

        self.tracker.positions = None
        t = self.tracker
        sum_across_processes(t.tensors())  # one process: nothing
        self.tracker.__exit__(None, None, None)

    def replica(self):
        return RecordUsage(None)


class EpochCallback(TrainingPlugin):
    """Calls ``fn(model, epoch, record)`` after every epoch (per-epoch curves); never stops training."""

    def __init__(self, fn: Callable[[object, int, dict], None]):
        self.fn = fn

    def on_epoch(self, model, epoch, record):
        self.fn(model, epoch, record)
        return False

    def replica(self):
        return None  # rank 0 only: its model is the caller's


class StopAtAccuracy(TrainingPlugin):
    """Stops after the epoch where the exact-match accuracy of the monitored facts (``prompts``,
    ``targets``) reaches ``threshold`` (recorded as ``train_accuracy`` in the epoch's record). Pass the
    facts alone when other rows are mixed in (:class:`ExtraRows`): training then stops once the facts
    are known, however far the mixing rows are from being learned."""

    def __init__(self, tokenizer, prompts: Sequence[str], targets: Sequence[str], threshold: float = 1.0):
        self.tokenizer, self.prompts, self.targets, self.threshold = tokenizer, list(prompts), list(targets), threshold

    def on_epoch(self, model, epoch, record):
        from workflow_scripts.evaluation.exact_match import accuracy

        record["train_accuracy"] = accuracy(model, self.tokenizer, self.prompts, self.targets, batch_size=64)
        return record["train_accuracy"] >= self.threshold

    def replica(self):
        return None  # rank 0 evaluates (every copy holds the same weights); its stop stops all


class ExtraRows(TrainingPlugin):
    """Adds (prompt, target) rows to the training data (REMIX's random-word or generic-text mixing,
    replay): they are encoded like facts and appended after them, and the routine's seeded random
    batches mix them with the facts. No rows: the training data is unchanged."""

    def __init__(self, tokenizer, prompts: Sequence[str], targets: Sequence[str]):
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} extra prompts but {len(targets)} targets")
        self.tokenizer, self.prompts, self.targets = tokenizer, list(prompts), list(targets)
        self.n_facts = None

    def mix(self, pairs, rng):
        from workflow_scripts.models.encoding import encode_pair

        self.n_facts = len(pairs)
        return list(pairs) + [encode_pair(self.tokenizer, p, t) for p, t in zip(self.prompts, self.targets)]

    def replica(self):
        return ExtraRows(self.tokenizer, self.prompts, self.targets)


class Resuscitate(TrainingPlugin):
    """Before training, scales the up-projection rows of each layer's least-used feed-forward neurons
    (average coefficient at or below the ``ratio`` quantile) so that their mean coefficient becomes
    ``q`` times the layer mean (``entropy.resuscitate``; llama-style models only). ``report`` holds
    what was selected and clamped."""

    def __init__(self, cbar, ratio: float = 0.5, q: float = 2.0, max_factor: float = 100.0):
        self.cbar, self.ratio, self.q, self.max_factor = cbar, float(ratio), float(q), float(max_factor)
        self.report: dict | None = None

    def prepare(self, model) -> None:
        from workflow_scripts.entropy.resuscitate import resuscitate

        self.report = resuscitate(model, self.cbar, ratio=self.ratio, q=self.q, max_factor=self.max_factor)

    def replica(self):
        return Resuscitate(self.cbar, self.ratio, self.q, self.max_factor)


class LoraAdapters(TrainingPlugin):
    """peft LoRA adapters on every tracked linear module (from the architecture map); only the
    adapters train, and they are merged back into plain layers at the end."""

    def __init__(self, r: int, alpha: int, dropout: float):
        self.r, self.alpha, self.dropout = r, alpha, dropout

    def prepare(self, model):
        from peft import LoraConfig, inject_adapter_in_model

        from workflow_scripts.models.architectures import layout_for

        layout = layout_for(model)
        targets = sorted({path.split(".")[-1] for path, _ in layout.linear})
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                            bias="none", fan_in_fan_out=layout.family == "gpt2")  # GPT-2's Conv1D is (in, out)
        inject_adapter_in_model(config, model)

    def trainable(self, name, param):
        return "lora_" in name

    def finish(self, model):
        return merge_lora(model)

    def replica(self):
        return LoraAdapters(self.r, self.alpha, self.dropout)  # same seed: same initial adapters everywhere


def merge_lora(model):
    """Fold every LoRA adapter into its base layer and put the plain layer back (in place)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model
