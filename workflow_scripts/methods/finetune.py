"""Fine-tuning as one method in three registered configurations: ``full``, ``lora`` and ``neurons``.

All three run the one training routine (``training.train``) with the same optimiser, schedule,
clipping, batching and seed; they differ only in the plugins they add:

- ``full``: every parameter trains;
- ``lora``: peft LoRA adapters on every tracked linear module train, merged back at the end;
- ``neurons``: only ``k`` neurons of the tracked linear modules train (weight rows and bias entries),
  chosen by a neuron strategy (``methods.neurons``: stubborn, plastic, lottery, ...) from usage;
  embeddings, norms and the head stay frozen.

The update's learning rate is ``training.lr * lr_ratio``. torch is imported only inside ``apply``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from workflow_scripts.methods import neurons
from workflow_scripts.methods.base import Method, UpdateRequest, UpdateResult, _fmt, delta_stats, register


@dataclass(frozen=True)
class FineTuneParams:
    epochs: int = 10  # epochs of the update
    lr_ratio: float = 1.0  # the update's learning rate as a multiple of training.lr
    batch_size: int = 0  # facts per optimiser step (0 = training.batch_size): steps = epochs x ceil(n / batch)

    def __post_init__(self):
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not self.lr_ratio > 0:
            raise ValueError(f"lr_ratio must be positive, got {self.lr_ratio!r}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 0:
            raise ValueError(f"batch_size must be 0 (training.batch_size) or a positive integer, got {self.batch_size!r}")


@dataclass(frozen=True)
class LoraParams(FineTuneParams):
    r: int = 8  # adapter rank
    alpha: int = 16  # scaling numerator (scale = alpha / r)
    dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.r < 1 or self.alpha < 1 or not 0 <= self.dropout <= 1:
            raise ValueError(f"LoRA needs r >= 1, alpha >= 1 and 0 <= dropout <= 1: {self}")


@dataclass(frozen=True)
class NeuronParams(FineTuneParams):
    strategy: str = "plastic"  # a neuron strategy (methods.neurons.STRATEGIES)
    k: float = 0.05  # neurons to update: a fraction of all tracked neurons when <= 1 (1 = all), else a count
    usage_score: str = "abs_sum"  # which usage statistic strategies rank by: |sum g|, sum |g| or sum g^2
    usage_positions: str = "all_real"  # usage summed over every real position, or the answer positions only

    def __post_init__(self):
        super().__post_init__()
        if self.strategy not in neurons.STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; known: {sorted(neurons.STRATEGIES)}")
        if not self.k > 0:
            raise ValueError(f"k must be positive, got {self.k!r}")
        if self.usage_score not in neurons.USAGE_SCORES:
            raise ValueError(f"usage_score must be one of {neurons.USAGE_SCORES}, got {self.usage_score!r}")
        if self.usage_positions not in neurons.USAGE_POSITIONS:
            raise ValueError(f"usage_positions must be one of {neurons.USAGE_POSITIONS}, "
                             f"got {self.usage_positions!r}")


@dataclass(frozen=True)
class ResuscitateParams(FineTuneParams):
    ratio: float = 0.5  # per layer, neurons whose mean coefficient is at or below this quantile are resuscitated
    q: float = 2.0  # ... to q times the layer's mean coefficient
    max_factor: float = 100.0  # the largest row scaling (a dead neuron would need an infinite one)

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.ratio <= 1 or not self.q > 0 or not self.max_factor >= 1:
            raise ValueError(f"resuscitation needs 0 <= ratio <= 1, q > 0 and max_factor >= 1: {self}")


MIX_KINDS = ("random", "generic", "code", "arithmetic")


@dataclass(frozen=True)
class RemixParams(FineTuneParams):
    mix: str = "generic"  # rows mixed into the update: random words, generic prose, code or arithmetic problems
    ratio: float = 1.0  # int(ratio x facts) rows (REMIX's rule); 0 = plain full fine-tuning
    mix_seed: int = 0
    source: str = "gensim_wiki"  # generic prose: gensim_wiki, gensim_news or file:<path>

    def __post_init__(self):
        super().__post_init__()
        if self.mix not in MIX_KINDS:
            raise ValueError(f"mix must be one of {MIX_KINDS}, got {self.mix!r}")
        if not self.ratio >= 0:
            raise ValueError(f"ratio must be >= 0, got {self.ratio!r}")


SHORT = {"epochs": "e", "lr_ratio": "lr", "k": "k", "batch_size": "bs"}


class FineTune(Method):
    """The one fine-tune; subclasses choose which parameters may change."""

    Params = FineTuneParams
    lead: tuple[str, ...] = ()  # fields always shown first in the variant label

    def variant(self, params, defaults=None) -> str:
        defaults = defaults if defaults is not None else self.Params()
        parts = [_fmt(getattr(params, f)) if f == "strategy" else f"{SHORT.get(f, f)}{_fmt(getattr(params, f))}"
                 for f in self.lead]
        for f in dataclasses.fields(params):
            value = getattr(params, f.name)
            if f.name not in self.lead and value != getattr(defaults, f.name):
                parts.append(value if f.name in ("usage_score", "usage_positions") else f"{SHORT.get(f.name, f.name)}{_fmt(value)}")
        return "_".join(parts) or "default"

    def arm(self, params) -> str:
        """The label figures use for this setting (a method name, or a neuron strategy)."""
        return self.name

    def plugins(self, model, request: UpdateRequest, params) -> tuple[list, dict[str, Any]]:
        return [], {}

    def apply(self, model, tokenizer, request: UpdateRequest, params) -> UpdateResult:
        return self.fine_tune(model, tokenizer, request, params)

    def fine_tune(self, model, tokenizer, request: UpdateRequest, params, first: tuple = ()) -> UpdateResult:
        """The fine-tune with this method's plugins, after ``first`` (plugins that must act before them)."""
        import torch

        from workflow_scripts.training.plugins import EpochCallback, ExtraRows
        from workflow_scripts.training.train import TrainConfig, train

        training = dict(request.training)
        cfg = TrainConfig(**{**training, "lr": training["lr"] * params.lr_ratio, "epochs": int(params.epochs),
                             "seed": request.seed, "batch_size": int(params.batch_size or training["batch_size"])})
        plugins, columns = self.plugins(model, request, params)
        plugins = [*first, *plugins]
        if request.checkpoint is not None:
            plugins.append(EpochCallback(request.checkpoint))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        rows = len(request.prompts) + sum(len(p.prompts) for p in plugins if isinstance(p, ExtraRows))  # + mixed-in rows
        start = time.perf_counter()
        history = train(model, tokenizer, request.prompts, request.targets, cfg, plugins)
        seconds = time.perf_counter() - start
        delta = {}
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in before and not torch.equal(p, before[n]):
                    delta[n] = p.detach() - before[n]
        stats = {"seconds": seconds, "epochs_run": len(history), "final_loss": history[-1]["loss"],
                 "lr": cfg.lr, "batch_size": cfg.batch_size,
                 "steps": len(history) * -(-rows // cfg.batch_size), "train_rows": rows, **delta_stats(delta)}
        return UpdateResult(model, delta, stats, {"arm": self.arm(params), "epochs": int(params.epochs),
                                                  "lr_ratio": float(params.lr_ratio), **columns})


class Full(FineTune):
    name = "full"
    title = "full fine-tuning"

    def plugins(self, model, request, params):
        from workflow_scripts.models.architectures import linear_modules

        total = sum(m.out_features for m in linear_modules(model))
        return [], {"k": total, "k_fraction": 1.0}


class Lora(FineTune):
    name = "lora"
    title = "LoRA adapters on every tracked linear module, merged back"
    reference = "https://arxiv.org/abs/2106.09685"
    Params = LoraParams

    def plugins(self, model, request, params):
        from workflow_scripts.models.architectures import linear_modules
        from workflow_scripts.training.plugins import LoraAdapters

        total = sum(m.out_features for m in linear_modules(model))
        return [LoraAdapters(params.r, params.alpha, params.dropout)], {"k": total, "k_fraction": 1.0}

    def untouched(self, model, request, params):
        from workflow_scripts.training.masks import tracked_parameter_names

        changed = {n for n in tracked_parameter_names(model) if n.endswith(".weight")}
        return {n: None for n, _ in model.named_parameters() if n not in changed}


class Neurons(FineTune):
    name = "neurons"
    title = "fine-tuning of k chosen neurons (a neuron strategy)"
    reference = "In Praise of Stubbornness (conflict-aware targeted updates)"
    Params = NeuronParams
    lead = ("strategy", "k")

    def arm(self, params) -> str:
        return params.strategy

    def needs(self, params) -> frozenset[str]:
        return frozenset(f"usage:{role}" for role in neurons.uses(params.strategy))

    def mask(self, model, request: UpdateRequest, params):
        """(neuron mask, parameter masks, k as a count, all tracked neurons)."""
        from workflow_scripts.models.architectures import linear_modules
        from workflow_scripts.training.masks import parameter_masks
        from workflow_scripts.training.usage import load_usage

        modules = linear_modules(model)
        total = sum(m.out_features for m in modules)
        k = neurons.resolve_k(params.k, total)
        usage = {}
        for role in ("old", "new", "history"):
            value = request.inputs.get(f"usage:{role}")
            usage[role] = load_usage(value, params.usage_score, params.usage_positions) if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__") else value
        inputs = neurons.StrategyInputs({m.name: m.out_features for m in modules}, **usage)
        chosen = neurons.neuron_mask(params.strategy, inputs, k, request.seed)
        return chosen, parameter_masks(model, chosen), k, total

    def plugins(self, model, request, params):
        """Trainable deltas for the chosen rows only (``RowDeltas``: gradients and optimiser state for
        them alone); with weight decay, the equivalent masks on the whole weights (``UpdateMask``)."""
        import torch

        from workflow_scripts.training.masks import tracked_parameter_names
        from workflow_scripts.training.plugins import OnlyParameters, RowDeltas, UpdateMask

        chosen, masks, k, total = self.mask(model, request, params)
        columns = {"strategy": params.strategy, "k": k, "k_fraction": k / total,
                   "oracle": params.strategy in neurons.ORACLES}
        if request.training.get("weight_decay", 0.0):
            return [OnlyParameters(tracked_parameter_names(model)), UpdateMask(masks)], columns
        rows = {name: torch.nonzero(torch.as_tensor(m, dtype=torch.bool)).flatten() for name, m in chosen.items()}
        return [RowDeltas(rows)], columns

    def untouched(self, model, request, params):
        import torch

        from workflow_scripts.training.masks import tracked_parameter_names

        _, masks, _, _ = self.mask(model, request, params)
        tracked = tracked_parameter_names(model)
        out = {}
        for n, p in model.named_parameters():
            if n not in tracked:
                out[n] = None
            elif n in masks:
                out[n] = ~torch.broadcast_to(masks[n], p.shape)
        return out


class Resuscitated(Full):
    """Full fine-tuning after "resuscitating" rarely used feed-forward neurons (Knowledge Entropy Decay,
    Kim et al. 2025): per layer, the neurons whose mean coefficient on a fixed text set is at or below
    the ``ratio`` quantile get their up-projection rows scaled so that their mean coefficient becomes
    ``q`` times the layer mean (``entropy.resuscitate``; llama-style models only). The start model's
    coefficients come from the ``entropy_checkpoint`` rule (input ``coefficients``), or are measured here
    on the default entropy texts when run outside the workflow."""

    name = "resuscitate"
    title = "full fine-tuning after resuscitating rarely used feed-forward neurons"
    reference = "https://arxiv.org/abs/2410.01380"
    Params = ResuscitateParams

    def needs(self, params) -> frozenset[str]:
        return frozenset({"coefficients:start"})

    def apply(self, model, tokenizer, request, params):
        from workflow_scripts.training.plugins import Resuscitate

        given = request.inputs.get("coefficients")
        if given is not None:
            from workflow_scripts.entropy.experiment import load_coefficients

            cbar = load_coefficients(given).cbar()
        else:  # outside the workflow: measure the start model on a few default entropy texts
            from workflow_scripts.entropy.coefficients import average_coefficients
            from workflow_scripts.entropy.experiment import entropy_texts

            cbar = average_coefficients(model, tokenizer, entropy_texts(n=8), max_length=64)
        plugin = Resuscitate(cbar, params.ratio, params.q, params.max_factor)
        result = self.fine_tune(model, tokenizer, request, params, first=(plugin,))
        result.stats.update({"resuscitated": float(plugin.report["selected"]), "clamped": float(plugin.report["clamped"])})
        result.columns["arm"] = f"resuscitate_p{_fmt(params.ratio)}_q{_fmt(params.q)}"
        return result


class Remix(Full):
    """Full fine-tuning with other rows mixed into the update's facts (REMIX, Continual Memorization of
    Factoids): ``int(ratio x facts)`` rows of random words, generic prose, code or arithmetic problems
    (``remix.textsources``), encoded like facts and shuffled into the same seeded random batches. The
    facts alone are what the evaluator scores; the loss is each row's mean answer-token loss, rows
    weighted equally (``training.loss_weighting``), and padding is never a target (the reference
    code trains "predict EOS" on padded labels, which confounds mixing with extra EOS training)."""

    name = "remix"
    title = "full fine-tuning with random-word, prose, code or arithmetic rows mixed in (REMIX)"
    reference = "https://arxiv.org/abs/2411.07175"
    Params = RemixParams

    def apply(self, model, tokenizer, request, params):
        from workflow_scripts.remix.mixing import mixing_count
        from workflow_scripts.remix.textsources import source_rows
        from workflow_scripts.training.plugins import ExtraRows

        n = mixing_count(len(request.prompts), float(params.ratio))
        first = ()
        if n:  # random words come from the model's own vocabulary (the prompts' words for tiny test models)
            rows = source_rows(params.mix, n, f"remix|{params.mix}|{params.mix_seed}|{request.seed}", tokenizer=tokenizer,
                               source=params.source, fallback_texts=list(request.prompts))
            first = (ExtraRows(tokenizer, rows.prompt.tolist(), rows.target.tolist()),)
        result = self.fine_tune(model, tokenizer, request, params, first=first)
        result.columns.update({"arm": f"remix_{params.mix}_r{_fmt(params.ratio)}", "mix": params.mix, "mix_rows": n})
        return result


FULL = register(Full())
LORA = register(Lora())
NEURONS = register(Neurons())
RESUSCITATE = register(Resuscitated())
REMIX = register(Remix())
