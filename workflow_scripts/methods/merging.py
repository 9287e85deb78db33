"""Collaborative editing as one registered method, ``merge`` (``workflow_scripts.merging``).

The update's facts are dealt to ``clients`` clients (a seeded shuffle); every client edits its own copy
of the start model with frozen MEMIT and the server merges the edits with ``rule``:

- ``global``: one MEMIT solve on the union (the upper bound; what CollabEdit must equal);
- ``sa``: the simple average of the clients' deltas;
- ``ta``: their sum times ``ta_scale`` (task arithmetic);
- ``ties``: TIES-merging (keep the largest ``ties_keep`` share of each delta's entries, elect signs,
  average the agreeing clients, times ``ties_scale``);
- ``collabedit``: CollabEdit's merge from each client's delta and key Gram matrix (equals ``global``).

Every rule reads the same per-fact statistics (keys at each edited layer and the residual z* − h_L on
the start model): the ``merging_statistics`` rule computes them once per scenario, fold and setting
(``request.inputs["statistics"]``); without that input the method measures them itself. All MEMIT
parameters (layers, λ, targets, covariance) are those of ``methods.memit``, in frozen mode.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

from workflow_scripts.methods.base import UpdateRequest, UpdateResult, delta_stats, register
from workflow_scripts.methods.editing import Memit, MemitParams, site_delta

RULE_NAMES = ("global", "sa", "ta", "ties", "collabedit")
# MEMIT fields the per-fact statistics depend on (the others act only when merging)
STATISTICS_FIELDS = ("steps", "lr", "weight_decay", "kl_factor", "early_stop", "templates", "template_seed",
                     "cov_corpus", "cov_tokens", "cov_max_len", "layers", "clamp", "cov_weight", "s_target")


@dataclass(frozen=True)
class MergeParams(MemitParams):
    mode: str = "frozen"  # merges need every key and residual from the start model
    rule: str = "collabedit"  # global, sa, ta, ties or collabedit
    clients: int = 4
    split_seed: int = 0  # which facts each client gets
    ta_scale: float = 1.0
    ties_keep: float = 0.2
    ties_scale: float = 0.4

    def __post_init__(self):
        super().__post_init__()
        if self.mode != "frozen":
            raise ValueError("merge: mode must be 'frozen' (clients' keys and residuals from the start model)")
        if self.rule not in RULE_NAMES:
            raise ValueError(f"merge: rule must be one of {RULE_NAMES}, got {self.rule!r}")
        if int(self.clients) != self.clients or self.clients < 1 or int(self.split_seed) != self.split_seed:
            raise ValueError(f"merge: clients must be a positive integer and split_seed an integer: {self}")
        if not 0 < self.ties_keep <= 1 or not self.ties_scale > 0 or not self.ta_scale > 0:
            raise ValueError(f"merge: ties_keep must be in (0, 1], ties_scale and ta_scale positive: {self}")


def statistics_label(params) -> str:
    """A short stable name of the settings the per-fact statistics depend on."""
    values = {k: getattr(params, k) for k in STATISTICS_FIELDS}
    return hashlib.blake2b(json.dumps(values, sort_keys=True).encode(), digest_size=5).hexdigest()


def statistics_for(model, tokenizer, requests, params, covs, templates):
    """Measure the per-fact statistics (``merging.clients.edit_statistics``) with λ per layer."""
    from workflow_scripts.editing.covariance import weights_fingerprint
    from workflow_scripts.editing.hparams import parse_layers
    from workflow_scripts.editing.memit import calibrate_lambda, default_calibration_requests
    from workflow_scripts.merging.clients import edit_statistics

    layers = parse_layers(params.layers, model)
    if params.cov_weight == "auto":
        calib = calibrate_lambda(model, tokenizer, layers, covs, default_calibration_requests(), templates,
                                 float(params.s_target))
        lambdas = {layer: calib[layer]["lambda"] for layer in layers}
    else:
        lambdas = {layer: float(params.cov_weight) for layer in layers}
    return edit_statistics(model, tokenizer, requests, layers, params.target_settings(params.clamp), templates, lambdas,
                           weights_fingerprint(model, max(layers)))


class Merge(Memit):
    name = "merge"
    title = "Collaborative editing: clients' frozen-MEMIT edits merged (GLOBAL, SA, TA, TIES, CollabEdit)"
    reference = "https://arxiv.org/abs/2410.09508"
    Params = MergeParams

    def arm(self, params) -> str:
        return f"merge_{params.rule}"

    def needs(self, params) -> frozenset[str]:
        return super().needs(params) | {f"statistics:{statistics_label(params)}"}

    def apply(self, model, tokenizer, request: UpdateRequest, params) -> UpdateResult:
        from workflow_scripts.editing.requests import requests_from_facts
        from workflow_scripts.editing.site import edit_site
        from workflow_scripts.merging.clients import apply_deltas, load_statistics, merged_deltas, split_clients

        start = time.perf_counter()
        layers = self.edit_layers(model, params)
        covs = self.covariances(model, tokenizer, request, params, layers)
        case_ids = [int(c) for c in request.facts.case_id]
        given = request.inputs.get("statistics")
        if given is not None:
            stats = load_statistics(given, model).subset(case_ids)
            if stats.layers != tuple(layers):
                raise ValueError(f"{given}: statistics of layers {stats.layers}, the method edits {tuple(layers)}")
        else:
            requests = requests_from_facts(request.facts, request.target)
            stats = statistics_for(model, tokenizer, requests, params, covs, self.templates(model, tokenizer, request, params))
        measured = time.perf_counter() - start
        clients = split_clients(case_ids, int(params.clients), int(params.split_seed))
        priors = {layer: stats.lambdas[layer] * covs[layer] for layer in layers}
        settings = {"ta_scale": float(params.ta_scale), "ties_keep": float(params.ties_keep),
                    "ties_scale": float(params.ties_scale)}
        deltas = merged_deltas(stats, clients, params.rule, priors, settings, params.residual_split)
        extra = {}
        if params.rule == "collabedit":  # the equality it promises, on this very run's statistics
            reference = merged_deltas(stats, clients, "global", priors, settings, params.residual_split)
            extra["max_rel_diff_vs_global"] = max(float((deltas[l] - reference[l]).abs().max() / reference[l].abs().max())
                                                  for l in layers)
        sites = [edit_site(model, l) for l in layers]
        before = {site.weight_name: site.weight.detach().clone() for site in sites}
        apply_deltas(model, deltas)
        delta = site_delta(sites, before)
        seconds = time.perf_counter() - start
        stats_out = {"seconds": seconds, "epochs_run": 1, "edits": len(case_ids), "clients": len(clients),
                     "statistics_seconds": measured, "merge_seconds": seconds - measured,
                     "statistics_cached": float(given is not None),
                     "residual_norm_mean": float(stats.residual.norm(dim=0).mean()),
                     "final_loss": float(stats.stats.get("z_loss_mean", float("nan"))),
                     "clamp_hits": int(stats.stats.get("clamp_hits", 0)),
                     "lambda": sum(stats.lambdas.values()) / len(stats.lambdas), **delta_stats(delta), **extra}
        columns = {**self.columns(model, params, sites), "rule": params.rule, "clients": int(params.clients),
                   "split_seed": int(params.split_seed)}
        return UpdateResult(model, delta, stats_out, columns)


def statistics_job(model_dir: str, facts_path: str, slices_path: str, scenario_name: str, params: dict,
                   covariance_path: str | None, dest: str) -> None:
    """The ``merging_statistics`` rule: the per-fact statistics of a scenario's learned slice on its
    start model, for the merge runs with these MEMIT settings."""
    import logging

    import pandas as pd

    from workflow_scripts.editing.requests import requests_from_facts
    from workflow_scripts.facts.schema import flat_facts, read_facts
    from workflow_scripts.merging.clients import save_statistics
    from workflow_scripts.models.loading import load_model
    from workflow_scripts.scenarios.design import scenario

    s = scenario(scenario_name)
    p = MERGE.make_params(params, "merging_statistics")
    slices = pd.read_parquet(slices_path)
    flat = flat_facts(read_facts(facts_path))
    learn = flat[flat.case_id.isin(slices.case_id[slices.slice == s.learn])].reset_index(drop=True)
    if learn.empty:
        raise ValueError(f"scenario {scenario_name}: slice {s.learn} is empty (set updates.sizes.{s.learn})")
    model, tok = load_model(model_dir, dtype="float32")
    request = UpdateRequest(facts=learn, target=s.target, training={},
                            inputs={"covariance": covariance_path} if covariance_path else {})
    layers = MERGE.edit_layers(model, p)
    covs = MERGE.covariances(model, tok, request, p, layers)
    start = time.perf_counter()
    stats = statistics_for(model, tok, requests_from_facts(learn, s.target), p, covs, MERGE.templates(model, tok, request, p))
    stats.stats["seconds"] = time.perf_counter() - start
    save_statistics(stats, dest, scenario=scenario_name, params={k: v for k, v in asdict(p).items()})
    logging.getLogger(__name__).info("statistics of %d facts at layers %s in %.1f s", len(learn), stats.layers,
                                     stats.stats["seconds"])


MERGE = register(Merge())
