"""Shared fixtures: tiny random models (GPT-2 style and llama style) with a word-level tokenizer
trained on the test facts, and paths to the real shared records."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from workflow_scripts.facts.fictionalise import fictionalise  # noqa: E402
from workflow_scripts.facts.starter import starter_records  # noqa: E402
from workflow_scripts.models.tiny import save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CONFLICTAWARE_FACTS = SHARED_DATA / "conflictaware" / "dataset" / "facts"

# The end-to-end test config uses these sizes; the tokenizer covers their words.
E2E_FACTS = 40
E2E_NOVEL = 20
E2E_SEED = 7


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


def shared_file(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path
