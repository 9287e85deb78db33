"""Internal-feature extraction speed on the default model: batched vs one text at a time.

Prints both times, the ratio, and the largest difference between the two feature arrays, then one
line of name=value pairs. 320 texts, as many as one probe of the default pipeline's setting (fewer
texts leave more padding in each length-sorted batch). Uses results/model (run `make run` first) or
converts the embedded model. Optional argument: the batch size (default 32, as in config.yaml).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts.facts.schema import flat_facts  # noqa: E402
from workflow_scripts.facts.starter import starter_records  # noqa: E402
from workflow_scripts.features.internal import internal_features  # noqa: E402
from workflow_scripts.models.loading import converted_model_dir, load_model  # noqa: E402

N_TEXTS = 320
N_SINGLE = 24
BATCH = int(sys.argv[1]) if len(sys.argv) > 1 else 32


def main() -> None:
    torch.set_num_threads(2)
    model_dir = converted_model_dir()
    model, tok = load_model(model_dir)
    flat = flat_facts(starter_records()).sample(N_TEXTS, random_state=0)
    texts = [f"{p} {t}" for p, t in zip(flat.prompt, flat.target_true)]
    internal_features(model, tok, texts[:4], batch_size=4)  # warm-up
    start = time.perf_counter()
    batched, _ = internal_features(model, tok, texts, batch_size=BATCH)
    batched_s = (time.perf_counter() - start) / N_TEXTS
    start = time.perf_counter()
    single, _ = internal_features(model, tok, texts[:N_SINGLE], batch_size=1)
    single_s = (time.perf_counter() - start) / N_SINGLE
    diff = float(np.abs(batched[:N_SINGLE] - single).max())
    rel = float((np.abs(batched[:N_SINGLE] - single) / np.maximum(np.abs(single), 1.0)).max())
    scale = float(np.abs(single).max())
    print(f"batched (batch {BATCH}): {1000 * batched_s:.1f} ms per text over {N_TEXTS} texts")
    print(f"one at a time:          {1000 * single_s:.1f} ms per text over {N_SINGLE} texts")
    print(f"speed ratio: {single_s / batched_s:.2f}x")
    print(f"max |batched - single| = {diff:.2e} (features up to {scale:.1f} in size); "
          f"max |difference| / max(|feature|, 1) = {rel:.2e} (float32 rounding)")
    print(f"batched_ms_per_text={1000 * batched_s:.1f} single_ms_per_text={1000 * single_s:.1f} "
          f"speedup={single_s / batched_s:.2f} max_abs_diff={diff:.2e} max_rel_diff={rel:.2e}")


if __name__ == "__main__":
    main()
