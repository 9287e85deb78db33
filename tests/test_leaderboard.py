"""The leaderboard's numbers: pooled shares with Wilson intervals, and paired tests on the same items."""

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.reports.leaderboard import (leaderboard, markdown, paired_scenarios,
                                                  strategy_contrasts)

SETTINGS = {  # variant -> (method, strategy, k_fraction)
    "default": ("full", None, 1.0),
    "plastic_k0.2": ("neurons", "plastic", 0.2),
    "random_k0.2": ("neurons", "random", 0.2),
    "random_k0.05": ("neurons", "random", 0.05),
    "all_tracked_k1": ("neurons", "all_tracked", 1.0),
}


def rows_and_items(kept: dict[tuple[str, str], list[int]], folds=(0, 1), n=20):
    """Runs of two scenarios; ``kept[(scenario, variant)]`` = the old facts retained (same ids in both folds)."""
    rows, items = [], []
    for (scenario, variant), retained in kept.items():
        method, strategy, k = SETTINGS[variant]
        for fold in folds:
            rows.append({"scenario": scenario, "method": method, "variant": variant, "fold": fold, "arm": strategy or method,
                         "strategy": strategy, "k_fraction": k, "lr_ratio": 1.0, "epochs": 10, "batch_size": 16,
                         "learned_epoch": 3.0 + fold, "retention_at_learned": 0.5 if fold == 0 else np.nan,
                         "n_retained_base": n})
            for cid in range(n):
                items.append({"scenario": scenario, "method": method, "variant": variant, "fold": fold, "case_id": cid,
                              "item": 0, "metric": "retention_old", "correct": cid in retained})
                items.append({"scenario": scenario, "method": method, "variant": variant, "fold": fold, "case_id": 100 + cid,
                              "item": 0, "metric": "acc_new", "correct": True})
    return pd.DataFrame(rows), pd.DataFrame(items)


ALL = list(range(20))


def test_shares_pool_folds_with_wilson_intervals_and_mcnemar_against_the_reference():
    rows, items = rows_and_items({("nondissonant_update", "default"): ALL[:8],
                                  ("nondissonant_update", "plastic_k0.2"): ALL[:19]})
    board = leaderboard(rows, items, {"method": "full", "variant": "default"}).set_index("variant")
    assert board.loc["default", "retention"] == pytest.approx(0.4) and board.loc["default", "retention_n"] == 40
    assert board.loc["plastic_k0.2", "retention_lo"] < 0.95 < board.loc["plastic_k0.2", "retention_hi"]
    # 22 discordant pairs (11 facts x 2 folds), all one way: p = 2 * 0.5^22
    assert board.loc["plastic_k0.2", "retention_vs_ref_p"] == pytest.approx(2 * 0.5**22)
    assert board.loc["plastic_k0.2", "retention_vs_ref"] == "higher"
    assert board.loc["plastic_k0.2", "acquisition_vs_ref"] == "n.s."  # identical outcomes
    assert "0.95 [" in markdown(board.reset_index(), {"method": "full", "variant": "default"})
    # matched acquisition: only fold 0 reached 90 %: 10 of its 20 facts, epoch 3
    assert board.loc["default", "retention_at_learned"] == 0.5 and board.loc["default", "retention_at_learned_n"] == 20
    assert board.loc["default", "learned_folds"] == 1 and board.loc["default", "learned_epoch"] == 3.0
    assert board.loc["default", "retention_at_learned_lo"] < 0.5 < board.loc["default", "retention_at_learned_hi"]


def test_a_scenario_is_tested_against_its_control_on_the_same_old_facts():
    rows, items = rows_and_items({("dissonant_update", "default"): ALL[:5],
                                  ("matched_control", "default"): ALL[:15]})
    pairs = paired_scenarios(rows, items)
    row = pairs.iloc[0]
    assert (row.scenario, row.control, row.n) == ("dissonant_update", "matched_control", 40)
    assert row.retention == pytest.approx(0.25) and row.retention_control == pytest.approx(0.75)
    assert row.verdict == "lower" and row.p_value < 1e-4


def test_strategies_are_contrasted_at_the_same_k_and_any_k_against_all_tracked():
    rows, items = rows_and_items({("nondissonant_update", "plastic_k0.2"): ALL[:18],
                                  ("nondissonant_update", "random_k0.2"): ALL[:17],
                                  ("nondissonant_update", "random_k0.05"): ALL[:2],
                                  ("nondissonant_update", "all_tracked_k1"): ALL[:6]})
    contrasts = strategy_contrasts(rows, items)
    pairs = set(zip(contrasts.a, contrasts.b))
    assert ("plastic_k0.2", "random_k0.2") in pairs and ("plastic_k0.2", "random_k0.05") not in pairs
    assert {("plastic_k0.2", "all_tracked_k1"), ("random_k0.05", "all_tracked_k1")} <= pairs
    close = contrasts[(contrasts.a == "plastic_k0.2") & (contrasts.b == "random_k0.2")].iloc[0]
    assert close.retention_p == pytest.approx(0.5)  # 2 discordant pairs, one way: not resolved
    far = contrasts[(contrasts.a == "plastic_k0.2") & (contrasts.b == "all_tracked_k1")].iloc[0]
    assert far.retention_a == pytest.approx(0.9) and far.retention_b == pytest.approx(0.3) and far.retention_p < 1e-6
    assert np.isnan(strategy_contrasts(rows.iloc[0:0], items).get("retention_p", pd.Series([np.nan])).iloc[0])
