"""Collaborative editing: the merge rules side by side, per client and against the number of clients,
and multi-round forgetting with the fixed and the running covariance (rule ``merging_report``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.stats import mcnemar_exact, wilson
from workflow_scripts.io import write_text
from workflow_scripts.reports.plotting import pyplot, save_figure

RULE_ORDER = ("global", "collabedit", "ta", "ties", "sa")
RULE_TITLES = {"global": "GLOBAL (MEMIT on the union)", "collabedit": "CollabEdit", "ta": "task arithmetic",
               "ties": "TIES", "sa": "simple average"}
METRICS = {  # column -> (outcome metric, what it is)
    "efficacy": ("efficacy_score", "P(new) > P(true) on the edit prompt (ES)"),
    "paraphrase": ("paraphrase_score", "… on the paraphrase prompt (PS)"),
    "neighbourhood": ("neighbourhood_score", "neighbours keep P(true) > P(new) (NS)"),
    "exact": ("acc_new", "the new object is the exact greedy answer"),
    "exact_paraphrase": ("acc_gen", "… after the paraphrase"),
    "locality": ("locality", "neighbours' next token unchanged"),
    "retention": ("retention_old", "old facts K known before and still known"),
}
REFERENCE = "global"


def _share(correct: pd.Series) -> dict:
    k, n = int(correct.sum()), len(correct)
    low, high = wilson(k, n) if n else (np.nan, np.nan)
    return {"k": k, "n": n, "share": k / n if n else np.nan, "lo": low, "hi": high}


def _fmt(s: dict) -> str:
    return "–" if not s["n"] else f"{s['share']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}] ({s['k']}/{s['n']})"


def _p(p: float) -> str:
    return "–" if p != p else (f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}")


def merge_table(rows: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row per merge run (rule, clients): every metric's share with its count and interval, and
    the exact McNemar p-value against GLOBAL on the same items."""
    out = []
    ref = items[items.variant.isin(rows[rows.rule == REFERENCE].variant)]
    for r in rows.itertuples():
        mine = items[items.variant == r.variant]
        entry = {"rule": r.rule, "clients": int(r.clients), "variant": r.variant, "fold": int(r.fold),
                 "max_rel_diff_vs_global": getattr(r, "max_rel_diff_vs_global", np.nan)}
        for column, (metric, _) in METRICS.items():
            part = mine[(mine.metric == metric) & (mine.fold == r.fold)]
            s = _share(part.correct.astype(bool))
            entry.update({column: s["share"], f"{column}_k": s["k"], f"{column}_n": s["n"], f"{column}_lo": s["lo"],
                          f"{column}_hi": s["hi"]})
            other = ref[(ref.metric == metric) & (ref.fold == r.fold)].set_index(["case_id", "item"]).correct
            own = part.set_index(["case_id", "item"]).correct
            both = own.index.intersection(other.index)
            entry[f"{column}_vs_global_p"] = (mcnemar_exact(own[both].astype(bool).tolist(), other[both].astype(bool).tolist())
                                              ["p_value"] if len(both) and r.rule != REFERENCE else np.nan)
        out.append(entry)
    table = pd.DataFrame(out)
    order = {rule: i for i, rule in enumerate(RULE_ORDER)}
    return table.sort_values(["clients", "rule"], key=lambda c: c.map(order) if c.name == "rule" else c).reset_index(drop=True)


def per_client(rows: pd.DataFrame, items: pd.DataFrame, clients: int) -> pd.DataFrame:
    """Efficacy and exact match of each client's own facts, per rule, at ``clients`` clients."""
    from workflow_scripts.merging.clients import split_clients

    out = []
    for r in rows[rows.clients == clients].itertuples():
        mine = items[(items.variant == r.variant) & (items.fold == r.fold)]
        edited = sorted(mine[mine.metric == "efficacy_score"].case_id.unique())
        for i, part in enumerate(split_clients(edited, clients, int(getattr(r, "split_seed", 0) or 0)), start=1):
            entry = {"rule": r.rule, "client": i, "facts": len(part)}
            for column in ("efficacy", "exact"):
                metric = METRICS[column][0]
                s = _share(mine[(mine.metric == metric) & mine.case_id.isin(part)].correct.astype(bool))
                entry.update({column: s["share"], f"{column}_cell": f"{s['k']}/{s['n']} [{s['lo']:.2f}, {s['hi']:.2f}]"})
            out.append(entry)
    return pd.DataFrame(out)


