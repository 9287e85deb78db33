# Path helpers and config lookups only (no rules). Everything imported here is torch-free.
import os

from workflow_scripts.models.sources import describe_model
from workflow_scripts.scenarios.design import SCENARIOS as _SCENARIOS
from workflow_scripts.scenarios.runs import (
    build_runs,
    challenges_job,
    check_entropy_arms,
    covariance_jobs,
    rounds_jobs,
    run_inputs,
    scenarios_with_runs,
    sequential_inputs,
    sequential_runs,
    start_inputs,
    statistics_jobs,
    table_rows,
)


def res(*parts):
    """A path below the configured results folder."""
    return os.path.join(config["results_dir"], *parts)


def repo(*parts):
    """A path inside this repository (for files shipped with the workflow)."""
    return os.path.join(workflow.basedir, *parts)


def model_inputs(wildcards):
    """Files the model conversion depends on, so replacing them reruns it."""
    from workflow_scripts.models.sources import resolve_source

    src = resolve_source(config["model"]["source"])
    if src.kind == "gguf":
        return {"weights": os.path.join(src.location, src.gguf_file)}
    if src.kind == "local":
        return {"weights": os.path.join(src.location, "config.json")}
    return {}


def facts_inputs(wildcards):
    source = config["facts"]["source"]
    if source == "starter":
        return {
            "relations": repo("workflow_scripts/facts/starter/relations.yaml"),
            "table": repo("workflow_scripts/facts/starter/facts.csv"),
        }
    if source == "counterfact":
        return {"raw": res("downloads/counterfact.json")}
    return {"raw": config["facts"]["path"]}


def novel_inputs(wildcards):
    """The LLM generator's prompt file is an input, so editing the prompt reruns it."""
    if config["novel"]["generator"] == "llm":
        return {"prompt": repo(config["novel"]["llm"]["prompt_file"])}
    return {}


def llm_params():
    """LLM settings reach the job only when the LLM generator is used (so they rerun only it)."""
    if config["novel"]["generator"] != "llm":
        return {}
    llm = dict(config["novel"]["llm"])
    llm["prompt_file"] = repo(llm["prompt_file"])
    return llm


def training_params(epochs, **extra):
    """The shared training settings plus a stage's epochs (one dict, so any change reruns the stage)."""
    return {**config["training"], "epochs": epochs, **extra}


def stage_training(epochs, fold):
    """A fold's checkpoint fine-tune: the shared settings, its epochs, seeded by training.seed + fold."""
    return training_params(epochs, seed=config["training"]["seed"] + fold)


def awareness_known_table(wildcards):
    """Which facts count as known: the base model's probe, or the fine-tuned model's."""
    if wildcards.setting == "pretrained":
        return res("probe/facts.parquet")
    return res("awareness/finetuned_known.parquet")


def awareness_model(wildcards):
    return res("model") if wildcards.setting == "pretrained" else res("models/awareness_finetuned")


# The run table (scenario x method x variant x fold), built once from the config. Wildcards are keys
# into it; every job's params are looked up, never parsed back from a path.
RUNS = build_runs(config)
check_entropy_arms(RUNS, config["entropy"]["checkpoints"])  # entropy.arms: every start checkpoint measured


def entropy_arm_spec():
    """What an update job's entropy arm depends on ({} when entropy.arms is off: rows without entropy)."""
    spec = config["entropy"]
    return {k: spec[k] for k in ("texts", "max_tokens", "bootstrap", "seed")} if spec["arms"] else {}


# The sequential-editing experiment's runs (method -> Run), and the editors' covariance jobs:
# (start checkpoint tag, covariance label) -> start model and the runs it serves.
SEQUENTIAL = sequential_runs(config)
# Collaborative editing: multi-round trajectories (name -> job), and the clients' per-fact statistics:
# (scenario, fold, label) -> the start model and settings they are measured with.
ROUNDS = rounds_jobs(config)
CHALLENGES = challenges_job(config)
_MERGING_RUNS = [*(j["run"] for j in ROUNDS.values()), *([CHALLENGES["run"]] if CHALLENGES else [])]
COVARIANCES = covariance_jobs([*RUNS.values(), *SEQUENTIAL.values(), *_MERGING_RUNS])
STATISTICS = statistics_jobs([*RUNS.values(), *_MERGING_RUNS])


