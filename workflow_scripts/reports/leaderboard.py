"""The leaderboard: every run row in one table, per scenario and setting, with intervals and paired tests.

For each scenario, each method and variant: retention of the old facts known just before the update,
acquisition of the new ones, paraphrase generalisation and locality (plus the CounterFact-style
scores), each pooled over folds with its count and 95 % Wilson interval. Each setting is compared with
the scenario's reference setting (``updates.reference``, full fine-tuning by default) on the same
items by an exact McNemar test; a difference is marked significant only at p < 0.05.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.stats import mcnemar_exact, wilson
from workflow_scripts.io import atomic_path, write_parquet, write_text
from workflow_scripts.reports.plotting import pyplot, save_figure
from workflow_scripts.scenarios.design import SCENARIOS, controlled_pairs

COLUMNS = {  # leaderboard column -> metric in the run rows / items
    "retention": "retention_old",
    "acquisition": "acc_new",
    "generalisation": "acc_gen",
    "locality": "locality",
    "efficacy": "efficacy_score",
    "paraphrase": "paraphrase_score",
    "neighbourhood": "neighbourhood_score",
}
TESTED = ("retention", "acquisition")  # paired against the reference
KEY = ["scenario", "method", "variant"]
ALPHA = 0.05


def _outcomes(items: pd.DataFrame, key: tuple, metric: str) -> pd.Series:
    part = items[(items.scenario == key[0]) & (items.method == key[1]) & (items.variant == key[2])
                 & (items.metric == metric)]
    return part.set_index(["fold", "case_id", "item"]).correct.astype(bool)


def leaderboard(rows: pd.DataFrame, items: pd.DataFrame, reference: dict) -> pd.DataFrame:
    out = []
    for key, part in rows.groupby(KEY, sort=False):
        scenario = key[0]
        entry = {"scenario": scenario, "paper": SCENARIOS[scenario].paper, "method": key[1], "variant": key[2],
                 "arm": part.arm.iloc[0], "folds": part.fold.nunique()}
        for column, metric in COLUMNS.items():
            outcomes = _outcomes(items, key, metric)
            k, n = int(outcomes.sum()), len(outcomes)
            low, high = wilson(k, n)
            entry.update({column: k / n if n else np.nan, f"{column}_n": n, f"{column}_lo": low, f"{column}_hi": high})
        ref_key = (scenario, reference["method"], reference["variant"])
        is_ref = key == ref_key
        for column in TESTED:
            metric = COLUMNS[column]
            mine, ref = _outcomes(items, key, metric), _outcomes(items, ref_key, metric)
            both = mine.index.intersection(ref.index)
            if is_ref or not len(both):
                entry.update({f"{column}_vs_ref_p": np.nan, f"{column}_vs_ref": ""})
                continue
            test = mcnemar_exact(mine[both].tolist(), ref[both].tolist())
            diff = (test["only_a"] - test["only_b"]) / len(both)
            entry[f"{column}_vs_ref_p"] = test["p_value"]
            entry[f"{column}_vs_ref"] = ("higher" if diff > 0 else "lower") if test["p_value"] < ALPHA else "n.s."
        entry.update(matched_acquisition(part))
        entry["reference"] = is_ref
        out.append(entry)
    return pd.DataFrame(out)


def matched_acquisition(part: pd.DataFrame) -> dict:
    """Retention at matched acquisition (the first epoch with at least 90 % of the update learned),
    pooled over the folds that got there: share, count, Wilson interval, mean epoch, folds reached."""
    out = {"learned_epoch": np.nan, "retention_at_learned": np.nan, "retention_at_learned_n": 0,
           "retention_at_learned_lo": np.nan, "retention_at_learned_hi": np.nan, "learned_folds": 0}
    if "retention_at_learned" not in part:
        return out
    reached = part[part.retention_at_learned.notna()]
    n = int(reached.n_retained_base.sum()) if len(reached) else 0
    k = int((reached.retention_at_learned * reached.n_retained_base).round().sum()) if n else 0
    low, high = wilson(k, n)
    out.update({"learned_epoch": float(reached.learned_epoch.mean()) if len(reached) else np.nan,
                "retention_at_learned": k / n if n else np.nan, "retention_at_learned_n": n,
                "retention_at_learned_lo": low, "retention_at_learned_hi": high, "learned_folds": len(reached)})
    return out


def paired_scenarios(rows: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Each scenario against its control (e.g. dissonant_update vs matched_control), for every setting
    both ran: retention of the same old facts, exact McNemar test (and the share of each)."""
    out = []
    for scenario, control in controlled_pairs():
        both = (rows[rows.scenario == scenario][["method", "variant"]].drop_duplicates()
                .merge(rows[rows.scenario == control][["method", "variant"]].drop_duplicates()))
        for method, variant in both.itertuples(index=False):
            a = _outcomes(items, (scenario, method, variant), "retention_old")
            b = _outcomes(items, (control, method, variant), "retention_old")
            common = a.index.intersection(b.index)
            if not len(common):
                continue
            test = mcnemar_exact(a[common].tolist(), b[common].tolist())
            out.append({"scenario": scenario, "control": control, "method": method, "variant": variant,
                        "n": len(common), "retention": float(a[common].mean()),
                        "retention_control": float(b[common].mean()), "p_value": test["p_value"],
                        "verdict": ("lower" if a[common].mean() < b[common].mean() else "higher")
                        if test["p_value"] < ALPHA else "not resolved at this size"})
    return pd.DataFrame(out)