def round_curves(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per trajectory and round: accuracy of round 1's edits, of the latest round's, of all edits so
    far, and retention of the old facts, each with its count and interval."""
    out = []
    for (rule, alpha, t), part in outcomes.groupby(["rule", "alpha", "after_round"], sort=True):
        for metric in ("acc_new", "efficacy_score", "retention_old"):
            m = part[part.metric == metric]
            groups = {"old facts (K)": m} if metric == "retention_old" else {
                "round 1 edits": m[m.edited_in == 1], "latest round's edits": m[m.edited_in == t], "all edits so far": m}
            for group, g in groups.items():
                s = _share(g.correct.astype(bool))
                out.append({"rule": rule, "alpha": alpha, "after_round": int(t), "metric": metric, "group": group, **s})
    return pd.DataFrame(out)


def alpha_contrasts(outcomes: pd.DataFrame) -> pd.DataFrame:
    """At the last round, round 1's edits (exact match and efficacy) and the old facts under each pair
    of state weights of one rule: exact McNemar on the same items."""
    out = []
    last = int(outcomes.after_round.max())
    end = outcomes[outcomes.after_round == last]
    for rule, part in end.groupby("rule"):
        alphas = sorted(part.alpha.unique(), key=lambda a: (a == "lambda", float(a) if a != "lambda" else 0.0))
        for i, a in enumerate(alphas):
            for b in alphas[i + 1:]:
                for metric, group in (("acc_new", 1), ("efficacy_score", 1), ("retention_old", 0)):
                    x = part[(part.alpha == a) & (part.metric == metric) & (part.edited_in == group)].set_index("case_id").correct
                    y = part[(part.alpha == b) & (part.metric == metric) & (part.edited_in == group)].set_index("case_id").correct
                    both = x.index.intersection(y.index)
                    if not len(both):
                        continue
                    test = mcnemar_exact(x[both].astype(bool).tolist(), y[both].astype(bool).tolist())
                    out.append({"rule": rule, "metric": metric, "items": "round 1 edits" if group else "old facts (K)",
                                "alpha_a": a, "alpha_b": b, "n": len(both), "a": float(x[both].mean()),
                                "b": float(y[both].mean()), "only_a": test["only_a"], "only_b": test["only_b"],
                                "p_value": test["p_value"]})
    return pd.DataFrame(out)


def plot_clients(table: pd.DataFrame, dest: str, model: str) -> None:
    plt = pyplot()
    panels = ("efficacy", "exact", "neighbourhood", "locality")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, column in zip(axes[0], panels):
        for rule in RULE_ORDER:
            part = table[table.rule == rule].sort_values("clients")
            if part.empty:
                continue
            y = part[column].to_numpy(float)
            ax.errorbar(part.clients, y, yerr=[y - part[f"{column}_lo"], part[f"{column}_hi"] - y], marker="o",
                        capsize=3, ls="--" if rule == "collabedit" else "-", label=RULE_TITLES[rule])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(table.clients.unique()), [str(c) for c in sorted(table.clients.unique())])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("clients (the same facts, dealt among them)")
        ax.set_title(METRICS[column][1], fontsize=8)
    axes[0][0].set_ylabel("share (95 % Wilson)")
    axes[0][0].legend(fontsize=7)
    n = int(table.efficacy_n.max()) if len(table) else 0
    fig.suptitle(f"Merging clients' MEMIT edits of {n} counterfacts ({model})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    save_figure(fig, dest)


def plot_rounds(curves: pd.DataFrame, dest: str, model: str) -> None:
    plt = pyplot()
    groups = ("round 1 edits", "all edits so far", "old facts (K)")
    fig, axes = plt.subplots(1, len(groups), figsize=(4.4 * len(groups), 3.6), squeeze=False)
    for ax, group in zip(axes[0], groups):
        metric = "retention_old" if group == "old facts (K)" else "acc_new"
        part = curves[(curves.group == group) & (curves.metric == metric)]
        for (rule, alpha), line in part.groupby(["rule", "alpha"]):
            y = line.share.to_numpy(float)
            ax.errorbar(line.after_round, y, yerr=[y - line.lo, line.hi - y], marker="o", capsize=3,
                        label=f"{RULE_TITLES.get(rule, rule)}, α = {alpha}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(sorted(curves.after_round.unique()))
        ax.set_xlabel("after round")
        ax.set_title(f"{group}: {'still known' if metric == 'retention_old' else 'exact match of the new object'}", fontsize=8)
    axes[0][0].set_ylabel("share (95 % Wilson)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Multi-round collaborative editing: fixed (α = 0) vs running covariance ({model})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    save_figure(fig, dest)


def challenge_lines(outcomes: pd.DataFrame) -> list[str]:
    """The overlap and conflict experiments as markdown: shares with counts and intervals, exact
    McNemar tests between conditions on the same facts."""
    lines = ["## Knowledge overlap and conflict", ""]
    ov = outcomes[outcomes.experiment == "overlap"]
    if len(ov):
        lines += ["**Overlap**: one client's facts submitted again by a second client. Exact match of the "
                  "new object for the repeated facts and the others, and old facts still known; separate → with the "
                  "repeat (p: exact McNemar, repeated facts, separate vs repeated).", "",
                  "| rule | repeated facts: separate | … repeated | other facts: separate | … repeated | old facts: separate | … repeated | p |",
                  "|---|---|---|---|---|---|---|---|"]
        for rule in RULE_ORDER:
            part = ov[ov.rule == rule]
            if part.empty:
                continue
            ex = part[part.measure == "exact"]
            rep = set(ex[ex.group == "repeated"].case_id)
            cells = []
            for ids_in in (True, False):
                for cond in ("separate", "overlap"):
                    sel = ex[(ex.condition == cond) & (ex.case_id.isin(rep) == ids_in)]
                    cells.append(_fmt(_share(sel.correct)))
            for cond in ("separate", "overlap"):
                cells.append(_fmt(_share(part[(part.measure == "old_known") & (part.condition == cond)].correct)))
            a = ex[(ex.condition == "separate") & ex.case_id.isin(rep)].set_index("case_id").correct
            b = ex[(ex.condition == "overlap") & ex.case_id.isin(rep)].set_index("case_id").correct
            both = a.index.intersection(b.index)
            p = mcnemar_exact(a[both].tolist(), b[both].tolist())["p_value"] if len(both) else np.nan
            lines.append(f"| {RULE_TITLES[rule]} | " + " | ".join(cells) + f" | {_p(p)} |")
        det = outcomes[outcomes.experiment == "overlap_detection"]
        if len(det):
            w = det[det.condition == "already written"].value.to_numpy(float)
            n = det[det.condition == "new"].value.to_numpy(float)
            auc = float(np.mean([[x < y for y in n] for x in w])) if len(w) and len(n) else np.nan
            lines += ["", f"**Detecting a repeat by its residual.** After GLOBAL wrote half of the facts, each fact's "
                      f"residual ‖z* − h_L‖ was measured again on the edited model, relative to the unedited model's: "
                      f"already written {np.mean(w):.2f} (range {w.min():.2f}–{w.max():.2f}, n = {len(w)}), new "
                      f"{np.mean(n):.2f} ({n.min():.2f}–{n.max():.2f}, n = {len(n)}); a written fact has the smaller "
                      f"ratio in {auc:.2f} of all (written, new) pairs.", ""]
    cf = outcomes[outcomes.experiment == "conflict"]
    if len(cf):
        n_facts = cf.case_id.nunique()
        lines += [f"**Conflict**: two clients rewrite the same {n_facts} prompts, client A with the fact's counterfactual "
                  "object, client B with another object of the same relation; then B also submits the fact's "
                  "paraphrase prompt with its object (augmented). Exact match of A's and B's object, and P(A) > P(B) "
                  "(p: exact McNemar on B's exact match, plain vs augmented).", "",
                  "| rule | condition | A exact | B exact | A beats B | p |", "|---|---|---|---|---|---|"]
        for rule in RULE_ORDER:
            part = cf[cf.rule == rule]
            if part.empty:
                continue
            for cond in ("conflict", "conflict, B augmented"):
                c = part[part.condition == cond]
                cells = [_fmt(_share(c[c.measure == m].correct)) for m in ("exact_a", "exact_b", "a_beats_b")]
                p = np.nan
                if cond != "conflict":
                    x = part[(part.condition == "conflict") & (part.measure == "exact_b")].set_index("case_id").correct
                    y = c[c.measure == "exact_b"].set_index("case_id").correct
                    both = x.index.intersection(y.index)
                    p = mcnemar_exact(x[both].tolist(), y[both].tolist())["p_value"] if len(both) else np.nan
                lines.append(f"| {RULE_TITLES[rule]} | {cond} | " + " | ".join(cells) + f" | {_p(p)} |")
        lines.append("")
    return lines


def write_merging_report(row_paths: list[str], item_paths: list[str], round_item_paths: list[str],
                         round_paths: list[str], model: str, out: dict, challenge_paths: list[str] = ()) -> None:
    rows = pd.concat([pd.read_parquet(p) for p in row_paths], ignore_index=True) if row_paths else pd.DataFrame()
    items = pd.concat([pd.read_parquet(p) for p in item_paths], ignore_index=True) if item_paths else pd.DataFrame()
    table = merge_table(rows, items) if len(rows) else pd.DataFrame()
    table.to_csv(out["table"], index=False)
    lines = [f"# Collaborative editing: merging clients' edits ({model})", ""]
    if len(table):
        main_n = int(table.clients.mode().iloc[0])
        main = table[table.clients == main_n]
        lines += [f"The collaborative_edit scenario: {int(main.efficacy_n.max())} facts the pre-trained model knows "
                  f"(slice E) are rewritten with counterfactual objects by {main_n} clients, each editing its own copy "
                  "with frozen MEMIT (keys and residuals from the unedited model); the server merges the deltas. "
                  "Share [95 % Wilson interval] (correct/items); p = exact McNemar test against GLOBAL on the same items.",
                  "", "| rule | " + " | ".join(METRICS) + " | p vs GLOBAL: ES / exact / retention / locality |",
                  "|---|" + "---|" * (len(METRICS) + 1)]
        for r in main.to_dict("records"):
            cells = [_fmt({"k": r[f"{c}_k"], "n": r[f"{c}_n"], "share": r[c], "lo": r[f"{c}_lo"], "hi": r[f"{c}_hi"]})
                     for c in METRICS]
            tests = " / ".join(_p(r[f"{c}_vs_global_p"]) for c in ("efficacy", "exact", "retention", "locality"))
            lines.append(f"| {RULE_TITLES[r['rule']]} | " + " | ".join(cells) + f" | {tests} |")
        lines += ["", "Columns: " + "; ".join(f"**{c}** = {d}" for c, (_, d) in METRICS.items()) + ".", ""]
        collab, glob = table[table.rule == "collabedit"], table[table.rule == "global"]
        if len(collab) and len(glob):
            g = glob.iloc[0]
            gaps = [abs(float(r[c]) - float(g[c])) for r in collab.to_dict("records") for c in METRICS
                    if r[f"{c}_n"] and g[f"{c}_n"]]
            lines += [f"**CollabEdit vs GLOBAL.** Largest relative difference of the merged weight deltas: "
                      f"{collab.max_rel_diff_vs_global.max():.1e} (float64, over layers and client counts "
                      f"{sorted(int(c) for c in collab.clients.unique())}); largest difference of any metric above: {max(gaps):.3g}.", ""]
        if table.clients.nunique() > 1:
            lines += ["**Against the number of clients** (the same facts dealt among more clients; efficacy / exact match):", "",
                      "| rule | " + " | ".join(f"{c} clients" for c in sorted(table.clients.unique())) + " |",
                      "|---|" + "---|" * table.clients.nunique()]
            for rule in RULE_ORDER:
                part = table[table.rule == rule].set_index("clients")
                if part.empty:
                    continue
                cells = [f"{part.efficacy[c]:.2f} / {part.exact[c]:.2f}" if c in part.index else "–"
                         for c in sorted(table.clients.unique())]
                lines.append(f"| {RULE_TITLES[rule]} | " + " | ".join(cells) + " |")
            lines.append("")
        clients = per_client(rows.assign(clients=rows.clients.astype(int)), items, main_n)
        if len(clients):
            lines += [f"**Per client** ({main_n} clients; efficacy and exact match of each client's own facts, "
                      "correct/items [95 % Wilson]):", "",
                      "| rule | " + " | ".join(f"client {i}" for i in sorted(clients.client.unique())) + " |",
                      "|---|" + "---|" * clients.client.nunique()]
            for rule in RULE_ORDER:
                part = clients[clients.rule == rule]
                if len(part):
                    lines.append(f"| {RULE_TITLES[rule]} | " + " | ".join(
                        f"ES {c.efficacy_cell}, exact {c.exact_cell}" for c in part.itertuples()) + " |")
            lines.append("")
        plot_clients(table, out["clients_figure"], model)
    else:
        lines += _not_configured(out["clients_figure"], "merge runs", "updates.scenarios.collaborative_edit")
    if round_item_paths:
        outcomes = pd.concat([pd.read_parquet(p) for p in round_item_paths], ignore_index=True)
        records = pd.concat([pd.read_parquet(p) for p in round_paths], ignore_index=True)
        curves = round_curves(outcomes)
        last = int(curves.after_round.max())
        lines += ["## Multi-round editing: forgetting of earlier rounds", "",
                  f"The same facts E dealt into {last} rounds of {int(records.clients.iloc[0])} clients "
                  f"({int(records.edits.iloc[0])} edits a round); each round is measured on the current model and "
                  "merged against the state P_t (P_1 = λC, P_t+1 = P_t + α ΣS_i). Exact match of the new object "
                  "(share [95 % Wilson], correct/items):", "",
                  "| rule | α | round 1 edits after round 1 | … after round " + str(last)
                  + " | all edits after round " + str(last) + " | old facts after round " + str(last)
                  + " | max rel. diff vs GLOBAL |", "|---|---|---|---|---|---|---|"]
        for (rule, alpha), part in curves.groupby(["rule", "alpha"], sort=False):
            def cell(t, group, metric="acc_new"):
                rows_ = part[(part.after_round == t) & (part.group == group) & (part.metric == metric)]
                return _fmt(rows_.iloc[0].to_dict()) if len(rows_) else "–"
            rec = records[(records.rule == rule) & (records.alpha.astype(str) == str(alpha))]
            diff = rec.max_rel_diff_vs_global.max() if "max_rel_diff_vs_global" in rec else np.nan
            lines.append(f"| {RULE_TITLES.get(rule, rule)} | {alpha} | {cell(1, 'round 1 edits')} | {cell(last, 'round 1 edits')} "
                         f"| {cell(last, 'all edits so far')} | {cell(last, 'old facts (K)', 'retention_old')} | "
                         f"{'–' if diff != diff else f'{diff:.1e}'} |")
        contrasts = alpha_contrasts(outcomes)
        if len(contrasts):
            lines += ["", f"Paired tests after round {last} (exact McNemar on the same items):", ""]
            for c in contrasts.itertuples():
                lines.append(f"- {RULE_TITLES.get(c.rule, c.rule)}, {c.items}, {c.metric}: α = {c.alpha_a} "
                             f"{c.a:.2f} vs α = {c.alpha_b} {c.b:.2f} (n = {c.n}; {c.only_a} vs {c.only_b} discordant; "
                             f"p = {_p(c.p_value)})")
        lines.append("")
        plot_rounds(curves, out["rounds_figure"], model)
    else:
        lines += _not_configured(out["rounds_figure"], "multi-round trajectories", "merging.rounds")
    if challenge_paths:
        lines += challenge_lines(pd.concat([pd.read_parquet(p) for p in challenge_paths], ignore_index=True))
    write_text("\n".join(lines), out["summary"])


def _not_configured(figure: str, what: str, key: str) -> list[str]:
    """A placeholder figure saying so, and the report's line for it."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.text(0.5, 0.5, f"no {what} configured", ha="center", va="center")
    ax.axis("off")
    save_figure(fig, figure)
    return [f"No {what} are configured ({key}).", ""]