def statistics_job(wildcards):
    try:
        return STATISTICS[(wildcards.scenario, int(wildcards.fold), wildcards.label)]
    except KeyError:
        raise ValueError(f"no configured merge run needs statistics {wildcards.label!r} of {wildcards.scenario!r} "
                         f"fold {wildcards.fold}") from None


def statistics_job_inputs(wildcards):
    job = statistics_job(wildcards)
    out = {name: res(job[name]) for name in ("model", "facts", "slices")}
    if job["covariance"]:
        out["covariance"] = res(job["covariance"])
    return out


def rounds_job_inputs(wildcards):
    return {name: res(path) for name, path in ROUNDS[wildcards.name]["inputs"].items()}


def merge_run_files(kind):
    """row / outcomes files of the merge method's runs (the collaborative-editing report)."""
    return [res(f"{run.path}/{kind}.parquet") for run in RUNS.values() if run.method == "merge"]


def sequential_job_inputs(wildcards):
    return {name: res(path) for name, path in sequential_inputs(SEQUENTIAL[wildcards.method]).items()}


def covariance_job(wildcards):
    try:
        return COVARIANCES[(wildcards.start, wildcards.label)]
    except KeyError:
        raise ValueError(f"no configured editor run needs covariance {wildcards.label!r} of {wildcards.start!r}") from None


def run_of(wildcards):
    key = (wildcards.scenario, wildcards.method, wildcards.variant, int(wildcards.fold))
    try:
        return RUNS[key]
    except KeyError:
        raise ValueError(f"no configured run {key}; see results/runs.tsv") from None


def update_inputs(wildcards):
    """Start checkpoint, facts, fold slices, known-before table and what the method needs."""
    return {name: res(path) for name, path in run_inputs(run_of(wildcards)).items()}


def entropy_model(wildcards):
    """The model folder of an entropy checkpoint name: base, fold{f}_A or fold{f}_AB."""
    name = wildcards.checkpoint
    if name == "base":
        return res("model")
    fold, _, stage = name.partition("_")
    return res(f"stages/{fold}/model_{stage}")


def entropy_arm_outputs():
    """With entropy.arms: the update runs' entropy table, its correlations with acquisition and retention,
    their figure and the resuscitation table."""
    if not config["entropy"]["arms"]:
        return {}
    return {
        "runs": report(res("report/entropy_runs.csv"), caption="../report/entropy_runs.rst",
                       category="Knowledge entropy", labels={"table": "entropy of every update run"}),
        "correlations": report(res("report/entropy_vs_updates.csv"), caption="../report/entropy_correlations.rst",
                               category="Knowledge entropy", labels={"table": "ΔH vs acquisition and retention"}),
        "vs_updates": report(res("figures/entropy_vs_updates.png"), caption="../report/entropy_vs_updates.rst",
                             category="Knowledge entropy", labels={"figure": "ΔH vs acquisition and retention"}),
        "resuscitation": report(res("report/entropy_resuscitation.csv"), caption="../report/entropy_resuscitation.rst",
                                category="Knowledge entropy", labels={"table": "resuscitation vs full fine-tuning"}),
    }


def update_start_inputs(wildcards):
    """The scenario's start checkpoint, facts, fold slices and known-before table."""
    return {name: res(path) for name, path in start_inputs(wildcards.scenario, int(wildcards.fold)).items()}


def run_files(kind, scenario=None, reported=False):
    """row / curve / outcomes files of every configured run (of one scenario; ``reported``: not of
    tuning scenarios, whose runs only choose settings)."""
    return [res(f"{run.path}/{kind}.parquet") for run in RUNS.values() if scenario in (None, run.scenario)
            and not (reported and run.scenario in TUNING_RUNS)]