# (strategy a, strategy b): the paired contrasts that tie a gain to the choice of neurons
CONTRASTS = (("plastic", "random"), ("stubborn", "plastic"), ("specific", "plastic"), ("plastic", "all_tracked"),
             ("random", "all_tracked"), ("lottery", "random"), ("lottery", "non_lottery"))


def strategy_contrasts(rows: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Neuron strategies against each other within a scenario, on the same items: same k (any k
    against ``all_tracked``) and otherwise the same training settings; retention and acquisition,
    exact McNemar test each."""
    need = {"strategy", "k_fraction", "lr_ratio", "epochs"}
    if rows.empty or not need <= set(rows.columns):
        return pd.DataFrame()
    neurons = rows[rows.strategy.notna()].drop_duplicates(KEY)
    settings = ["lr_ratio", "epochs"] + (["batch_size"] if "batch_size" in rows else [])
    out = []
    for scenario, part in neurons.groupby("scenario", sort=False):
        for a_name, b_name in CONTRASTS:
            for a in part[part.strategy == a_name].itertuples():
                for b in part[part.strategy == b_name].itertuples():
                    if any(getattr(a, c) != getattr(b, c) for c in settings):
                        continue
                    if b_name != "all_tracked" and not np.isclose(a.k_fraction, b.k_fraction):
                        continue
                    entry = {"scenario": scenario, "a": a.variant, "b": b.variant}
                    for column in TESTED:
                        metric = COLUMNS[column]
                        x = _outcomes(items, (scenario, "neurons", a.variant), metric)
                        y = _outcomes(items, (scenario, "neurons", b.variant), metric)
                        common = x.index.intersection(y.index)
                        test = mcnemar_exact(x[common].tolist(), y[common].tolist()) if len(common) else {"p_value": np.nan}
                        entry.update({f"{column}_n": len(common),
                                      f"{column}_a": float(x[common].mean()) if len(common) else np.nan,
                                      f"{column}_b": float(y[common].mean()) if len(common) else np.nan,
                                      f"{column}_p": test["p_value"]})
                    out.append(entry)
    return pd.DataFrame(out)


CONTRASTS_INTRO = ("Neuron strategies against each other in the same scenario, at the same k (any k against "
                   "all_tracked) and the same training settings, on the same items: share of a vs share of b "
                   "(items), exact McNemar p; a difference is called only at p < " + str(ALPHA) + ".")


def contrasts_table(contrasts: pd.DataFrame) -> pd.DataFrame:
    def cell(a, b, n, p):
        verdict = ("a higher" if a > b else "b higher") if p < ALPHA else "not resolved"
        return f"{a:.2f} vs {b:.2f} ({n}), p = {p:.3g}: {verdict}"

    return pd.DataFrame({
        "scenario": contrasts.scenario, "a": contrasts.a, "b": contrasts.b,
        **{c: [cell(*v) if n else "–" for v, n in zip(zip(contrasts[f"{c}_a"], contrasts[f"{c}_b"], contrasts[f"{c}_n"],
                                                            contrasts[f"{c}_p"]), contrasts[f"{c}_n"])]
           for c in TESTED}})


def _cell(value, n, low, high) -> str:
    if not n:
        return "–"
    return f"{value:.2f} [{low:.2f}, {high:.2f}] ({n})"


INTRO = ("Every run, per scenario: share [95 % Wilson interval] (items), pooled over folds. "
             "retention = old facts known just before the update and still known; acquisition = the update's "
             "facts learned; generalisation = their paraphrases; locality = neighbourhood prompts whose "
             "next-token prediction is unchanged. vs ref: exact McNemar test against "
             "{ref} on the same items (higher/lower only at p < " + str(ALPHA) + "; "
             "n.s. = not resolved at this size). Retention at 90 % learned: retention at the first epoch where at least 90 % of "
             "the update is learned (matched acquisition; scenarios with per-epoch curves), pooled over the folds that got "
             "there, the mean epoch and how many folds got there.")


def display_table(part: pd.DataFrame) -> pd.DataFrame:
    """One scenario's rows as people read them: shares with intervals and counts, tests, matched acquisition."""
    return pd.DataFrame({
            "method": part.method, "variant": part.variant,
            **{c: [_cell(*v) for v in zip(part[c], part[f"{c}_n"], part[f"{c}_lo"], part[f"{c}_hi"])]
               for c in ("retention", "acquisition", "generalisation", "locality")},
            **{f"{c} vs ref (p)": [f"{r} ({p:.3g})" if r else "reference" if ref else "–"
                                   for r, p, ref in zip(part[f"{c}_vs_ref"], part[f"{c}_vs_ref_p"], part.reference)]
               for c in TESTED},
            "retention at 90 % learned": [
                "not reached" if np.isnan(r) else f"{_cell(r, n, lo, hi)}, epoch {e:.1f}, {f}/{t} folds"
                for r, n, lo, hi, e, f, t in zip(part.retention_at_learned, part.retention_at_learned_n,
                                                 part.retention_at_learned_lo, part.retention_at_learned_hi,
                                                 part.learned_epoch, part.learned_folds, part.folds)],
        })


PAIRS_INTRO = ("Each scenario against its control, same method and setting: retention of the same old facts "
               "(known just before both updates), exact McNemar test.")


def pairs_table(pairs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "scenario vs control": [f"{a} vs {b}" for a, b in zip(pairs.scenario, pairs.control)],
        "method": pairs.method, "variant": pairs.variant, "facts": pairs.n,
        "retention": [f"{a:.2f} vs {b:.2f}" for a, b in zip(pairs.retention, pairs.retention_control)],
        "p": [f"{p:.3g}" for p in pairs.p_value], "verdict": pairs.verdict})


