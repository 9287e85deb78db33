"""Report modules: tables and figures from tidy tables, saved through the one plotting helper."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.reports.probe import write_probe_report


def test_probe_report_writes_table_summary_and_figure_without_leftovers(tmp_path):
    rng = np.random.default_rng(0)
    n = 24
    probe = pd.DataFrame({
        "factset": np.repeat(["starter", "novel"], n // 2), "target_kind": np.tile(["true", "new"], n // 2),
        "case_id": np.arange(n), "relation_id": [f"P{i % 4}" for i in range(n)], "correct": rng.random(n) > 0.5,
        "first_token_prob": rng.random(n), "first_token_rank": rng.integers(0, 9, n), "mean_logprob": -rng.random(n),
    })
    src = tmp_path / "probe.parquet"
    probe.to_parquet(src)
    out = tmp_path / "out"
    out.mkdir()
    summary = write_probe_report([str(src)], str(out / "f.csv"), str(out / "f.md"), str(out / "f.png"))
    assert summary.facts.sum() == n and set(summary.factset) == {"starter", "novel"}
    assert pd.read_csv(out / "f.csv").shape == summary.shape
    assert (out / "f.md").read_text().startswith("# Familiarity probe")
    assert (out / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["f.csv", "f.md", "f.png"]  # no temporary left behind