TUNING_RUNS = {name for name, s in _SCENARIOS.items() if s.tuning}


def tuned_methods():
    """Methods the lr_tuning scenario runs (each gets its own rates file)."""
    return sorted({run.method for run in RUNS.values() if run.scenario in TUNING_RUNS})


def update_scenarios(reported=False):
    """Scenarios with at least one configured run, in config order (``reported``: not tuning ones)."""
    return scenarios_with_runs(RUNS, reported)


def neuron_ks():
    """Every k of a neuron run (for the figure of where stubborn neurons sit)."""
    return sorted({float(run.params["k"]) for run in RUNS.values() if "k" in run.params})


def print_summary(path, max_lines=None):
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        print("\n".join(lines[:max_lines]))


# Fictional-knowledge injection (rules/entropy_injection.smk).
INJECTION = config["entropy"]["injection"]
# What a run depends on (not which checkpoints are listed or where the item files live, so adding a
# checkpoint reruns nothing else).
INJECTION_RUN = {k: v for k, v in INJECTION.items() if k not in ("enabled", "data_dir", "checkpoints")}

if INJECTION["enabled"]:
    # Fail at parse time, before any job, when the item files are not where the config says.
    from workflow_scripts.entropy.injection import data_paths as _injection_data_paths

    _injection_data_paths(INJECTION["data_dir"])


def injection_data(wildcards):
    """The two item files ({paraphrase, once}); a clear error naming entropy.injection.data_dir otherwise."""
    from workflow_scripts.entropy.injection import data_paths

    return {kind: str(path) for kind, path in data_paths(INJECTION["data_dir"]).items()}


# REMIX (rules/remix.smk): its cells, and per job the stage-1 model, settings and reused checkpoint.
from workflow_scripts.remix.cells import cells_from_grids

REMIX = config["remix"]
REMIX_CELLS = cells_from_grids(REMIX["cells"]) if REMIX["sets"] else []
REMIX_STAGE1 = list(dict.fromkeys(c.stage1 for c in REMIX_CELLS))
REMIX_FOLD = int(REMIX["fold"])
if REMIX["sets"] and REMIX_FOLD not in config["updates"]["folds"]:
    raise ValueError(f"remix.fold {REMIX_FOLD} is not one of updates.folds {config['updates']['folds']}")


def remix_model(wildcards):
    """Stage 1 without mixing on the fold's facts is checkpoint A; every other job starts at the base model."""
    if wildcards.set == "facts" and wildcards.stage1 == "none":
        return res(f"stages/fold{REMIX_FOLD}/model_A")
    return res("model")


def remix_inputs(wildcards):
    """The stage-1 model, the facts and slices, and checkpoint AB where it is the none/facts/none cell."""
    inputs = {"model": remix_model(wildcards), "facts": res("facts/facts.parquet"),
              "slices": res(f"stages/fold{REMIX_FOLD}/slices.parquet")}
    if wildcards.set == "facts" and wildcards.stage1 == "none" and any(c.name == "none/facts/none" for c in REMIX_CELLS):
        inputs["reuse_ab"] = res(f"stages/fold{REMIX_FOLD}/model_AB")
    return inputs


def remix_training(wildcards, stage):
    """Stage settings: the stage checkpoints' (updates.old_epochs, seeded by fold) for the fold's facts,
    remix.kvr.epochs for key-value pairs; None for stage 1 when it is checkpoint A."""
    if wildcards.set == "facts":
        if stage == 1 and wildcards.stage1 == "none":
            return None
        return stage_training(config["updates"]["old_epochs"], REMIX_FOLD)
    return stage_training(REMIX["kvr"]["epochs"], REMIX_FOLD)


def remix_files(kind):
    return [res(f"remix/{s}/s1_{m}/{kind}.parquet") for s in REMIX["sets"] for m in REMIX_STAGE1]