REMIX_INTRO = ("REMIX (report/remix.md): full fine-tuning memorises the stage-1 facts (stage 1, with or without "
               "random-word rows mixed in), then trains on other data (stage 2: new facts, prose, code or arithmetic, "
               "with or without generic prose mixed in). Kept: of the stage-1 facts known after stage 1, those "
               "still known after stage 2; p: exact McNemar on the same facts against the cell one factor away "
               "from the baseline (stage 1 without mixing, new facts without mixing).")


def remix_table(metrics: pd.DataFrame, tests: pd.DataFrame | None = None) -> pd.DataFrame:
    """The REMIX cells as leaderboard rows: retention (kept), exact and generation exact match after stage 2."""
    base = metrics.cell.iloc[0] if len(metrics) else None
    p_of = {}
    if tests is not None and len(tests):
        p_of = {(t.set, t.cell): t.p_exact for t in tests.itertuples() if t.baseline == base}

    def cell(r, label):
        k, n = int(r[f"{label}_k"]), int(r[f"{label}_n"])
        return "–" if not n else f"{k / n:.2f} [{r[f'{label}_lo']:.2f}, {r[f'{label}_hi']:.2f}] ({k}/{n})"

    return pd.DataFrame({
        "set": metrics.set, "stage 1": metrics.stage1, "stage 2": metrics.stage2, "stage-2 mixing": metrics.mixing,
        "known after stage 1": [cell(r, "stage1_known") for _, r in metrics.iterrows()],
        "kept after stage 2": [cell(r, "retention") for _, r in metrics.iterrows()],
        "generation exact match": [cell(r, "generation") for _, r in metrics.iterrows()],
        "p": ["ref" if r.cell == base else (f"{p_of[(r.set, r.cell)]:.2g}" if (r.set, r.cell) in p_of else "–")
              for _, r in metrics.iterrows()]})


