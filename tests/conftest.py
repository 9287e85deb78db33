"""Shared fixtures: tiny random models (GPT-2 style and llama style) with a word-level tokenizer
trained on the test facts, and paths to the real shared records."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import yaml  # noqa: E402

from workflow_scripts.facts.fictionalise import fictionalise  # noqa: E402
from workflow_scripts.facts.starter import starter_records  # noqa: E402
from workflow_scripts.models.tiny import save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CONFLICTAWARE_FACTS = SHARED_DATA / "conflictaware" / "dataset" / "facts"

# The end-to-end test config uses these sizes; the tokenizer covers their words.
E2E_FACTS = 48
E2E_NOVEL = 20
E2E_SEED = 7
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def record_texts(records):
    for r in records:
        rw = r["requested_rewrite"]
        yield rw["prompt"].replace("{}", rw["subject"])
        yield rw["target_true"]["str"]
        yield rw["target_new"]["str"]
        for key in ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts", "generation_prompts"):
            yield from r[key]


@pytest.fixture(scope="session")
def starter():
    return starter_records()


@pytest.fixture(scope="session")
def tokenizer_texts(starter):
    novel = fictionalise(starter[:E2E_FACTS], E2E_NOVEL, E2E_SEED)
    return list(record_texts(starter)) + list(record_texts(novel))


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tokenizer_texts):
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: save_tiny_model(family, tokenizer_texts, root / family) for family in ("gpt2", "llama")}


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny(request, tiny_model_dirs):
    """(family, model, tokenizer) for each tiny architecture."""
    from workflow_scripts.models.loading import load_model

    model, tokenizer = load_model(tiny_model_dirs[request.param])
    return request.param, model, tokenizer


@pytest.fixture(scope="session")
def pretrained_tiny_dir(tmp_path_factory, tiny_model_dirs, starter):
    """The tiny GPT-2 after learning the first half of the end-to-end facts, so that the pre-trained
    setting has familiar facts."""
    from workflow_scripts.facts.schema import flat_facts
    from workflow_scripts.models.loading import load_model
    from workflow_scripts.training.plugins import StopAtAccuracy
    from workflow_scripts.training.train import TrainConfig, train

    model, tok = load_model(tiny_model_dirs["gpt2"])
    flat = flat_facts(starter[: E2E_FACTS // 2])
    prompts, targets = flat.prompt.tolist(), flat.target_true.tolist()
    train(model, tok, prompts, targets, TrainConfig(lr=3e-3, epochs=40, batch_size=8),
          [StopAtAccuracy(tok, prompts, targets)])
    out = tmp_path_factory.mktemp("pretrained_tiny") / "gpt2"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile",
           str(workdir / "config.yaml"), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)


def write_config(workdir: Path, model_dir: Path, **changes) -> None:
    cfg = {
        "model": {"source": str(model_dir)},
        "facts": {"source": "starter", "limit": E2E_FACTS},
        "novel": {"n": E2E_NOVEL, "seed": E2E_SEED},
        "probe": {"batch_size": 8},
        "training": {"lr": 0.003, "batch_size": 8},
        "awareness": {"n_history": 6, "history_epochs": 2, "n_finetune": 10, "finetune_epochs": 30,
                      "n_per_class": 6, "seeds": [0, 1], "resplits": 2, "test_fraction": 0.34, "block_ranges": 2},
        "methods": {"rome": {"cov_tokens": 2000, "steps": 4}, "memit": {"cov_tokens": 2000, "steps": 4},
                    "merge": {"cov_tokens": 2000, "steps": 4}},
        "merging": {"rounds": {"rules": ["collabedit"], "alpha": [0, 1], "rounds": 2, "clients": 2, "per_client": 1},
                    "challenges": {"enabled": True, "clients": 2}},
        "entropy": {"checkpoints": ["base", "fold0_A", "fold0_AB"], "texts": 4, "max_tokens": 48, "bootstrap": 50},
        "remix": {"sets": ["facts", "kvr"], "generation_tokens": 2,
                  "kvr": {"n": 8, "key_chars": 3, "value_chars": 2, "epochs": 12}},
        "editing": {"layers": {"facts": 2, "samples": 1, "sweep": [0]}, "sequential": {"batch": 2, "stream": ["B"]}},
        "updates": {"folds": [0], "sizes": {"A": 6, "B": 4, "D": 2, "V": 2, "known_old": 6, "E": 4}, "old_epochs": 25,
                    "curve_every": 2,
                    "tune_lr": True, "scenarios": {
            "lr_tuning": {"epochs": 25, "methods": {
                "full": {"lr_ratio": [1.0, 3.0]}, "lora": {}, "neurons": {"strategy": "plastic", "k": 20}}},
            "nondissonant_update": {"epochs": 25, "curves": False, "methods": {
                "full": [{}, {"lr_ratio": 0.5}], "lora": {"lr_ratio": 1.0},
                "neurons": {"strategy": ["plastic", "stubborn", "specific"], "k": 20},
                "resuscitate": None}},  # llama-style models only; the tiny end-to-end model is a GPT-2
            "lottery": {"epochs": 10, "methods": {"neurons": {"strategy": ["lottery", "non_lottery", "random"], "k": [20, 60]}}},
            "dissonant_update": {"epochs": 25, "curves": True, "methods": {
                "full": {"epochs": [25, 5]}, "lora": None, "neurons": {"strategy": "plastic", "k": 20}}},
            "matched_control": {"epochs": 25, "curves": True, "methods": {
                "full": {"epochs": [25, 5]}, "lora": None, "neurons": {"strategy": "plastic", "k": 20}}},
            "false_nonconflicting": {"epochs": 25, "curves": True, "methods": {
                "full": {}, "lora": None, "neurons": {"strategy": "plastic", "k": 20}}},
            "collaborative_edit": {"methods": {"merge": [{"rule": ["global", "collabedit", "ties"], "clients": 2},
                                                         {"rule": "ta", "clients": 4}]}},
        }},
    }
    for key, value in changes.items():
        *path, name = key.split("__")
        section = cfg
        for part in path:
            section = section.setdefault(part, {})
        section[name] = value
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, pretrained_tiny_dir):
    """The whole workflow run once on the pre-trained tiny model (about 6 minutes); shared by the
    end-to-end tests and the report checks: (workdir, completed snakemake process)."""
    workdir = tmp_path_factory.mktemp("e2e")
    write_config(workdir, pretrained_tiny_dir)
    proc = snakemake(workdir, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, proc


def shared_file(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path
