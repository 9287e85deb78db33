"""The run table: config -> scenario x method x variant params x fold, each a typed record.

Rules use the wildcards (scenario, method, variant, fold) only as keys into this table and take the
typed params from it; nothing is parsed back from a path. ``updates.scenarios`` gives, per scenario,
the methods to run and a grid of their parameters (lists expand as a product; a list of grids
concatenates); ``methods.<name>`` holds each method's defaults for every scenario, e.g.::

    methods: {lora: {r: 8}}
    updates:
      scenarios:
        nondissonant_update:
          methods:
            full: {}
            neurons: [{strategy: [stubborn, plastic], k: [0.05, 0.2]}, {strategy: plastic, k: 0.05, lr_ratio: 3}]
            lora: null   # not run (a file given with --configfile merges into config.yaml; null removes)

Variant labels name what differs from the scenario's defaults for the method ("default",
"plastic_k0.05_lr3", "e5"); they are unique within a scenario and never parsed back.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from typing import Any

from workflow_scripts.methods.base import method
from workflow_scripts.scenarios.design import TUNING_SCENARIO, scenario, slice_size


@dataclass(frozen=True)
class Run:
    scenario: str
    method: str
    variant: str
    fold: int
    seed: int
    params: dict  # the method's typed params, as a plain dict (canonical: field order)
    curves: bool  # per-epoch curves: acquisition after every epoch
    tuned: bool = False  # lr_ratio is relative to the method's rate chosen in the lr_tuning scenario
    curve_every: int = 1  # curves: retention after every curve_every-th epoch (and the first learned one)
    metrics: tuple[str, ...] = ("exact_match", "counterfact", "locality")  # what the evaluator scores
    entropy_arm: bool = False  # entropy.arms: the job also measures its result's knowledge entropy

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.scenario, self.method, self.variant, self.fold)

    @property
    def path(self) -> str:
        return f"runs/{self.scenario}/{self.method}/{self.variant}/fold{self.fold}"

    def job_params(self) -> dict:
        """What the ``update`` rule passes to its job (everything the run depends on but the shared
        training settings and the input files)."""
        return {"scenario": self.scenario, "method": self.method, "variant": self.variant, "fold": self.fold,
                "seed": self.seed, "params": dict(self.params), "curves": self.curves, "tuned": self.tuned,
                "curve_every": self.curve_every, "metrics": list(self.metrics)}


def grid_points(grid) -> list[dict]:
    """A grid (mapping; list values expand as a product) or a list of grids -> parameter dicts.
    None (``null`` in YAML) means the method is not run."""
    if grid is None:
        return []
    if isinstance(grid, list):
        return [point for g in grid for point in grid_points(g)]
    keys = list(grid)
    values = [v if isinstance(v, list) else [v] for v in grid.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def build_runs(config: dict) -> dict[tuple, Run]:
    """Every configured run, keyed by (scenario, method, variant, fold), in config order."""
    updates = config["updates"]
    defaults = config.get("methods", {})
    tune = bool(updates.get("tune_lr", False))
    metrics = tuple(updates.get("metrics", ("exact_match", "counterfact", "locality")))
    arms = bool(config.get("entropy", {}).get("arms", False))
    if "exact_match" not in metrics:
        raise ValueError(f"updates.metrics {list(metrics)} must include exact_match (every row's headline)")
    runs: dict[tuple, Run] = {}
    for name, block in updates.get("scenarios", {}).items():
        s = scenario(name)  # a clear error for an unknown scenario
        if block.get("methods") and slice_size(updates["sizes"], s.learn) == 0:
            raise ValueError(f"updates.scenarios.{name} learns slice {s.learn}, which is empty: set "
                             f"updates.sizes.{s.learn} (> 0)")
        folds = block.get("folds") or updates["folds"]
        if not set(folds) <= set(updates["folds"]):
            raise ValueError(f"updates.scenarios.{name}.folds {folds} must be among updates.folds {updates['folds']}")
        for method_name, grid in (block.get("methods") or {}).items():
            m = method(method_name)
            where = f"updates.scenarios.{name}.methods.{method_name}"
            values = {**defaults.get(method_name, {})}
            if block.get("epochs") is not None and "epochs" in {f.name for f in dataclasses.fields(m.Params)}:
                values["epochs"] = block["epochs"]
            base = m.make_params(values, where)  # the scenario's defaults: variant labels are relative to them
            for point in grid_points(grid):
                params = m.make_params({**values, **point}, where)
                variant = m.variant(params, base)
                for fold in folds:
                    run = Run(name, method_name, variant, int(fold), int(config["training"]["seed"]) + int(fold),
                              dataclasses.asdict(params), bool(block.get("curves", False)),
                              tune and not s.tuning and "lr_ratio" in params_fields(m),
                              int(updates.get("curve_every", 1)) if block.get("curves", False) else 1,
                              metrics, arms)
                    previous = runs.get(run.key)
                    if previous is not None and previous.params != run.params:
                        raise ValueError(f"{where}: two settings share the label {variant!r}: "
                                         f"{previous.params} and {run.params}")
                    runs[run.key] = run
    if tune:
        tuned_methods = {r.method for r in runs.values() if r.scenario == TUNING_SCENARIO}
        untuned = sorted({r.method for r in runs.values() if r.tuned} - tuned_methods)
        if untuned:
            raise ValueError(f"updates.tune_lr is on, but updates.scenarios.{TUNING_SCENARIO} runs no "
                             f"{', '.join(untuned)}: add {'it' if len(untuned) == 1 else 'them'} there with an lr_ratio grid")
    return runs


def check_entropy_arms(runs: dict[tuple, Run], checkpoints) -> None:
    """With ``entropy.arms`` every run's start checkpoint must be measured (``entropy.checkpoints``): its
    coefficients are the reference of the run's paired entropy difference. A ValueError otherwise."""
    listed = set(checkpoints or ())
    for run in runs.values():
        tag = start_tag(run.scenario, run.fold)
        if run.entropy_arm and tag not in listed:
            raise ValueError(f"entropy.arms is on, but scenario {run.scenario} (fold {run.fold}) starts from checkpoint "
                             f"{tag!r}, which entropy.checkpoints {sorted(listed)} does not list: add {tag!r} to "
                             f"entropy.checkpoints or set entropy.arms: false")