def markdown(board: pd.DataFrame, reference: dict, pairs: pd.DataFrame | None = None,
             contrasts: pd.DataFrame | None = None, model: str = "", remix: pd.DataFrame | None = None) -> str:
    lines = ["# Leaderboard", "", *([f"Model: {model}.", ""] if model else []),
             INTRO.format(ref=f"{reference['method']}/{reference['variant']}"), ""]
    for scenario, part in board.groupby("scenario", sort=False):
        s = SCENARIOS[scenario]
        lines += [f"## {scenario} ({s.paper}): {s.title}", "",
                  display_table(part).to_markdown(index=False, disable_numparse=True), ""]
    if pairs is not None and len(pairs):
        lines += ["## Scenario against its control", "", PAIRS_INTRO, "",
                  pairs_table(pairs).to_markdown(index=False, disable_numparse=True), ""]
    if contrasts is not None and len(contrasts):
        lines += ["## Neuron strategies against each other", "", CONTRASTS_INTRO, "",
                  contrasts_table(contrasts).to_markdown(index=False, disable_numparse=True), ""]
    if remix is not None and len(remix):
        lines += ["## REMIX: memorised facts after further training", "", REMIX_INTRO, "",
                  remix.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(lines)


def html(board: pd.DataFrame, reference: dict, pairs: pd.DataFrame | None = None,
         contrasts: pd.DataFrame | None = None, model: str = "", remix: pd.DataFrame | None = None) -> str:
    """A self-contained HTML page of the leaderboard (the report shows it in place)."""
    import html as html_escape

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Leaderboard</title><style>"
             "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}</style></head><body>",
             "<h1>Leaderboard</h1>", *([f"<p>Model: {html_escape.escape(model)}.</p>"] if model else []),
             f"<p>{html_escape.escape(INTRO.format(ref=reference['method'] + '/' + reference['variant']))}</p>"]
    for scenario, part in board.groupby("scenario", sort=False):
        s = SCENARIOS[scenario]
        parts.append(f"<h2>{html_escape.escape(f'{scenario} ({s.paper}): {s.title}')}</h2>")
        parts.append(display_table(part).to_html(index=False, border=0))
    if pairs is not None and len(pairs):
        parts += ["<h2>Scenario against its control</h2>", f"<p>{html_escape.escape(PAIRS_INTRO)}</p>",
                  pairs_table(pairs).to_html(index=False, border=0)]
    if contrasts is not None and len(contrasts):
        parts += ["<h2>Neuron strategies against each other</h2>", f"<p>{html_escape.escape(CONTRASTS_INTRO)}</p>",
                  contrasts_table(contrasts).to_html(index=False, border=0)]
    if remix is not None and len(remix):
        parts += ["<h2>REMIX: memorised facts after further training</h2>", f"<p>{html_escape.escape(REMIX_INTRO)}</p>",
                  remix.to_html(index=False, border=0)]
    parts.append("</body></html>")
    return "\n".join(parts)


def plot_pareto(board: pd.DataFrame, dest: str) -> None:
    """Retention against acquisition with Wilson intervals, one panel per scenario."""
    plt = pyplot()
    scenarios = list(dict.fromkeys(board.scenario))
    fig, axes = plt.subplots(1, max(1, len(scenarios)), figsize=(4.4 * max(1, len(scenarios)), 4.2), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        part = board[board.scenario == scenario]
        for _, r in part.iterrows():
            xerr = [[r.acquisition - r.acquisition_lo], [r.acquisition_hi - r.acquisition]]
            yerr = [[r.retention - r.retention_lo], [r.retention_hi - r.retention]]
            ax.errorbar([r.acquisition], [r.retention], xerr=xerr, yerr=yerr, fmt="o", capsize=2, alpha=0.8,
                        label=f"{r.method}/{r.variant}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("acquisition (update facts learned)")
        ax.set_ylabel("retention (old facts kept)")
        ax.set_title(f"{scenario} ({SCENARIOS[scenario].paper})", fontsize=9)
        ax.legend(fontsize=5)
    fig.suptitle("Retention x acquisition per scenario (95 % Wilson intervals; upper right is best)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, dest)


def write_leaderboard(row_paths: list[str], item_paths: list[str], reference: dict, out: dict,
                      model: str = "", remix_paths: tuple[str, str] | None = None) -> pd.DataFrame:
    """``remix_paths``: REMIX's cell metrics and paired tests (rule remix_report), shown as their own section."""
    rows = pd.concat([pd.read_parquet(p) for p in row_paths], ignore_index=True)
    items = pd.concat([pd.read_parquet(p) for p in item_paths], ignore_index=True)
    board = leaderboard(rows, items, reference)
    pairs = paired_scenarios(rows, items)
    contrasts = strategy_contrasts(rows, items)
    write_parquet(board, out["table"])
    with atomic_path(out["csv"]) as tmp:
        board.to_csv(tmp, index=False)
    remix = (remix_table(pd.read_parquet(remix_paths[0]), pd.read_parquet(remix_paths[1]))
             if remix_paths else None)
    write_text(markdown(board, reference, pairs, contrasts, model, remix), out["summary"])
    if "html" in out:
        write_text(html(board, reference, pairs, contrasts, model, remix), out["html"])
    plot_pareto(board, out["pareto"])
    return board
