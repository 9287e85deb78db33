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


def _interval(value: float, low: float, high: float, signed: bool = False) -> str:
    f = "+.4f" if signed else ".4f"
    return f"{value:{f}} [{low:{f}}, {high:{f}}]"


def _share(value: float, n, low: float, high: float) -> str:
    """An accuracy with its 95 % Wilson interval and count."""
    return "–" if not n or n != n else f"{value:.2f} [{low:.2f}, {high:.2f}] (n = {int(n)})"


def _p(value: float) -> str:
    return "–" if value != value else f"{value:.3g}"


def _count(value) -> str:
    return "–" if value is None or value != value else str(int(value))


def _below(a: pd.Series, b: pd.Series) -> pd.Series:
    """a − b, at least 0 (a percentile interval need not contain its estimate; error bars cannot be negative)."""
    return (a - b).clip(lower=0).fillna(0)


def plot_vs_updates(rows: pd.DataFrame, stats: pd.DataFrame, dest: str) -> None:
    """ΔH (paired 95 % interval) against acquisition and against retention (Wilson), one point per run,
    coloured by scenario; resuscitated runs as triangles; r and ρ in each panel's title."""
    from workflow_scripts.entropy.arms import OUTCOMES, RESUSCITATE
    from workflow_scripts.reports.plotting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharex=True)
    colours = {name: f"C{k}" for k, name in enumerate(dict.fromkeys(rows.scenario))}
    for ax, (column, name) in zip(axes, OUTCOMES.items()):
        for (scenario, resuscitated), part in rows.groupby([rows.scenario, rows.method == RESUSCITATE], sort=False):
            ax.errorbar(part.entropy_delta, part[column],
                        xerr=[_below(part.entropy_delta, part.entropy_delta_lo), _below(part.entropy_delta_hi, part.entropy_delta)],
                        yerr=[_below(part[column], part[f"{column}_lo"]), _below(part[f"{column}_hi"], part[column])],
                        fmt="^" if resuscitated else "o", color=colours[scenario], ms=5, elinewidth=0.6, alpha=0.8,
                        label=f"{scenario}{' (resuscitate)' if resuscitated else ''}")
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_xlabel("ΔH vs the run's start (nats, paired 95 % CI)")
        ax.set_ylabel(f"{name} ({column}, Wilson 95 % CI)")
        lines = [f"{r.runs}: r = {r.r:.2f} [{r.r_lo:.2f}, {r.r_hi:.2f}], ρ = {r.rho:.2f} [{r.rho_lo:.2f}, "
                 f"{r.rho_hi:.2f}], n = {r.n}" for r in stats[stats.column == column].itertuples()]
        ax.set_title("\n".join(lines), fontsize=7)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, dest)


def arms_report(row_paths: Sequence[str], outcome_paths: Sequence[str], n_boot: int, seed: int,
                out: Mapping[str, str]) -> list[str]:
    """The update runs' entropy (``entropy.arms``): the run table, the correlations of ΔH with acquisition
    and retention, the figure and the resuscitation table (CSVs and figure to ``out``); the report's lines."""
    from workflow_scripts.entropy.arms import (CONTROL, MIN_RUNS, RESUSCITATE, correlations, resuscitation_table,
                                               run_table)

    rows = pd.concat([pd.read_parquet(p) for p in row_paths], ignore_index=True)
    items = pd.concat([pd.read_parquet(p) for p in outcome_paths], ignore_index=True)
    table = run_table(rows)
    table.to_csv(out["runs"], index=False)
    stats = correlations(rows, n_boot, seed)
    stats.to_csv(out["correlations"], index=False)
    plot_vs_updates(rows, stats, out["vs_updates"])
    res = resuscitation_table(rows, items)
    res.to_csv(out["resuscitation"], index=False)

    lines = ["## Entropy of every update run's result", "",
             "Each run's resulting model measured on the same texts as its start checkpoint: H [95 % bootstrap interval "
             "over texts] and ΔH = H(result) − H(start) [paired 95 % interval]; acquisition (`acc_new`) and retention "
             "(`retention_old`) as share [95 % Wilson interval] (n = items).", "",
             "| scenario | method | variant | fold | H | ΔH vs start | acquisition | retention |", "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.scenario} | {r.method} | {r.variant} | {r.fold} | {_interval(r.entropy, r.entropy_lo, r.entropy_hi)} "
                     f"| {_interval(r.entropy_delta, r.entropy_delta_lo, r.entropy_delta_hi, True)} "
                     f"| {_share(r.acc_new, r.acc_new_n, r.acc_new_lo, r.acc_new_hi)} "
                     f"| {_share(r.retention_old, r.retention_old_n, r.retention_old_lo, r.retention_old_hi)} |")
    lines += ["", "## Does ΔH go with acquisition and retention?", "",
              f"Pooled over runs: Pearson r [Fisher-z 95 % interval] and Spearman ρ [95 % bootstrap interval, {n_boot} "
              f"resamples of the runs], with and without the {RESUSCITATE} runs (whose edit moves H far more than fine-tuning "
              f"does, so they can dominate a correlation). Fewer than {MIN_RUNS} runs, or an interval that includes 0, "
              "establish no relation.", "",
              "| outcome | runs | n | r | ρ | reading |", "|---|---|---|---|---|---|"]
    for r in stats.itertuples():
        lines.append(f"| {r.outcome} | {r.runs} | {r.n} | {r.r:.3f} [{r.r_lo:.3f}, {r.r_hi:.3f}] "
                     f"| {r.rho:.3f} [{r.rho_lo:.3f}, {r.rho_hi:.3f}] | {r.verdict} |")
    lines += ["", "## Resuscitation against full fine-tuning", ""]
    if res.empty:
        lines += [f"No {RESUSCITATE} runs are configured.", ""]
        return lines
    lines += [f"Each {RESUSCITATE} run after the {CONTROL} run from the same start with the same recipe (epochs, learning "
              "rate, batch size); p: exact McNemar test against it on the same facts. Resuscitated: neurons whose "
              "up-projection rows were scaled; clamped: those whose factor hit max_factor.", "",
              "| scenario | fold | method | variant | acquisition | p vs full | retention | p vs full | ΔH vs start "
              "| resuscitated | clamped |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res.itertuples():
        lines.append(f"| {r.scenario} | {r.fold} | {r.method} | {r.variant} "
                     f"| {_share(r.acc_new, r.acc_new_n, r.acc_new_lo, r.acc_new_hi)} | {_p(r.acc_new_p_vs_full)} "
                     f"| {_share(r.retention_old, r.retention_old_n, r.retention_old_lo, r.retention_old_hi)} "
                     f"| {_p(r.retention_old_p_vs_full)} "
                     f"| {_interval(r.entropy_delta, r.entropy_delta_lo, r.entropy_delta_hi, True)} "
                     f"| {_count(r.resuscitated)} | {_count(r.clamped)} |")
    return lines + [""]


def write_entropy_report(tables: Sequence[str], coefficient_paths: Sequence[str], names: Sequence[str], model: str,
                         n_boot: int, seed: int, out: Mapping[str, str], rows: Sequence[str] = (),
                         outcomes: Sequence[str] = ()) -> pd.DataFrame:
    """``report/entropy.md``, the comparison table (CSV) and the per-layer figure; with the update runs'
    ``rows`` and ``outcomes`` (``entropy.arms``) also :func:`arms_report`'s tables and figure."""
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
    if rows:
        lines += arms_report(rows, outcomes, n_boot, seed, out)
    write_text("\n".join(lines), out["summary"])
    return summary
