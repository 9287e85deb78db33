"""End to end: the Snakemake workflow on a tiny model in a temporary directory."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from workflow_scripts.facts.schema import FACT_SCHEMA

from conftest import E2E_FACTS, E2E_NOVEL, REPO, snakemake, write_config

RULES = ["convert_model", "prepare_facts", "generate_novel_facts", "probe_familiarity", "report_probe",
         "awareness_slices", "history_usage", "finetune_awareness", "awareness_samples", "awareness_features",
         "awareness_classify", "awareness_report", "fold_slices", "checkpoint_a", "checkpoint_b",
         "update", "scenario_report", "updates_overview", "leaderboard", "run_table", "lr_choice", "lr_tuning_table"]
REMIX_CELLS = ["none/facts/none", "none/facts/generic", "random/facts/none", "random/facts/generic", "none/prose/none",
               "none/code/none", "none/arithmetic/none"]
UPDATES = {"fold_slices", "checkpoint_a", "checkpoint_b", "update", "scenario_report", "updates_overview", "leaderboard"}
AWARENESS_DOWNSTREAM = {"awareness_samples", "awareness_features", "awareness_classify", "awareness_report"}


def planned_rules(proc: subprocess.CompletedProcess) -> set[str]:
    return {rule for rule in RULES if f"rule {rule}:" in proc.stdout}


@pytest.mark.slow
def test_every_output_is_produced(finished_run):
    workdir, proc = finished_run
    res = workdir / "results"
    assert (res / "model" / "model.safetensors").is_file()
    facts = pq.read_table(res / "facts" / "facts.parquet")
    novel = pq.read_table(res / "facts" / "novel.parquet")
    assert facts.schema.equals(FACT_SCHEMA) and novel.schema.equals(FACT_SCHEMA)
    assert (facts.num_rows, novel.num_rows) == (E2E_FACTS, E2E_NOVEL)
    for factset, n in (("facts", E2E_FACTS), ("novel", E2E_NOVEL)):
        probe = pd.read_parquet(res / "probe" / f"{factset}.parquet")
        assert len(probe) == 2 * n
        assert set(probe.target_kind) == {"true", "new"}
        assert probe.first_token_prob.between(0, 1).all() and (probe.first_token_rank >= 1).all()
    metrics = pd.read_parquet(res / "awareness" / "metrics.parquet")
    assert set(metrics.setting) == {"pretrained", "finetuned"} and set(metrics.probe) == {"prompt", "paraphrase"}
    assert {"accuracy", "macro_f1", "fam_vs_diss_accuracy", "feature_set", "normalisation", "classifier", "seed"} <= set(metrics.columns)
    assert set(metrics.seed) == {0, 1} and metrics.accuracy.between(0, 1).all()
    for figure in ("awareness_confusion", "awareness_feature_sets", "awareness_importance", "awareness_distributions"):
        assert (res / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    for setting in ("pretrained", "finetuned"):
        assert (res / "awareness" / setting / "classifier.skops").is_file()
    assert (res / "usage" / "history_H.safetensors").is_file()
    slices = pd.read_parquet(res / "stages" / "fold0" / "slices.parquet")
    assert slices.slice.value_counts()[["A", "B", "C", "D", "V", "K", "E"]].tolist() == [6, 4, 4, 2, 2, 6, 4]
    base_known = pd.read_parquet(res / "probe" / "facts.parquet").query("target_kind == 'true' and correct")
    assert set(slices.case_id[slices.slice.isin(["A", "B", "C", "D", "V"])]).isdisjoint(base_known.case_id)
    assert set(slices.case_id[slices.slice.isin(["K", "E"])]) <= set(base_known.case_id)
    after_b = pd.read_parquet(res / "stages" / "fold0" / "known_AB.parquet")
    # checkpoint AB learns B (at least 3 of the 4: the tiny model can stall on two facts that differ only
    # in their subject, "The capital of Canada/Denmark is", depending on which facts the slices draw)
    learned_b = after_b[after_b.slice == "B"]
    assert sorted(after_b.slice.unique()) == ["A", "B"] and learned_b.correct.mean() >= 0.75
    assert (learned_b.first_token_rank <= 2).all()  # a fact not yet known is at least runner-up

    runs = pd.read_csv(res / "runs.tsv", sep="\t")
    assert len(runs) == 4 + (6 + 2) + 6 + (3 + 2) + (3 + 2) + 2 + 4 and set(runs.scenario) == {
        "lr_tuning", "nondissonant_update", "lottery", "dissonant_update", "matched_control", "false_nonconflicting",
        "collaborative_edit"}
    # learning rates: each family's chosen on V by the declared rule, then used by its every other run
    rates = {m: json.loads((res / "tuning" / f"lr_{m}.json").read_text())[m]["lr_ratio"] for m in ("full", "lora", "neurons")}
    assert rates["full"] in (1.0, 3.0) and rates["lora"] == rates["neurons"] == 1.0  # one rate offered
    tuning = pd.read_csv(res / "report" / "lr_tuning.tsv", sep="\t")
    assert tuning.chosen.sum() == 3 and set(tuning.method) == {"full", "lora", "neurons"}
    updates = pd.read_parquet(res / "updates" / "nondissonant_update" / "metrics.parquet")
    tuned = updates[updates.method.isin(rates)]  # (the editors have no learning rate to tune)
    assert (tuned.lr_tuned_ratio == tuned.method.map(rates)).all() and updates.lr_tuned_ratio.isna().sum() == 2
    main = updates[(updates.lr_ratio / updates.lr_tuned_ratio.fillna(1.0)).round(6) == 1.0]
    assert sorted(main.arm) == ["full", "lora", "memit", "plastic", "rome", "specific", "stubborn"]
    assert (main[main.method == "neurons"].k == 20).all()
    editors = updates[updates.method.isin(["rome", "memit"])]  # one covariance per start checkpoint, shared
    assert set(editors.edit_layers) == {"0"} and (editors.efficacy_score_n == 4).all()
    assert sorted(p.parent.name for p in (res / "editing" / "covariance").rglob("*.safetensors")) == [
        "base", "fold0_A", "fold0_AB"]
    # collaborative editing: four merge runs and two multi-round trajectories read one statistics file
    merges = pd.read_parquet(res / "updates" / "collaborative_edit" / "metrics.parquet")
    assert sorted(merges.arm) == ["merge_collabedit", "merge_global", "merge_ta", "merge_ties"]
    assert (merges.statistics_cached == 1.0).all()  # every merge run read the shared statistics
    assert (merges.stage == "base->E'").all() and (merges.efficacy_score_n == 4).all() and (merges.n_old == 6).all()
    pair = merges.set_index("arm").loc[["merge_collabedit", "merge_global"]]
    for column in ("efficacy_score", "paraphrase_score", "neighbourhood_score", "acc_new", "locality", "retention_old"):
        assert pair[column].iloc[0] == pair[column].iloc[1], column  # CollabEdit equals GLOBAL
    assert pair.max_rel_diff_vs_global.iloc[0] < 1e-8 and len(list((res / "merging" / "statistics").rglob("*.safetensors"))) == 1
    rounds = pd.read_parquet(res / "merging" / "rounds" / "collabedit_a1_rounds.parquet")
    assert rounds["round"].tolist() == [1, 2] and (rounds.max_rel_diff_vs_global < 1e-8).all()
    outcomes = pd.read_parquet(res / "merging" / "rounds" / "collabedit_a0.parquet")
    assert sorted(outcomes.after_round.unique()) == [1, 2] and set(outcomes.edited_in) == {0, 1, 2}
    merging = (res / "report" / "merging.md").read_text()
    assert "CollabEdit vs GLOBAL" in merging and "Multi-round editing" in merging and "**Conflict**" in merging
    entropy = pd.read_csv(res / "report" / "entropy.csv")
    assert entropy.checkpoint.tolist() == ["base", "fold0_A", "fold0_AB"] and entropy.delta_vs_base.iloc[0] == 0.0
    assert (entropy.H_lo <= entropy.H_hi).all() and (entropy.sequences == 4).all()
    remix = pd.read_parquet(res / "remix" / "metrics.parquet")
    assert remix.groupby("set").cell.apply(list).to_dict() == {s: REMIX_CELLS for s in ("facts", "kvr")}
    assert (remix[remix.set == "facts"].retention_n <= 6).all() and (remix.exact_n == remix.set.map({"facts": 6, "kvr": 4})).all()
    assert (remix.retention_lo <= remix.retention_share).all() and (remix.retention_share <= remix.retention_hi).all()
    assert (remix[remix.stage2 != "facts"].stage2_rows == remix[remix.stage2 != "facts"].set.map({"facts": 4, "kvr": 4})).all()
    assert (remix[remix.mixing == "generic"].mix_rows == 4).all() and (remix[remix.mixing == "none"].mix_rows == 0).all()
    tests = pd.read_parquet(res / "remix" / "comparisons.parquet")
    assert set(tests.factor) == {"stage1", "stage2", "mixing"} and tests.p_exact.between(0, 1).all()
    assert "## REMIX" in (res / "report" / "leaderboard.md").read_text() and "Set: kvr" in (res / "report" / "remix.md").read_text()
    challenges = pd.read_parquet(res / "merging" / "challenges.parquet")
    assert set(challenges.experiment) == {"overlap", "overlap_detection", "conflict"}
    sequential = pd.read_parquet(res / "editing" / "sequential" / "memit.parquet")
    assert list(sequential.edits) == [2, 4] and (sequential.retention_old_n == sequential.retention_old_n.iloc[0]).all()
    choice = json.loads((res / "editing" / "layer_choice.json").read_text())
    assert choice["rome_layer"] == 0 and set(pd.read_parquet(res / "editing" / "trace.parquet").site) == {"block", "mlp"}
    assert updates.acc_new.between(0, 1).all() and updates.retention_old.between(0, 1).all()
    assert (updates.acc_new_lo <= updates.acc_new).all() and (updates.acc_new <= updates.acc_new_hi).all()
    assert (main[main.arm == "full"].acc_new >= 0.75).all()  # 4 facts, 25 epochs (see checkpoint AB above)
    swept = updates[updates.variant == "lr0.5"]
    assert swept.method.tolist() == ["full"] and swept.lr.iloc[0] == pytest.approx(0.0015 * rates["full"])
    lottery = pd.read_parquet(res / "updates" / "lottery" / "metrics.parquet")
    assert sorted(lottery.strategy.unique()) == ["lottery", "non_lottery", "random"] and sorted(lottery.k.unique()) == [20, 60]
    assert (lottery.n_old == 6).all() and (lottery.n_retained_base == 6).all()  # K: known by the base model
    dissonant = pd.read_parquet(res / "updates" / "dissonant_update" / "metrics.parquet")
    matched = pd.read_parquet(res / "updates" / "matched_control" / "metrics.parquet")
    assert set(dissonant.variant) == set(matched.variant) == {"default", "e5", "plastic_k20"}
    assert (dissonant.stage == "AB->B'").all() and (matched.stage == "AB->C").all()
    assert (dissonant.paper == "3.1").all() and (matched.paper == "3.3").all()
    curves = pd.read_parquet(res / "updates" / "dissonant_update" / "curves.parquet")
    default = curves[curves.variant == "default"]  # curve_every 2: every epoch until learned, then every 2nd
    assert set(range(0, 26, 2)) | {25} <= set(default.epoch) <= set(range(0, 26))  # epoch 0: before the update
    assert default.acc_new.notna().all() and default[default.epoch % 2 == 0].retention_old.notna().all()
    assert len(pd.read_parquet(res / "updates" / "nondissonant_update" / "curves.parquet")) == len(updates)  # final epoch only
    for figure in ("updates_nondissonant_update_vs_k", "updates_lottery_vs_k", "updates_dissonant_update_pareto",
                   "updates_dissonant_vs_matched", "updates_stubborn_location", "updates_usage_distribution",
                   "updates_sweeps", "leaderboard_pareto", "editing_causal_trace", "editing_sequential",
                   "merging_clients", "merging_rounds", "entropy_layers", "remix_retention", "remix_lens"):
        assert (res / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG", figure
    overview = (res / "report" / "updates.md").read_text()
    assert "Dissonant vs matched" in overview and "Where the stubborn neurons sit" in overview
    board = pd.read_parquet(res / "leaderboard" / "leaderboard.parquet")
    assert len(board) == (runs.scenario != "lr_tuning").sum()
    assert {"retention", "retention_lo", "retention_hi", "acquisition", "generalisation", "locality",
            "retention_vs_ref_p"} <= set(board.columns)
    assert board.reference.sum() == 4  # full/default in every reported scenario that runs full fine-tuning
    assert {"rome", "memit", "merge"} <= set(board.method)
    assert "lr_tuning" not in set(board.scenario)  # tuning runs choose rates; they are not results
    assert "# Leaderboard" in (res / "report" / "leaderboard.md").read_text()
    summary = pd.read_csv(res / "report" / "familiarity.csv")
    assert summary.facts.tolist() == [E2E_FACTS, E2E_FACTS, E2E_NOVEL, E2E_NOVEL]
    assert (res / "figures" / "known_by_relation.png").read_bytes()[:4] == b"\x89PNG"
    assert "# Familiarity probe" in proc.stdout  # the summary is printed at the end
    for rule in ["convert_model", "prepare_facts", "generate_novel_facts", "probe_familiarity_facts",
                 "probe_familiarity_novel", "report_probe", "awareness_slices", "history_usage", "finetune_awareness",
                 "awareness_samples_pretrained", "awareness_features_finetuned", "awareness_classify_pretrained",
                 "awareness_report"]:
        assert (res / "logs" / f"{rule}.log").is_file()
        assert len((res / "benchmarks" / f"{rule}.tsv").read_text().splitlines()) == 2
    assert not list(res.rglob(".*.tmp"))  # no temporary file left behind


@pytest.mark.slow
def test_rerun_does_nothing_and_a_param_change_reruns_only_its_jobs(finished_run, pretrained_tiny_dir):
    workdir, _ = finished_run
    proc = snakemake(workdir, "-n")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout, proc.stdout[-2000:]

    # batch sizes of batch-invariant computations are runtime resources: changing them reruns nothing
    write_config(workdir, pretrained_tiny_dir, probe__batch_size=4, awareness__feature_batch_size=3)
    proc = snakemake(workdir, "-n")
    assert "Nothing to be done" in proc.stdout, proc.stdout[-3000:]

    # the same values in another key order rerun nothing
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    (workdir / "config.yaml").write_text(yaml.safe_dump(dict(reversed(list(cfg.items()))), sort_keys=False))
    proc = snakemake(workdir, "-n")
    assert "Nothing to be done" in proc.stdout, proc.stdout[-3000:]

    # LoRA's rank: the LoRA runs only (and the tables that gather run rows)
    write_config(workdir, pretrained_tiny_dir, methods__lora__r=4)
    proc = snakemake(workdir, "-n")
    assert planned_rules(proc) == {"update", "scenario_report", "updates_overview", "leaderboard", "run_table",
                                   "lr_choice", "lr_tuning_table"}, proc.stdout[-3000:]
    planned_runs = {line.split("runs/")[1].split("/fold")[0] for line in proc.stdout.splitlines()
                    if "row.parquet" in line and "output:" in line}
    # and its tuning run, whose family's rate file alone changes (other families' runs stay)
    assert planned_runs == {"nondissonant_update/lora/default", "lr_tuning/lora/default"}, proc.stdout[-3000:]

    # a number on the command line, where the schema says number
    write_config(workdir, pretrained_tiny_dir)
    proc = snakemake(workdir, "-n", "--config", 'training={"lr": 3e-3, "batch_size": 8}')
    assert "Nothing to be done" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]

    # the novel-fact seed: novel facts and their consumers, not the model, the facts or any fine-tune
    write_config(workdir, pretrained_tiny_dir, novel__seed=99)
    proc = snakemake(workdir, "-n")
    assert planned_rules(proc) == {"generate_novel_facts", "probe_familiarity", "report_probe"} | AWARENESS_DOWNSTREAM
    assert "probe_familiarity_novel.log" in proc.stdout and "probe_familiarity_facts.log" not in proc.stdout
    write_config(workdir, pretrained_tiny_dir)  # restore


@pytest.mark.slow
def test_bad_config_stops_before_any_job(tmp_path, tiny_model_dirs):
    write_config(tmp_path, tiny_model_dirs["gpt2"], probe__batch_size="eight")
    proc = snakemake(tmp_path, "--cores", "1")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "probe.batch_size" in out and "expected integer" in out
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_bad_facts_file_fails_without_partial_output(tmp_path, tiny_model_dirs):
    bad = REPO.parent / "shared" / "data" / "conflictaware" / "dataset" / "dataset_generation" / "synthetic_gen" / "unknown_phrases.json"
    if not bad.exists():
        pytest.skip("shared data not present")
    write_config(tmp_path, tiny_model_dirs["gpt2"], facts__source="file", facts__path=str(bad), facts__limit=None)
    proc = snakemake(tmp_path, "--cores", "1", "prepare_facts")
    assert proc.returncode != 0
    log = (tmp_path / "results" / "logs" / "prepare_facts.log").read_text()
    assert "unknown_phrases.json: invalid JSON at line" in log
    assert not (tmp_path / "results" / "facts").exists() or not any((tmp_path / "results" / "facts").iterdir())
