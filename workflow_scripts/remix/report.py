"""REMIX report: forgetting of the stage-1 facts per cell, paired tests between cells one factor apart,
and the logit lens (rule ``remix_report``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.stats import mcnemar_exact, wilson
from workflow_scripts.io import write_parquet, write_text
from workflow_scripts.remix.cells import AFTER_STAGE1, Cell
from workflow_scripts.reports.plotting import pyplot, save_figure

FACTORS = ("stage1", "stage2", "mixing")
FACTOR_TITLES = {"stage1": "stage-1 random-word mixing", "stage2": "stage-2 data", "mixing": "stage-2 generic mixing"}


def share(k: int, n: int) -> dict:
    low, high = wilson(k, n) if n else (np.nan, np.nan)
    return {"k": int(k), "n": int(n), "share": k / n if n else np.nan, "lo": low, "hi": high}


def fmt(s: dict) -> str:
    return "–" if not s["n"] else f"{s['share']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}] ({s['k']}/{s['n']})"


def fmt_p(p: float) -> str:
    return "–" if p != p else (f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}")


def _parse(name: str) -> Cell:
    stage1, stage2, mixing = name.split("/")
    return Cell(stage1, stage2, mixing)


def cell_metrics(outcomes: pd.DataFrame, stages: pd.DataFrame) -> pd.DataFrame:
    """One row per (set, cell): the stage-1 facts known after stage 1, kept after stage 2 (of those
    known: the project's retention), exact match and generation exact match after stage 2 (of all),
    the median emergence layer, and the stage's training counts."""
    rows = []
    for (set_name, stage1), part in outcomes.groupby(["set", "stage1"], sort=False):
        first = part[part.cell == AFTER_STAGE1].set_index("case_id")
        known = first.index[first.correct.to_numpy()]
        for name, after in part[part.cell != AFTER_STAGE1].groupby("cell", sort=False):
            after = after.set_index("case_id").loc[first.index]
            cell = _parse(name)
            stats = stages[(stages.set == set_name) & (stages.cell == name)]
            st = stats.iloc[0].to_dict() if len(stats) else {}
            row = {"set": set_name, "cell": name, "stage1": cell.stage1, "stage2": cell.stage2, "mixing": cell.mixing}
            for label, s in (("stage1_known", share(first.correct.sum(), len(first))),
                             ("stage1_generation", share(first.generation_em.sum(), len(first))),
                             ("retention", share(after.correct.loc[known].sum(), len(known))),
                             ("exact", share(after.correct.sum(), len(after))),
                             ("generation", share(after.generation_em.sum(), len(after)))):
                row.update({f"{label}_{key}": value for key, value in s.items()})
            learned, rows2 = st.get("stage2_learned", np.nan), st.get("stage2_rows", np.nan)
            row.update({"stage2_learned_k": learned, "stage2_rows": rows2,
                        "emergence_after_stage1": float(np.nanmedian(first.emergence_layer)) if first.emergence_layer.notna().any() else np.nan,
                        "emergence_after_stage2": float(np.nanmedian(after.emergence_layer)) if after.emergence_layer.notna().any() else np.nan,
                        "steps": st.get("steps", np.nan), "mix_rows": st.get("mix_rows", np.nan),
                        "seconds": st.get("seconds", np.nan)})
            rows.append(row)
    return pd.DataFrame(rows)


def one_factor_apart(a: Cell, b: Cell) -> str | None:
    """The factor in which two cells differ, when it is the only one."""
    differ = [f for f in FACTORS if getattr(a, f) != getattr(b, f)]
    return differ[0] if len(differ) == 1 else None


def comparisons(outcomes: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Exact McNemar tests on the same stage-1 facts after stage 2, between every two cells of a set
    that differ in one factor (the first in ``order`` is the baseline: no mixing, stage-2 facts)."""
    rank = {name: i for i, name in enumerate(order)}
    rows = []
    after = outcomes[outcomes.cell != AFTER_STAGE1]
    for set_name, part in after.groupby("set", sort=False):
        names = sorted(part.cell.unique(), key=lambda c: rank.get(c, len(rank)))
        tables = {c: part[part.cell == c].set_index("case_id").sort_index() for c in names}
        for i, base in enumerate(names):
            for other in names[i + 1:]:
                factor = one_factor_apart(_parse(base), _parse(other))
                if factor is None:
                    continue
                a, b = tables[base], tables[other]
                if not a.index.equals(b.index):
                    raise ValueError(f"cells {base} and {other} of set {set_name} scored different facts")
                exact, gen = mcnemar_exact(a.correct, b.correct), mcnemar_exact(a.generation_em, b.generation_em)
                rows.append({"set": set_name, "factor": factor, "baseline": base, "cell": other,
                             "from": getattr(_parse(base), factor), "to": getattr(_parse(other), factor),
                             "n": len(a), "exact_baseline": int(a.correct.sum()), "exact_cell": int(b.correct.sum()),
                             "only_baseline": exact["only_a"], "only_cell": exact["only_b"], "p_exact": exact["p_value"],
                             "generation_baseline": int(a.generation_em.sum()), "generation_cell": int(b.generation_em.sum()),
                             "p_generation": gen["p_value"]})
    return pd.DataFrame(rows)


def markdown(metrics: pd.DataFrame, tests: pd.DataFrame, spec: dict, model: str) -> str:
    lines = ["# REMIX: forgetting of memorised facts", "",
             f"Model: {model}. Stage 1 memorises a set of facts, stage 2 trains on other data; a cell is "
             "stage-1 mixing / stage-2 data / stage-2 mixing. Mixing adds int(ratio x rows) rows "
             f"(ratio {spec['ratio']}) shuffled into the same seeded random batches; every stage uses the "
             "project's training routine (loss on the answer tokens only, padding never trained, unlike the "
             "seed), per-example loss weighting.", "",
             "Values: share [95 % Wilson] (correct/items). *Kept*: of the stage-1 facts known after stage 1, "
             "those still known after stage 2 (teacher-forced exact match). *Generation*: the greedy continuation "
             f"(the answer's tokens + {spec['generation_tokens']}) begins with the answer at a word boundary: REMIX's "
             "metric without its requirement that the model then stop, which facts trained without an end marker "
             "never teach (the strict count is column `generation_stops` of remix/*/outcomes.parquet).", ""]
    for set_name, part in metrics.groupby("set", sort=False):
        lines += [f"## Set: {set_name}", "",
                  "| cell | known after stage 1 | kept after stage 2 | exact after stage 2 | generation after stage 1 "
                  "| generation after stage 2 | stage-2 rows learned | median emergence layer (s1 → s2) |",
                  "|---|---|---|---|---|---|---|---|"]
        for _, r in part.iterrows():
            def s(label):
                return fmt({k: r[f"{label}_{k}"] for k in ("k", "n", "share", "lo", "hi")})
            learned = "–" if r.stage2_rows != r.stage2_rows else f"{int(r.stage2_learned_k)}/{int(r.stage2_rows)}"
            lines.append(f"| {r.cell} | {s('stage1_known')} | {s('retention')} | {s('exact')} | {s('stage1_generation')} "
                         f"| {s('generation')} | {learned} | {_layer(r.emergence_after_stage1)} → {_layer(r.emergence_after_stage2)} |")
        fewest = part.exact_k.min()
        worst = part[part.exact_k == fewest].cell.tolist()
        lines += ["", f"Most forgetting: {', '.join(f'**{c}**' for c in worst)} ({int(fewest)}/{int(part.exact_n.iloc[0])} "
                  "stage-1 facts exact after stage 2).", ""]
        sub = tests[tests.set == set_name] if len(tests) else tests
        if len(sub):
            lines += ["Paired tests (exact McNemar on the same stage-1 facts after stage 2), cells one factor apart:", "",
                      "| factor | change | cells | exact match | p | generation | p |", "|---|---|---|---|---|---|---|"]
            for _, t in sub.iterrows():
                lines.append(f"| {FACTOR_TITLES[t.factor]} | {t['from']} → {t['to']} | {t.baseline} → {t.cell} "
                             f"| {t.exact_baseline}/{t.n} → {t.exact_cell}/{t.n} | {fmt_p(t.p_exact)} "
                             f"| {t.generation_baseline}/{t.n} → {t.generation_cell}/{t.n} | {fmt_p(t.p_generation)} |")
            lines.append("")
    lines += ["Figures: `figures/remix_retention.png` (kept after stage 2 per cell), `figures/remix_lens.png` "
              "(the layer from which each stage-1 answer is the logit lens's top token).", ""]
    return "\n".join(lines)


def _layer(value: float) -> str:
    return "–" if value != value else f"{value:.0f}"


def plot_retention(metrics: pd.DataFrame, dest: str) -> None:
    plt = pyplot()
    sets = list(dict.fromkeys(metrics.set))
    fig, axes = plt.subplots(1, len(sets), figsize=(1.0 + 1.1 * metrics.groupby("set").size().max(), 3.6), squeeze=False)
    for ax, set_name in zip(axes[0], sets):
        part = metrics[metrics.set == set_name]
        x = np.arange(len(part))
        for offset, (label, colour) in zip((-0.18, 0.18), (("retention", "tab:blue"), ("generation", "tab:orange"))):
            y = part[f"{label}_share"].to_numpy(float)
            err = np.vstack([y - part[f"{label}_lo"].to_numpy(float), part[f"{label}_hi"].to_numpy(float) - y])
            ax.bar(x + offset, y, 0.36, yerr=err, capsize=2, color=colour,
                   label="kept (exact match)" if label == "retention" else "generation exact match")
        ax.set_xticks(x, part.cell.tolist(), rotation=40, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"set {set_name}: stage-1 facts after stage 2", fontsize=9)
        ax.set_ylabel("share (95 % Wilson)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    save_figure(fig, dest)


def plot_lens(outcomes: pd.DataFrame, dest: str) -> None:
    plt = pyplot()
    groups, labels = [], []
    for (set_name, stage1), part in outcomes.groupby(["set", "stage1"], sort=False):
        for cell, sub in part.groupby("cell", sort=False):
            layers = sub.emergence_layer.dropna().to_numpy(float)
            groups.append(layers if len(layers) else np.array([np.nan]))
            labels.append(f"{set_name}: s1 {stage1}" + (" (after stage 1)" if cell == AFTER_STAGE1 else f" → {cell.split('/', 1)[1]}"))
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.32 * len(groups)))
    ax.boxplot([g[~np.isnan(g)] if np.isfinite(g).any() else [] for g in groups], vert=False, showmeans=True)
    ax.set_yticks(np.arange(1, len(labels) + 1), labels, fontsize=7)
    ax.set_xlabel("emergence layer: first layer from which the answer's first token stays the lens's top token")
    ax.set_title("Logit lens of the stage-1 facts", fontsize=9)
    save_figure(fig, dest)


def write_remix_report(outcome_paths: list[str], stage_paths: list[str], order: list[str], spec: dict, model: str,
                       out: dict) -> pd.DataFrame:
    outcomes = pd.concat([pd.read_parquet(p) for p in outcome_paths], ignore_index=True)
    stages = pd.concat([pd.read_parquet(p) for p in stage_paths], ignore_index=True)
    rank = {name: i for i, name in enumerate(order)}
    metrics = cell_metrics(outcomes, stages)
    metrics = metrics.assign(_r=metrics.cell.map(lambda c: rank.get(c, len(rank)))).sort_values(
        ["set", "_r"], kind="stable").drop(columns="_r").reset_index(drop=True)
    tests = comparisons(outcomes, order)
    write_parquet(metrics, out["metrics"])
    write_parquet(tests if len(tests) else pd.DataFrame({"set": pd.Series(dtype=str)}), out["comparisons"])
    write_text(metrics.to_csv(index=False), out["table"])
    plot_retention(metrics, out["retention"])
    plot_lens(outcomes, out["lens"])
    write_text(markdown(metrics, tests, spec, model), out["summary"])
    return metrics


__all__ = ["cell_metrics", "comparisons", "markdown", "one_factor_apart", "write_remix_report"]
