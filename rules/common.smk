# Path helpers and config lookups only (no rules).
import os


def res(*parts):
    """A path below the configured results folder."""
    return os.path.join(config["results_dir"], *parts)


def repo(*parts):
    """A path inside this repository (for files shipped with the workflow)."""
    return os.path.join(workflow.basedir, *parts)


def model_inputs(wildcards):
    """Files the model conversion depends on, so replacing them reruns it."""
    from workflow_scripts.models.loading import resolve_source

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


def awareness_known_table(wildcards):
    """Which facts count as known: the base model's probe, or the fine-tuned model's."""
    if wildcards.setting == "pretrained":
        return res("probe/facts.parquet")
    return res("awareness/finetuned_known.parquet")


def awareness_model(wildcards):
    return res("model") if wildcards.setting == "pretrained" else res("models/awareness_finetuned")


def update_experiments():
    """Slugs ('2_1', ...) of the configured targeted-update experiments."""
    return [e.replace(".", "_") for e in config["updates"]["experiments"]]


def update_fold_path(fold, name):
    return res(f"updates/fold{fold}/{name}")


def update_arm_inputs(wildcards):
    """Start model, known-before table and usage files of one arm, from the experiment's design."""
    from workflow_scripts.updates.design import experiment

    exp = experiment(wildcards.experiment)
    fold = wildcards.fold
    models = {"base": res("model"), "A": update_fold_path(fold, "model_A"), "AB": update_fold_path(fold, "model_AB")}
    known = {
        "base": res("probe/facts.parquet"),
        "A": update_fold_path(fold, "known_A.parquet"),
        "AB": update_fold_path(fold, "known_AB.parquet"),
    }
    usage = {
        "A": update_fold_path(fold, "usage_A.safetensors"),
        "B": update_fold_path(fold, "usage_B.safetensors"),
        "H": res("usage/history_H.safetensors"),
    }
    inputs = {
        "model": models[exp.start],
        "facts": res("facts/facts.parquet"),
        "slices": update_fold_path(fold, "slices.parquet"),
        "known": known[exp.known],
    }
    for source in sorted({s for s in exp.usage.values() if s}):
        inputs[f"usage_{source}"] = usage[source]
    return inputs


def update_arm_outputs(experiment, kind):
    """Every arm's row (or curve) file of one experiment: folds x settings x strategies x k."""
    from workflow_scripts.updates.design import arms

    suffix = "_curve" if kind == "curve" else ""
    return [
        res(f"updates/exp{experiment}/fold{fold}/{setting}/{strategy}_k{k}{suffix}.parquet")
        for fold in config["updates"]["folds"]
        for setting, strategy, k in arms(config["updates"], experiment)
    ]


def print_summary(path, max_lines=None):
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        print("\n".join(lines[:max_lines]))