def params_fields(m) -> set[str]:
    return {f.name for f in dataclasses.fields(m.Params)}


def start_path(scenario_name: str, fold: int) -> str:
    """The scenario's start-model scores on one fold (shared by every run of that scenario and fold)."""
    return f"runs/{scenario_name}/start_fold{fold}.json"


def start_inputs(scenario_name: str, fold: int) -> dict[str, str]:
    """What the start scores depend on: the scenario's start checkpoint, the facts, the fold's slices and
    the known-before table (paths relative to the results folder)."""
    s = scenario(scenario_name)
    stage = f"stages/fold{fold}"
    models = {"base": "model", "A": f"{stage}/model_A", "AB": f"{stage}/model_AB"}
    known = {"base": "probe/facts.parquet", "A": f"{stage}/known_A.parquet", "AB": f"{stage}/known_AB.parquet"}
    return {"model": models[s.start], "facts": "facts/facts.parquet", "slices": f"{stage}/slices.parquet",
            "known": known[s.known]}


def start_tag(scenario_name: str, fold: int) -> str:
    """Which checkpoint a scenario starts from on a fold: ``base``, ``fold0_A``, ``fold0_AB``..."""
    start = scenario(scenario_name).start
    return "base" if start == "base" else f"fold{fold}_{start}"


def covariance_path(tag: str, label: str) -> str:
    return f"editing/covariance/{tag}/{label}.safetensors"


def covariance_need(run: Run) -> tuple[str, str] | None:
    """(start tag, covariance label) when the run's method needs its start model's covariance."""
    m = method(run.method)
    for need in m.needs(m.Params(**run.params)):
        kind, _, label = need.partition(":")
        if kind == "covariance":
            return start_tag(run.scenario, run.fold), label
    return None


SEQUENTIAL_SCENARIO = "nondissonant_update"  # sequential editing starts where this scenario starts (checkpoint A)


def sequential_runs(config: dict) -> dict[str, Run]:
    """The sequential-editing experiment's runs (``editing.sequential``), one per editor, with the
    editor's default params: method -> Run (its start and covariance are those of a
    ``nondissonant_update`` run on the same fold)."""
    spec = config.get("editing", {}).get("sequential", {})
    out = {}
    if spec.get("methods") and int(spec.get("fold", 0)) not in config["updates"]["folds"]:
        raise ValueError(f"editing.sequential.fold {spec.get('fold', 0)} must be among updates.folds {config['updates']['folds']}")
    for name in spec.get("methods", []):
        m = method(name)
        params = m.make_params(config.get("methods", {}).get(name, {}), f"editing.sequential ({name})")
        out[name] = Run(SEQUENTIAL_SCENARIO, name, "sequential", int(spec.get("fold", 0)),
                        int(config["training"]["seed"]), dataclasses.asdict(params), False)
    return out


