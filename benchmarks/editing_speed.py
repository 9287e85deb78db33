"""Knowledge editors on SmolLM2-135M-Instruct (the embedded Q4_1 GGUF dequantised to fp32), 2 threads.

Times the covariance C = E[k kᵀ] (20k tokens of the Wikipedia sample, MEMIT's default layers),
ROME on 24 counterfactual starter facts (one rank-one edit per fact, v* optimised in one batch) and
MEMIT on the same 24 facts in one batch (sequential, the reference; and frozen), each on a fresh copy
of the model, and prints seconds per edit, the edit's efficacy (new object is the exact answer / beats
the true one) and, last, one line of name=value pairs. Uses results/model (run `make run` first) or
converts the embedded model.

    python benchmarks/editing_speed.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workflow_scripts  # noqa: E402,F401  (before torch: its allocator settings)
import torch  # noqa: E402
from workflow_scripts.editing.covariance import covariance  # noqa: E402
from workflow_scripts.evaluation.exact_match import score_targets  # noqa: E402
from workflow_scripts.facts.schema import flat_facts  # noqa: E402
from workflow_scripts.facts.starter import starter_records  # noqa: E402
from workflow_scripts.methods.base import UpdateRequest  # noqa: E402
from workflow_scripts.methods.registry import METHODS  # noqa: E402
from workflow_scripts.models.loading import load_model  # noqa: E402

EDITS, TOKENS = 24, 20000


def model_dir() -> Path:
    path = Path("results/model")
    if (path / "config.json").is_file():
        return path
    from workflow_scripts.models.loading import convert_model

    path = Path(tempfile.mkdtemp()) / "model"
    convert_model("embedded:smollm2", path)
    return path


def efficacy(model, tok, facts) -> tuple[float, float]:
    new = score_targets(model, tok, facts.prompt.tolist(), facts.target_new.tolist())
    true = score_targets(model, tok, facts.prompt.tolist(), facts.target_true.tolist())
    return float(new.correct.mean()), float((new.mean_logprob > true.mean_logprob).mean())


def main() -> None:
    torch.set_num_threads(2)
    where = model_dir()
    facts = flat_facts(starter_records()).drop_duplicates("subject").iloc[:EDITS].reset_index(drop=True)
    model, tok = load_model(where, dtype="float32")
    memit, rome = METHODS["memit"], METHODS["rome"]
    layers = sorted(set(memit.edit_layers(model, memit.make_params({}))) | set(rome.edit_layers(model, rome.make_params({}))))
    start = time.perf_counter()
    covs = covariance(model, tok, layers, corpus="gensim_wiki", tokens=TOKENS, max_len=256)
    cov_s = time.perf_counter() - start
    print(f"covariance of layers {layers} over {TOKENS} tokens: {cov_s:.1f} s ({TOKENS / cov_s:.0f} tokens/s)")
    before_exact, before_beats = efficacy(model, tok, facts)
    print(f"before editing: new object exact {before_exact:.2f}, beats the true one {before_beats:.2f}")
    figures = {"cov_s": cov_s}
    for label, name, params in (("rome", "rome", {}), ("memit", "memit", {}), ("memit_frozen", "memit", {"mode": "frozen"})):
        model, tok = load_model(where, dtype="float32")
        m = METHODS[name]
        request = UpdateRequest(facts=facts, target="target_new", training={}, inputs={"covariance": covs})
        start = time.perf_counter()
        result = m.apply(model, tok, request, m.make_params(params))
        seconds = time.perf_counter() - start
        exact, beats = efficacy(result.model, tok, facts)
        print(f"{label}: {EDITS} edits in {seconds:.1f} s ({seconds / EDITS:.2f} s per edit); "
              f"new object exact {exact:.2f}, beats the true one {beats:.2f}")
        figures.update({f"{label}_s_per_edit": seconds / EDITS, f"{label}_exact": exact, f"{label}_efficacy": beats})
    print(" ".join(f"{k}={v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
