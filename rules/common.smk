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


def k_label(k):
    """k as it appears in file names: a count ('2000') or a fraction in plain decimals ('0.00005')."""
    if float(k) == int(k) and k >= 1:
        return str(int(k))
    return format(k, ".12f").rstrip("0")


def update_arms():
    """(strategy, k) of every arm: full fine-tuning and LoRA once, neuron strategies at each k."""
    arms = []
    for strategy in config["updates"]["strategies"]:
        if strategy in ("full", "lora"):
            arms.append((strategy, "all"))
        else:
            arms.extend((strategy, k_label(k)) for k in config["updates"]["k"])
    return arms


def update_arm_outputs(experiment, kind):
    suffix = "_curve" if kind == "curve" else ""
    return [
        res(f"updates/exp{experiment}/fold{fold}/{strategy}_k{k}{suffix}.parquet")
        for fold in config["updates"]["folds"]
        for strategy, k in update_arms()
    ]


def print_summary(path, max_lines=None):
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        print("\n".join(lines[:max_lines]))
