"""Knowledge editors as registered methods: ``rome`` and ``memit`` (``workflow_scripts.editing``).

Both write every fact of the update (``request.facts``; the learned object is ``request.target``)
into the MLP output projections of a few blocks, without training:

- ``rome``: one rank-one update per fact at one layer, applied one after another (cumulative). The
  v* of all facts are optimised in one batch on the start model (``batch_targets``; a deviation from
  the reference, which optimises each on the model the previous edits left); ``key: homogeneous`` is
  r-ROME (arm ``rome_h``).
- ``memit``: all facts in one batched edit over a window of layers; ``mode: sequential`` is the
  reference algorithm (arm ``memit``), ``mode: frozen`` measures every key and residual on the unedited
  model (CollabEdit's variant, the basis of exact edit merging; arm ``memit_frozen``).

Optional inputs (``request.inputs``): ``covariance`` (a safetensors file from
``editing.covariance.save_covariance`` for this start model; its fingerprints are checked; or {layer: C}),
``covariance_cache`` (a directory: covariances cached by weight fingerprint, computed when missing),
``templates`` (a JSON file from ``editing.templates.save_templates``, or a list; the method's name
picks the list). Without them the covariance is computed from ``cov_corpus`` (``cov_tokens`` tokens)
and the templates are generated from the start model (``templates``, ``template_seed``).

Defaults: the spec's (editing-merging.md §1.5, §9.6) except for speed on two CPU cores: one 5-token
context template besides the bare prompt (reference: 5 of 10 tokens for MEMIT, 20 for ROME), 8 steps
at lr 1.0 (reference: 20 at 0.5), 20k covariance tokens (reference here: 100k). On SmolLM2-135M this
gave exact efficacy 0.8-0.9 on 16 counterfactual starter facts at about 1.5 s per edit on one core.
torch is imported only inside the methods.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Union

from workflow_scripts.methods.base import Method, UpdateRequest, UpdateResult, delta_stats, register


@dataclass(frozen=True)
class EditParams:
    steps: int = 8  # z*/v* optimisation steps (at most steps - 1 Adam updates)
    lr: float = 1.0  # Adam learning rate of δ
    weight_decay: float = 0.5  # times ‖δ‖ / ‖h‖²
    kl_factor: float = 0.0625  # KL to the start model on "{subject} is a"
    early_stop: float = 0.05  # an edit stops once its loss is below this
    templates: str = "5x1"  # context templates besides the bare prompt: "LENxN[+LENxN]" ("" = none)
    template_seed: int = 0
    batch: int = 32  # edits optimised together
    cov_corpus: str = "gensim_wiki"  # gensim_wiki, gensim_news, model_samples or file:<path>
    cov_tokens: int = 20000
    cov_max_len: int = 256

    def __post_init__(self):
        from workflow_scripts.editing.hparams import parse_counts

        for name in ("steps", "batch", "cov_tokens", "cov_max_len"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0 or self.weight_decay < 0 or self.kl_factor < 0 or self.early_stop < 0:
            raise ValueError(f"lr must be positive and weight_decay, kl_factor, early_stop >= 0: {self}")
        parse_counts(self.templates)

    def target_settings(self, clamp: float):
        from workflow_scripts.editing.hparams import TargetSettings

        return TargetSettings(steps=int(self.steps), lr=float(self.lr), weight_decay=float(self.weight_decay),
                              kl_factor=float(self.kl_factor), clamp=float(clamp),
                              early_stop=float(self.early_stop), batch=int(self.batch))


@dataclass(frozen=True)
class RomeParams(EditParams):
    layer: int = -1  # -1: the family's default scaled to the model's depth (SmolLM2: 6)
    clamp: float = 4.0  # ‖δ‖ <= clamp · ‖MLP output‖
    key: str = "original"  # or "homogeneous" (r-ROME)
    batch_targets: bool = True  # all v* in one batch on the start model; False: each on the current model

    def __post_init__(self):
        super().__post_init__()
        if self.key not in ("original", "homogeneous"):
            raise ValueError(f"key must be 'original' or 'homogeneous', got {self.key!r}")
        if not self.clamp > 0 or int(self.layer) != self.layer or self.layer < -1:
            raise ValueError(f"clamp must be positive and layer -1 or a block index: {self}")


@dataclass(frozen=True)
class MemitParams(EditParams):
    layers: str = "default"  # "default" (SmolLM2: 4-8), "4-8" or "4,5,6"
    clamp: float = 0.75  # ‖δ‖ <= clamp · ‖residual stream‖
    mode: str = "sequential"  # or "frozen"
    cov_weight: Union[float, str] = "auto"  # λ of (λC + KKᵀ), or "auto": per layer, median kᵀC⁻¹k / s_target
    s_target: float = 1.0
    residual_split: str = "remaining"  # frozen mode: "remaining" (CollabEdit) or "equal"

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in ("sequential", "frozen"):
            raise ValueError(f"mode must be 'sequential' or 'frozen', got {self.mode!r}")
        if self.residual_split not in ("remaining", "equal"):
            raise ValueError(f"residual_split must be 'remaining' or 'equal', got {self.residual_split!r}")
        if self.mode == "sequential" and self.residual_split != "remaining":
            raise ValueError("residual_split 'equal' applies to mode 'frozen' only")
        if not (self.cov_weight == "auto" or (not isinstance(self.cov_weight, (str, bool)) and float(self.cov_weight) > 0)):
            raise ValueError(f"cov_weight must be a positive number or 'auto', got {self.cov_weight!r}")
        if not self.clamp > 0 or not self.s_target > 0:
            raise ValueError(f"clamp and s_target must be positive: {self}")


def site_delta(sites, before: dict) -> dict:
    """weight name -> after − before, for the edit sites whose weights changed."""
    import torch

    delta = {}
    with torch.no_grad():
        for site in sites:
            d = site.weight.detach() - before[site.weight_name]
            if bool((d != 0).any()):
                delta[site.weight_name] = d
    return delta


def covariance_label(params) -> str:
    """The name of a covariance setting (corpus, tokens, window), as used in its file name."""
    return f"{params.cov_corpus}_t{int(params.cov_tokens)}_w{int(params.cov_max_len)}"


class Editor(Method):
    """Shared plumbing of the editors: requests, templates, covariances, delta and statistics."""

    def edit_layers(self, model, params) -> tuple[int, ...]:
        raise NotImplementedError

    def arm(self, params) -> str:
        return self.name

    def needs(self, params) -> frozenset[str]:
        """The start model's covariance from the ``editing_covariance`` rule (named corpora only; a
        ``file:`` corpus is read by the job itself)."""
        if ":" in params.cov_corpus:
            return frozenset()
        return frozenset({f"covariance:{covariance_label(params)}"})

    def untouched(self, model, request: UpdateRequest, params):
        from workflow_scripts.editing.site import edit_site

        edited = {edit_site(model, layer).weight_name for layer in self.edit_layers(model, params)}
        return {n: None for n, _ in model.named_parameters() if n not in edited}

    def templates(self, model, tokenizer, request: UpdateRequest, params) -> list[str]:
        from workflow_scripts.editing.hparams import parse_counts
        from workflow_scripts.editing.templates import generate_templates, load_templates

        given = request.inputs.get("templates")
        if given is not None:
            return load_templates(given, key=self.name)
        return generate_templates(model, tokenizer, parse_counts(params.templates), seed=int(params.template_seed))

    def covariances(self, model, tokenizer, request: UpdateRequest, params, layers) -> dict:
        from workflow_scripts.editing.covariance import covariance, load_covariance

        given = request.inputs.get("covariance")
        if isinstance(given, dict):  # {layer: C}, e.g. the start model's, kept over sequential edits
            return {int(layer): given[int(layer)] for layer in layers}
        if given is not None:  # (a file of the editing_covariance rule; its weight fingerprints are checked)
            return load_covariance(given, model, layers)[0]
        return covariance(model, tokenizer, layers, corpus=params.cov_corpus, tokens=int(params.cov_tokens),
                          max_len=int(params.cov_max_len), cache_dir=request.inputs.get("covariance_cache"))

    def edit(self, model, tokenizer, requests, params, layers, covs, templates) -> dict:
        """Apply the edit in place; return its numeric statistics."""
        raise NotImplementedError

    def apply(self, model, tokenizer, request: UpdateRequest, params) -> UpdateResult:
        from workflow_scripts.editing.requests import requests_from_facts
        from workflow_scripts.editing.site import edit_site

        start = time.perf_counter()
        requests = requests_from_facts(request.facts, request.target)
        layers = self.edit_layers(model, params)
        sites = [edit_site(model, layer) for layer in layers]
        templates = self.templates(model, tokenizer, request, params)
        template_seconds = time.perf_counter() - start
        covs = self.covariances(model, tokenizer, request, params, layers)
        cov_seconds = time.perf_counter() - start - template_seconds
        before = {s.weight_name: s.weight.detach().clone() for s in sites}
        stats = self.edit(model, tokenizer, requests, params, layers, covs, templates)
        delta = site_delta(sites, before)
        seconds = time.perf_counter() - start
        stats = {"seconds": seconds, "epochs_run": 1, "edits": len(requests), "templates": len(templates),
                 "template_seconds": template_seconds, "cov_seconds": cov_seconds,
                 "edit_seconds": seconds - template_seconds - cov_seconds, **delta_stats(delta), **stats}
        return UpdateResult(model, delta, stats, self.columns(model, params, sites))

    def columns(self, model, params, sites) -> dict:
        """The row columns every editor gives: arm, no epochs or rate, k = the edited output units."""
        from workflow_scripts.models.architectures import count_neurons

        k = sum(s.out_width for s in sites)
        return {"arm": self.arm(params), "epochs": 1, "lr_ratio": 1.0, "k": k, "k_fraction": k / count_neurons(model),
                "edit_layers": ",".join(str(s.layer) for s in sites)}


class Rome(Editor):
    name = "rome"
    title = "ROME: one rank-one MLP edit per fact, applied in sequence"
    reference = "https://arxiv.org/abs/2202.05262"
    Params = RomeParams

    def edit_layers(self, model, params) -> tuple[int, ...]:
        from workflow_scripts.editing.hparams import default_rome_layer, parse_layers

        return (default_rome_layer(model),) if params.layer == -1 else parse_layers(int(params.layer), model)

    def arm(self, params) -> str:
        return "rome" if params.key == "original" else "rome_h"

    def edit(self, model, tokenizer, requests, params, layers, covs, templates):
        from workflow_scripts.editing.hparams import RomeHParams
        from workflow_scripts.editing.rome import apply_rome

        (layer,) = layers
        hp = RomeHParams(layer=layer, targets=params.target_settings(params.clamp), key=params.key,
                         batch_targets=bool(params.batch_targets))
        result = apply_rome(model, tokenizer, requests, hp, covs[layer], templates)
        s = result.stats
        return {"final_loss": s["z_loss_mean"], "clamp_hits": s["clamp_hits"], "z_updates_mean": s["z_updates_mean"],
                "map_error_max": s["map_error_max"], "residual_norm_mean": s["residual_norm_mean"],
                "delta_norm_mean": s["delta_norm_mean"]}


class Memit(Editor):
    name = "memit"
    title = "MEMIT: all facts in one edit over a window of MLP layers"
    reference = "https://arxiv.org/abs/2210.07229"
    Params = MemitParams

    def edit_layers(self, model, params) -> tuple[int, ...]:
        from workflow_scripts.editing.hparams import parse_layers

        return parse_layers(params.layers, model)

    def arm(self, params) -> str:
        return "memit" if params.mode == "sequential" else "memit_frozen"

    def edit(self, model, tokenizer, requests, params, layers, covs, templates):
        from workflow_scripts.editing.hparams import MemitHParams
        from workflow_scripts.editing.memit import apply_memit

        hp = MemitHParams(layers=layers, targets=params.target_settings(params.clamp), lambda_=params.cov_weight,
                          s_target=float(params.s_target), mode=params.mode, residual_split=params.residual_split)
        result = apply_memit(model, tokenizer, requests, hp, covs, templates)
        s = result.stats
        out = {"final_loss": s["z_loss_mean"], "clamp_hits": s["clamp_hits"], "z_updates_mean": s["z_updates_mean"],
               "lambda": s["lambda_mean"], "s_median": s["s_median"], "n_same_subject": s["n_same_subject"],
               "calibration_seconds": s["calibration_seconds"], "target_seconds": s["target_seconds"]}
        for layer, v in s["per_layer"].items():
            out[f"lambda_l{layer}"] = v["lambda"]
            out[f"s_median_l{layer}"] = v["s_median"]
            out[f"write_error_l{layer}"] = v["write_error_median"]
        return out


ROME = register(Rome())
MEMIT = register(Memit())