def sequential_inputs(run: Run) -> dict[str, str]:
    """Start checkpoint, facts, slices, known-before table and, for editors that need one, the covariance."""
    inputs = start_inputs(run.scenario, run.fold)
    need = covariance_need(run)
    if need is not None:
        inputs["covariance"] = covariance_path(*need)
    return inputs


def covariance_jobs(runs) -> dict[tuple[str, str], dict]:
    """(start tag, covariance label) -> what the ``editing_covariance`` job computes: the start
    checkpoint, and the runs (an iterable of :class:`Run`) whose edited layers it covers (their union)."""
    jobs: dict[tuple[str, str], dict] = {}
    for run in runs:
        need = covariance_need(run)
        if need is None:
            continue
        job = jobs.setdefault(need, {"model": start_inputs(run.scenario, run.fold)["model"], "runs": []})
        entry = {"method": run.method, "params": dict(run.params)}
        if entry not in job["runs"]:
            job["runs"].append(entry)
    return jobs


def statistics_path(scenario_name: str, fold: int, label: str) -> str:
    return f"merging/statistics/{scenario_name}/fold{fold}/{label}.safetensors"


def statistics_jobs(runs) -> dict[tuple[str, int, str], dict]:
    """(scenario, fold, label) -> what the ``merging_statistics`` job measures: the scenario's start
    checkpoint and the settings of the merge runs that read it (one setting per label), and the
    covariance those runs use."""
    jobs: dict[tuple[str, int, str], dict] = {}
    for run in runs:
        m = method(run.method)
        needs = m.needs(m.Params(**run.params))
        for need in needs:
            kind, _, label = need.partition(":")
            if kind != "statistics":
                continue
            inputs = start_inputs(run.scenario, run.fold)
            cov = covariance_need(run)
            jobs.setdefault((run.scenario, run.fold, label), {
                "model": inputs["model"], "facts": inputs["facts"], "slices": inputs["slices"],
                "method": run.method, "params": dict(run.params),
                "covariance": covariance_path(*cov) if cov is not None else None})
    return jobs


ROUNDS_SCENARIO = "collaborative_edit"  # multi-round editing deals out this scenario's facts, from its start


def _merge_job(config: dict, rule: str, fold: int, variant: str) -> tuple[Run, dict[str, str]]:
    """A collaborative-editing experiment's run record (``methods.merge`` with ``rule``) and its inputs:
    start model, facts, slices, known-before table, covariance and the cached per-fact statistics."""
    m = method("merge")
    params = m.make_params({**config.get("methods", {}).get("merge", {}), "rule": rule}, "merging")
    run = Run(ROUNDS_SCENARIO, "merge", variant, fold, int(config["training"]["seed"]), dataclasses.asdict(params), False)
    inputs = {**start_inputs(ROUNDS_SCENARIO, fold)}
    for need in m.needs(params):
        kind, _, label = need.partition(":")
        if kind == "covariance":
            inputs["covariance"] = covariance_path(start_tag(ROUNDS_SCENARIO, fold), label)
        elif kind == "statistics":
            inputs["statistics"] = statistics_path(ROUNDS_SCENARIO, fold, label)
    return run, inputs


def _merging_fold(config: dict, spec: dict, where: str) -> int:
    fold = int(spec.get("fold", 0))
    if fold not in config["updates"]["folds"]:
        raise ValueError(f"merging.{where}.fold {fold} must be among updates.folds {config['updates']['folds']}")
    return fold


def rounds_jobs(config: dict) -> dict[str, dict]:
    """The multi-round experiment's trajectories (``merging.rounds``): name ("collabedit_a1") -> the
    merge params (``methods.merge`` with the trajectory's rule), rule, α and input paths (start model,
    facts, slices, known-before table, covariance, and the per-fact statistics its first round reuses)."""
    spec = config.get("merging", {}).get("rounds", {})
    if not spec.get("rules") or not spec.get("alpha"):
        return {}
    fold = _merging_fold(config, spec, "rounds")
    need = int(spec["rounds"]) * int(spec["clients"]) * int(spec["per_client"])
    have = slice_size(config["updates"]["sizes"], scenario(ROUNDS_SCENARIO).learn)
    if need > have:
        raise ValueError(f"merging.rounds needs {need} facts ({spec['rounds']} rounds x {spec['clients']} clients x "
                         f"{spec['per_client']}); updates.sizes.E is {have}")
    jobs = {}
    for rule in spec["rules"]:
        run, inputs = _merge_job(config, rule, fold, f"rounds_{rule}")
        for alpha in spec["alpha"]:
            label = "lambda" if alpha == "lambda" else format(float(alpha), "g")  # as merging.rounds.alpha_label
            jobs[f"{rule}_a{label}"] = {"rule": rule, "alpha": alpha if alpha == "lambda" else float(alpha),
                                        "params": run.params, "inputs": inputs, "run": run}
    return jobs


