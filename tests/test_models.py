"""Model conversion and the architecture map, on tiny random models and the embedded GGUF."""

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from workflow_scripts.models import architectures as arch
from workflow_scripts.models.loading import convert_model, load_model, resolve_source

from conftest import REPO


@pytest.mark.parametrize(
    "family,n_modules,types",
    [
        ("gpt2", 4, ["attn_qkv", "attn_out", "mlp_in", "mlp_out"]),
        ("llama", 7, ["attn_q", "attn_k", "attn_v", "attn_out", "mlp_gate", "mlp_up", "mlp_down"]),
    ],
)
def test_linear_modules_per_block(tiny_model_dirs, family, n_modules, types):
    model, _ = load_model(tiny_model_dirs[family])
    mods = arch.linear_modules(model)
    assert len(mods) == 2 * n_modules
    assert [m.type for m in mods[:n_modules]] == types
    assert [m.block for m in mods] == [0] * n_modules + [1] * n_modules
    for m in mods:
        assert model.get_submodule(m.name) is m.module
        in_width = m.module.weight.shape[0] if arch.weight_is_transposed(m.module) else m.module.in_features
        assert m.module(torch.zeros(1, in_width)).shape[-1] == m.out_features


def test_gpt2_widths_follow_conv1d_layout(tiny_model_dirs):
    model, _ = load_model(tiny_model_dirs["gpt2"])
    widths = [m.out_features for m in arch.linear_modules(model)[:4]]
    assert widths == [3 * 64, 64, 4 * 64, 64]
    assert arch.count_neurons(model) == 2 * sum(widths)


def test_unsupported_architecture_is_named():
    from transformers import BertConfig, BertForMaskedLM

    with pytest.raises(ValueError, match="unsupported architecture 'bert'"):
        arch.linear_modules(BertForMaskedLM(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64)))


def test_convert_local_directory_round_trips(tiny_model_dirs, tmp_path):
    out = tmp_path / "model"
    info = convert_model(str(tiny_model_dirs["llama"]), out)
    assert info["family"] == "llama" and info["n_blocks"] == 2
    assert (out / "model.safetensors").is_file() and json.loads((out / "model_info.json").read_text())["kind"] == "local"
    a, tok = load_model(tiny_model_dirs["llama"])
    b, _ = load_model(out)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, atol=0, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_conversion_writes_a_module_table_with_every_tracked_neuron(tiny_model_dirs, tmp_path, family):
    modules_path = tmp_path / "model_modules.parquet"
    info = convert_model(str(tiny_model_dirs[family]), tmp_path / "model", modules_path=modules_path)
    table = pd.read_parquet(modules_path)
    assert list(table.columns) == ["name", "block", "type", "width"]
    model, _ = load_model(tmp_path / "model")
    assert int(table.width.sum()) == arch.count_neurons(model) == info["n_neurons"]
    assert table.name.tolist() == [m.name for m in arch.linear_modules(model)]
    assert sorted(set(table.block)) == list(range(info["n_blocks"]))


def test_resolving_a_model_source_does_not_import_torch(tiny_model_dirs):
    """Snakemake resolves the source while it builds the DAG; a dry run must not pay for torch."""
    code = ("import sys; from workflow_scripts.models.sources import resolve_source; "
            f"assert resolve_source({str(tiny_model_dirs['gpt2'])!r}).kind == 'local'; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_loading_still_offers_source_resolution():
    from workflow_scripts.models import loading, sources

    assert loading.resolve_source is sources.resolve_source and loading.ModelSource is sources.ModelSource


def test_bad_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a .gguf file"):
        resolve_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_source(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown embedded model 'gpt5'"):
        resolve_source("embedded:gpt5")
    assert resolve_source("gpt2").kind == "hub"


def test_hub_id_offline_fails_fast_not_hangs(tmp_path):
    code = "from workflow_scripts.models.loading import convert_model; convert_model('gpt2', 'out')"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_convert_embedded_gguf(tmp_path):
    """The real default model: GGUF -> safetensors, with the quantizer cleared so it serialises."""
    out = tmp_path / "smollm2"
    info = convert_model("embedded:smollm2", out)
    assert info["family"] == "llama" and info["n_blocks"] == 30 and info["n_parameters"] == 134_515_008
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    model, tok = load_model(out)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax()
    assert tok.decode(nxt).strip() == "Paris"
