"""Knowledge entropy of the workflow's checkpoints on one fixed text set (rules ``entropy_checkpoint`` and
``entropy_report``), usable outside Snakemake.

Every checkpoint is measured on the *same* texts in the same order, so differences between checkpoints
get paired bootstrap intervals (:func:`entropy.bootstrap_delta`). The texts are whole articles of an
offline corpus (default: the English Wikipedia sample in the gensim wheel), drawn with a seed among
those of at least ``min_words`` words and cut to ``max_tokens`` tokens when encoded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch

from workflow_scripts.entropy.coefficients import SequenceCoefficients, sequence_coefficients
from workflow_scripts.entropy.entropy import bootstrap_delta, bootstrap_total, layer_table

FORMAT = "stubborn-entropy-coefficients-v1"


def entropy_texts(source: str = "gensim_wiki", n: int = 32, seed: int = 0, min_words: int = 100) -> list[str]:
    """``n`` texts of at least ``min_words`` words from ``source`` (``gensim_wiki``, ``gensim_news`` or
    ``file:<path>``), drawn with ``seed`` from the corpus in its own order; an error when it has fewer."""
    from workflow_scripts.remix.textsources import prose_texts

    pool = [t for t in prose_texts(source) if len(t.split()) >= min_words]
    if len(pool) < n:
        raise ValueError(f"entropy needs {n} texts of at least {min_words} words from {source!r}; it has {len(pool)}")
    chosen = sorted(random.Random(f"entropy-texts|{seed}").sample(range(len(pool)), n))
    return [pool[i] for i in chosen]


def save_coefficients(coefficients: SequenceCoefficients, dest: str | Path, **meta) -> None:
    from safetensors.torch import save_file

    from workflow_scripts.io import atomic_path

    header = {"format": FORMAT, "modules": json.dumps(list(coefficients.modules)), "mode": coefficients.mode,
              **{k: json.dumps(v) for k, v in meta.items()}}
    with atomic_path(Path(dest)) as tmp:
        save_file({"values": coefficients.values.contiguous(), "n_tokens": coefficients.n_tokens.contiguous()},
                  str(tmp), metadata=header)


def load_coefficients(path: str | Path) -> SequenceCoefficients:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a coefficients file of this workflow (format {meta.get('format')!r})")
        return SequenceCoefficients(f.get_tensor("values"), f.get_tensor("n_tokens"),
                                    tuple(json.loads(meta["modules"])), meta["mode"])


def checkpoint_entropy(model_dir: str, name: str, texts: Sequence[str], max_tokens: int, n_boot: int, seed: int,
                       dest_table: str, dest_coefficients: str) -> pd.DataFrame:
    """One checkpoint: per-layer entropy (with the total's bootstrap interval in every row) and the
    per-sequence coefficients, written as Parquet and safetensors."""
    from workflow_scripts.io import write_parquet
    from workflow_scripts.models.loading import load_model

    model, tok = load_model(model_dir, dtype="float32")
    coefficients = sequence_coefficients(model, tok, texts, max_length=max_tokens)
    total = bootstrap_total(coefficients, n_boot=n_boot, seed=seed)
    table = layer_table(coefficients).assign(checkpoint=name, total=total.estimate, total_lo=total.low,
                                             total_hi=total.high, sequences=coefficients.n_sequences)
    save_coefficients(coefficients, dest_coefficients, checkpoint=name)
    write_parquet(table, dest_table)
    return table


def compare_checkpoints(coefficients: Mapping[str, SequenceCoefficients], reference: str, n_boot: int = 1000,
                        seed: int = 0) -> pd.DataFrame:
    """Total entropy of each checkpoint and its difference from ``reference``, paired CIs (same texts)."""
    rows = []
    for name, c in coefficients.items():
        total = bootstrap_total(c, n_boot=n_boot, seed=seed)
        delta = bootstrap_delta(coefficients[reference], c, n_boot=n_boot, seed=seed)
        rows.append({"checkpoint": name, "H": total.estimate, "H_lo": total.low, "H_hi": total.high,
                     "H_norm_mean": float(layer_table(c).H_norm.mean()), "delta_vs_" + reference: delta.estimate,
                     "delta_lo": delta.low, "delta_hi": delta.high, "sequences": c.n_sequences,
                     "tokens": int(c.n_tokens.sum())})
    return pd.DataFrame(rows)


def write_entropy_report(tables: Sequence[str], coefficient_paths: Sequence[str], names: Sequence[str], model: str,
                         n_boot: int, seed: int, out: Mapping[str, str]) -> pd.DataFrame:
    """``report/entropy.md``, the comparison table (CSV) and the per-layer figure."""
    from workflow_scripts.io import write_text
    from workflow_scripts.reports.plotting import pyplot, save_figure

    coefficients = {name: load_coefficients(p) for name, p in zip(names, coefficient_paths)}
    reference = names[0]
    summary = compare_checkpoints(coefficients, reference, n_boot, seed)
    summary.to_csv(out["table"], index=False)
    layers = pd.concat([pd.read_parquet(p) for p in tables], ignore_index=True)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, part in layers.groupby("checkpoint", sort=False):
        ax.plot(part.layer, part.H_norm, marker="o", ms=3, label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("H / ln m (per layer)")
    ax.legend(fontsize=7)
    first = next(iter(coefficients.values()))
    ax.set_title(f"Knowledge entropy per layer ({model}; {first.n_sequences} texts, "
                 f"{int(first.n_tokens.sum())} tokens)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out["figure"])
    delta = "delta_vs_" + reference
    lines = [f"# Knowledge entropy ({model})", "",
             f"Σ over layers of the entropy of each layer's L1-normalised mean |feed-forward coefficient| (natural log; "
             f"the maximum is {len(first.modules)} × ln {first.width} = {len(first.modules) * torch.log(torch.tensor(float(first.width))):.2f}), "
             f"on the same {first.n_sequences} texts ({int(first.n_tokens.sum())} tokens, padding excluded) for every "
             f"checkpoint; 95 % bootstrap intervals over texts, the differences paired (same resampled texts).", "",
             f"| checkpoint | H | 95 % interval | ΔH vs {reference} | 95 % interval | mean H/ln m |", "|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        d = getattr(r, delta)
        lines.append(f"| {r.checkpoint} | {r.H:.4f} | [{r.H_lo:.4f}, {r.H_hi:.4f}] | {d:+.4f} | [{r.delta_lo:+.4f}, "
                     f"{r.delta_hi:+.4f}] | {r.H_norm_mean:.4f} |")
    lines += ["", "The total's interval sits partly below its estimate: the entropy of a resampled mean is biased low; "
              "the bias largely cancels in the paired differences.", ""]
    write_text("\n".join(lines), out["summary"])
    return summary
