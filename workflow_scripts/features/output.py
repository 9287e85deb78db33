"""Output-only baseline features: what the next-token distributions alone say about a probe text.

From the distributions after the full text and after dropping its last 1, 2 and 3 tokens:
- the probability of the actual next token (for the three truncations; after the full text there
  is no next token);
- the top-k probabilities, sorted;
- the entropy;
- a histogram of the distribution: the share of the vocabulary in log-spaced bins of probability
  relative to uniform (p x vocabulary size), so the bins mean the same for any vocabulary.
Every feature varies with the input (no constant indicator histograms, no meaningless entries).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workflow_scripts.models.encoding import length_sorted_batches, pad_id, pad_right

DROPS = (0, 1, 2, 3)
TOP_K = 10
HIST_EDGES = np.concatenate([[0.0], np.logspace(-3, 4, 8), [np.inf]])  # p*V: <1e-3, [1e-3,1e-2), ..., >=1e4


def output_feature_names() -> pd.DataFrame:
    rows = []
    for d in DROPS:
        if d > 0:
            rows.append((d, "p_next", 0))
        rows += [(d, "top_prob", k + 1) for k in range(TOP_K)]
        rows.append((d, "entropy", 0))
        rows += [(d, "hist", b) for b in range(len(HIST_EDGES) - 1)]
    return pd.DataFrame(rows, columns=["dropped_tokens", "feature", "index"])


@torch.no_grad()
def output_features(model, tokenizer, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """(texts, features) float32, columns as in :func:`output_feature_names`.

    Texts shorter than 5 tokens use their first position for the truncations that would go past it.
    """
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    n_feat = len(output_feature_names())
    out = np.zeros((len(texts), n_feat), np.float32)
    pad = pad_id(tokenizer)
    edges = torch.tensor(HIST_EDGES[1:-1], dtype=torch.float32)
    for batch in tqdm(length_sorted_batches([len(e) for e in encoded], batch_size), desc="output features",
                      disable=not progress, mininterval=5):
        ids, mask = pad_right([encoded[i] for i in batch], pad)
        device = next(model.parameters()).device
        logits = model(input_ids=ids.to(device), attention_mask=mask.long().to(device)).logits.float().cpu()
        for r, i in enumerate(batch):
            n = len(encoded[i])
            feats = []
            for d in DROPS:
                pos = max(0, n - 1 - d)
                probs = torch.softmax(logits[r, pos], -1)
                if d > 0:  # a text too short to drop d tokens scores its first next token
                    nxt = encoded[i][min(pos + 1, n - 1)]
                    feats.append(probs[nxt].unsqueeze(0))
                feats.append(torch.topk(probs, TOP_K).values)
                feats.append(-(probs * torch.log(probs.clamp_min(1e-30))).sum().unsqueeze(0))
                counts = torch.bincount(torch.bucketize(probs * probs.numel(), edges, right=True),
                                        minlength=len(HIST_EDGES) - 1)
                feats.append(counts.float() / probs.numel())
            out[i] = torch.cat(feats).numpy()
    return out