def challenges_job(config: dict) -> dict | None:
    """The overlap and conflict experiment (``merging.challenges``): params, inputs and run record, or
    None when it is off."""
    spec = config.get("merging", {}).get("challenges", {})
    if not spec.get("enabled"):
        return None
    fold = _merging_fold(config, spec, "challenges")
    have = slice_size(config["updates"]["sizes"], scenario(ROUNDS_SCENARIO).learn)
    if have < 2 * int(spec.get("clients", 4)):
        raise ValueError(f"merging.challenges needs at least {2 * int(spec.get('clients', 4))} facts in slice E "
                         f"(two per client); updates.sizes.E is {have}")
    run, inputs = _merge_job(config, "global", fold, "challenges")
    return {"params": run.params, "inputs": inputs, "run": run}


def run_inputs(run: Run) -> dict[str, str]:
    """Input roles of a run (paths relative to the results folder): start checkpoint, facts, fold
    slices, the known-before table, the start model's scores, what the method needs (usage by role, via
    the scenario) and, with ``entropy_arm``, the entropy texts and the start checkpoint's coefficients
    (``entropy_texts``, ``entropy_start``: read by the harness, not handed to the method)."""
    s = scenario(run.scenario)
    fold = f"stages/fold{run.fold}"
    usage = {"A": f"{fold}/usage_A.safetensors", "B": f"{fold}/usage_B.safetensors", "H": "usage/history_H.safetensors"}
    inputs = {**start_inputs(run.scenario, run.fold), "start": start_path(run.scenario, run.fold)}
    m = method(run.method)
    for need in sorted(m.needs(m.Params(**run.params))):
        kind, _, role = need.partition(":")
        if kind == "covariance":  # an editor's key statistics on this run's start model
            inputs["covariance"] = covariance_path(start_tag(run.scenario, run.fold), role)
            continue
        if kind == "statistics":  # merges: the clients' per-fact keys and residuals (rule merging_statistics)
            inputs["statistics"] = statistics_path(run.scenario, run.fold, role)
            continue
        if kind == "coefficients":  # the start checkpoint's feed-forward coefficients (rule entropy_checkpoint)
            inputs["coefficients"] = f"entropy/{start_tag(run.scenario, run.fold)}/coefficients.safetensors"
            continue
        if kind != "usage" or role not in s.usage:
            raise ValueError(f"scenario {run.scenario} cannot provide {need!r} to method {run.method} "
                             f"(it provides usage for {sorted(s.usage)})")
        inputs[f"usage_{role}"] = usage[s.usage[role]]
    if run.tuned:  # one file per family, so retuning one family reruns only its runs
        inputs["lr_rates"] = f"tuning/lr_{run.method}.json"
    if run.entropy_arm:  # the result's entropy, paired with its start checkpoint's on the same texts
        inputs["entropy_texts"] = "entropy/texts.parquet"
        inputs["entropy_start"] = f"entropy/{start_tag(run.scenario, run.fold)}/coefficients.safetensors"
    return inputs


def table_rows(runs: dict[tuple, Run]) -> list[dict[str, Any]]:
    """The run table for people to read (results/runs.tsv)."""
    rows = []
    for run in runs.values():
        rows.append({"scenario": run.scenario, "paper": scenario(run.scenario).paper, "method": run.method,
                     "variant": run.variant, "fold": run.fold, "seed": run.seed, "curves": run.curves,
                     "lr": "tuned x lr_ratio" if run.tuned else "training.lr x lr_ratio",
                     "params": json.dumps(run.params, sort_keys=True), "output": run.path})
    return rows


def scenarios_with_runs(runs: dict[tuple, Run], reported: bool = False) -> list[str]:
    """Scenarios with at least one run, in config order (``reported``: leaving out tuning scenarios)."""
    return list(dict.fromkeys(r.scenario for r in runs.values() if not (reported and scenario(r.scenario).tuning)))
