"""Scenarios by name, the one seeded slicer, and the run table built from the config."""

import json

import pandas as pd
import pytest
import torch
import yaml

from workflow_scripts.config import load_schema, validate_config
from workflow_scripts.methods.base import METHODS, method
from workflow_scripts.methods.neurons import STRATEGIES
from workflow_scripts.methods.registry import METHODS as REGISTERED
from workflow_scripts.reports.overview import epochs_to_learn, stubborn_location
from workflow_scripts.scenarios.design import CHECKPOINTS, SCENARIOS, controlled_pairs
from workflow_scripts.scenarios.runs import build_runs, grid_points, run_inputs, table_rows
from workflow_scripts.scenarios.slices import fold_slices, known_case_ids, slice_facts


def test_every_scenario_is_named_for_what_it_is_and_keeps_its_paper_label():
    assert set(SCENARIOS) == {"nondissonant_update", "lottery", "dissonant_update", "matched_control",
                              "false_nonconflicting", "lr_tuning", "collaborative_edit"}
    assert {s.paper for s in SCENARIOS.values()} == {"2.1", "2.2", "3.1", "3.3", "new", "-", "CollabEdit 4.1"}
    collab = SCENARIOS["collaborative_edit"]
    assert (collab.start, collab.learn, collab.target, collab.keep) == ("base", "E", "target_new", "K")
    assert [s.name for s in SCENARIOS.values() if s.tuning] == ["lr_tuning"]
    for s in SCENARIOS.values():
        assert s.start in CHECKPOINTS and s.known in CHECKPOINTS and s.learn != s.keep
    assert SCENARIOS["dissonant_update"].target == "target_new"
    assert controlled_pairs()[0] == ("dissonant_update", "matched_control")
    assert SCENARIOS["false_nonconflicting"].target == "target_new" and SCENARIOS["false_nonconflicting"].learn == "D"


def test_a_scenario_on_an_empty_slice_is_refused_before_any_job():
    cfg = validate_config({"updates": {"sizes": {"D": 0},
                                       "scenarios": {"false_nonconflicting": {"methods": {"full": {}}}}}})
    with pytest.raises(ValueError, match="set updates.sizes.D"):
        build_runs(cfg)
    cfg = validate_config({"updates": {"scenarios": {"lr_tuning": {"methods": {"full": {}}}}}})
    with pytest.raises(ValueError, match="set updates.sizes.V"):
        build_runs(cfg)
    cfg = validate_config({"updates": {"sizes": {"D": 24},
                                       "scenarios": {"false_nonconflicting": {"methods": {"full": {}}}}}})
    assert sum(r.scenario == "false_nonconflicting" for r in build_runs(cfg).values()) == 1


def test_schema_enums_equal_the_registries():
    schema = load_schema()
    assert set(schema["definitions"]["method"]["enum"]) == set(REGISTERED) == set(METHODS)
    assert set(schema["definitions"]["strategy"]["enum"]) == set(STRATEGIES)
    assert set(schema["properties"]["updates"]["properties"]["scenarios"]["properties"]) == set(SCENARIOS)
    assert set(schema["properties"]["methods"]["properties"]) == set(METHODS)
    assert set(schema["definitions"]["scenario"]["properties"]["methods"]["properties"]) == set(METHODS)


def test_method_defaults_live_in_the_params_dataclasses_and_the_schema_agrees():
    import dataclasses

    from workflow_scripts.training.train import TrainConfig

    cfg = validate_config({})
    for name, m in METHODS.items():
        defaults = {f.name: f.default for f in dataclasses.fields(m.Params)}
        assert cfg["methods"][name] == defaults, name
    train_defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for key, value in cfg["training"].items():
        assert train_defaults[key] == value, key


def test_the_shipped_config_only_restates_the_schema_defaults():
    with open("config.yaml", encoding="utf-8") as fh:
        shipped = validate_config(yaml.safe_load(fh))
    assert json.dumps(shipped, sort_keys=True) == json.dumps(validate_config({}), sort_keys=True)


def test_grids_expand_as_products_and_lists_concatenate():
    assert grid_points({}) == [{}]
    assert grid_points(None) == []  # a method set to null is not run
    assert grid_points({"strategy": ["a", "b"], "k": [1, 2]}) == [
        {"strategy": "a", "k": 1}, {"strategy": "a", "k": 2}, {"strategy": "b", "k": 1}, {"strategy": "b", "k": 2}]
    assert grid_points([{}, {"lr_ratio": 3}]) == [{}, {"lr_ratio": 3}]


def test_the_default_run_table_has_the_arms_of_the_study():
    runs = build_runs(validate_config({}))
    labels = {(r.scenario, r.method, r.variant) for r in runs.values()}
    # the controls: random and all tracked neurons next to plastic in the non-dissonant update; random,
    # stubborn and specific in the dissonant update and in both its controls' tables
    for strategy in ("plastic", "stubborn", "random", "specific"):
        for name in ("nondissonant_update", "dissonant_update", "matched_control"):
            assert (name, "neurons", f"{strategy}_k0.2") in labels
    assert ("nondissonant_update", "neurons", "all_tracked_k1") in labels
    assert ("false_nonconflicting", "full", "default") in labels
    assert ("dissonant_update", "lora", "lr10") in labels
    assert {v for s, m, v in labels if s == "lottery"} == {"lottery_k0.05", "non_lottery_k0.05", "random_k0.05"}
    plastic = runs[("nondissonant_update", "neurons", "plastic_k0.05", 0)]
    assert plastic.params == {"epochs": 10, "lr_ratio": 1.0, "batch_size": 0, "strategy": "plastic", "k": 0.05,
                              "usage_score": "abs_sum", "usage_positions": "all_real"}
    assert all(r.curves for r in runs.values() if r.scenario not in ("lottery", "collaborative_edit", "false_nonconflicting"))
    assert not any(r.tuned for r in runs.values())
    # collaborative editing: the five merge rules at 4 clients, on one statistics file
    merges = [r for r in runs.values() if r.method == "merge"]
    assert sorted((r.params["rule"], r.params["clients"]) for r in merges) == sorted(
        [(rule, 4) for rule in ("global", "collabedit", "ta", "ties", "sa")])
    assert len({run_inputs(r)["statistics"] for r in merges}) == 1
    # resuscitation next to full fine-tuning in the non-dissonant update, every run's entropy measured
    assert {v for s, m, v in labels if m == "resuscitate"} == {"default"}
    assert all(r.entropy_arm for r in runs.values())


def test_a_run_gets_only_the_usage_its_strategy_reads():
    runs = build_runs(validate_config({}))
    plastic = run_inputs(runs[("nondissonant_update", "neurons", "plastic_k0.05", 0)])
    assert {k for k in plastic if k.startswith("usage_")} == {"usage_old"}
    assert plastic["usage_old"] == "stages/fold0/usage_A.safetensors" and plastic["model"] == "stages/fold0/model_A"
    lottery = run_inputs(runs[("lottery", "neurons", "lottery_k0.05", 0)])
    assert {k for k in lottery if k.startswith("usage_")} == {"usage_history"}
    assert lottery["model"] == "model" and lottery["known"] == "probe/facts.parquet"
    random_ = run_inputs(runs[("lottery", "neurons", "random_k0.05", 0)])
    assert not any(k.startswith("usage_") for k in random_)
    assert not any(k.startswith("usage_") for k in run_inputs(runs[("dissonant_update", "full", "default", 0)]))


def test_a_scenario_that_cannot_provide_a_strategys_usage_is_refused_by_name():
    cfg = validate_config({"updates": {"scenarios": {"lottery": {"methods": {"neurons": {"strategy": "plastic"}}}}}})
    run = next(iter(build_runs(cfg).values()))
    with pytest.raises(ValueError, match="cannot provide 'usage:old'"):
        run_inputs(run)


def test_unknown_method_parameters_are_named_before_any_job():
    cfg = validate_config({"updates": {"scenarios": {"lottery": {"methods": {"neurons": {"kk": 3}}}}}})
    with pytest.raises(ValueError, match=r"updates.scenarios.lottery.methods.neurons: unknown parameter\(s\) \['kk'\]"):
        build_runs(cfg)
    cfg = validate_config({"updates": {"scenarios": {"lottery": {"methods": {"neurons": {"strategy": "nope"}}}}}})
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        build_runs(cfg)


def test_the_same_values_written_differently_give_the_same_run():
    a = build_runs(validate_config({"updates": {"scenarios": {"lottery": {"methods": {"neurons": {"k": 0.2, "lr_ratio": 3}}}}}}))
    b = build_runs(validate_config({"updates": {"scenarios": {"lottery": {"methods": {"neurons": {"lr_ratio": 3.0, "k": 0.2}}}}}}))
    assert list(a) == list(b)
    assert [r.job_params() for r in a.values()] == [r.job_params() for r in b.values()]


def test_the_run_table_lists_every_run_with_its_params():
    runs = build_runs(validate_config({}))
    rows = table_rows(runs)
    assert len(rows) == len(runs)
    assert {"scenario", "paper", "method", "variant", "fold", "seed", "params", "output"} <= set(rows[0])
    assert all(json.loads(r["params"]) == runs[(r["scenario"], r["method"], r["variant"], r["fold"])].params for r in rows)


def test_variant_labels_are_unique_and_readable():
    m = method("neurons")
    assert m.variant(m.make_params({"strategy": "plastic", "k": 0.05})) == "plastic_k0.05"
    assert m.variant(m.make_params({"strategy": "plastic", "k": 2000, "epochs": 20})) == "plastic_k2000_e20"
    assert method("full").variant(method("full").make_params({})) == "default"
    assert method("lora").variant(method("lora").make_params({"r": 4})) == "r4"
    scenario_defaults = method("full").make_params({"epochs": 20})
    assert method("full").variant(method("full").make_params({"epochs": 20}), scenario_defaults) == "default"
    assert method("full").variant(method("full").make_params({"epochs": 10}), scenario_defaults) == "e10"


def test_fold_slices_are_disjoint_new_and_seeded():
    ids = list(range(100))
    history = set(range(10))
    known = set(range(10, 30))
    sizes = {"A": 20, "B": 10, "known_old": 15}
    slices = fold_slices(ids, history, known, sizes, seed=0)
    counts = slices.slice.value_counts().to_dict()
    assert counts["A"] == 20 and counts["B"] == 10 and counts["C"] == 10 and counts["K"] == 15
    assert not set(slices.case_id[slices.slice.isin(["A", "B", "C"])]) & (history | known)
    assert set(slices.case_id[slices.slice == "K"]) <= known - history
    assert slices.equals(fold_slices(ids, history, known, sizes, seed=0))
    assert not slices.equals(fold_slices(ids, history, known, sizes, seed=1))
    with pytest.raises(ValueError, match="need 80 facts"):
        fold_slices(ids, history, known, {"A": 60, "B": 10, "known_old": 1}, seed=0)


def test_history_slices_are_disjoint_and_seeded():
    table = slice_facts(list(range(50)), {"H": 10, "F": 20}, seed=3)
    assert table.slice.value_counts().to_dict() == {"rest": 20, "F": 20, "H": 10}
    assert table.equals(slice_facts(list(range(50)), {"H": 10, "F": 20}, seed=3))
    with pytest.raises(ValueError, match="need 60 facts"):
        slice_facts(list(range(50)), {"H": 30, "F": 30}, seed=0)


def test_known_case_ids_reads_probe_and_stage_tables():
    probe = pd.DataFrame({"case_id": [1, 1, 2], "target_kind": ["true", "new", "true"], "correct": [True, True, False]})
    stage = pd.DataFrame({"case_id": [5, 6], "slice": ["A", "A"], "correct": [True, False]})
    assert known_case_ids(probe) == {1}
    assert known_case_ids(stage) == {5}


def test_stubborn_location_shares():
    modules = pd.DataFrame({"name": ["b0.q", "b0.mlp", "b1.q", "b1.mlp"], "block": [0, 0, 1, 1],
                            "type": ["attn_q", "mlp", "attn_q", "mlp"], "width": [4, 4, 4, 4]})
    usage = {"b0.q": torch.zeros(4), "b0.mlp": torch.tensor([9.0, 8, 0, 0]),
             "b1.q": torch.tensor([7.0, 0, 0, 0]), "b1.mlp": torch.zeros(4)}
    table = stubborn_location([usage], modules, [3])
    by_type = table[table.by == "type"].set_index("group")
    assert by_type.share.to_dict() == pytest.approx({"attn_q": 1 / 3, "mlp": 2 / 3})
    assert by_type.uniform_share.to_dict() == pytest.approx({"attn_q": 0.5, "mlp": 0.5})
    by_block = table[table.by == "block"].set_index("group")
    assert by_block.share.to_dict() == pytest.approx({"0": 2 / 3, "1": 1 / 3})


def test_epochs_to_learn():
    curves = pd.DataFrame({
        "scenario": "dissonant_update", "variant": "default", "arm": "full", "k": 10, "fold": 0,
        "epoch": [1, 2, 3], "acc_new": [0.2, 0.95, 1.0], "retention_old": [0.9, 0.5, 0.4],
    })
    row = epochs_to_learn(curves).iloc[0]
    assert row.epochs_to_learn == 2 and row.retention_when_learned == 0.5 and row.epochs_run == 3
    never = epochs_to_learn(curves.assign(acc_new=0.1)).iloc[0]
    assert pd.isna(never.epochs_to_learn)


def test_adding_a_d_slice_or_matching_relations_leaves_a_b_and_k_unchanged():
    ids = list(range(200))
    history, known = set(range(10)), set(range(10, 40))
    sizes = {"A": 20, "B": 10, "known_old": 15}
    plain = fold_slices(ids, history, known, sizes, seed=0)
    with_d = fold_slices(ids, history, known, {**sizes, "D": 10}, seed=0)
    for name in ("A", "B", "C", "K"):
        assert set(plain.case_id[plain.slice == name]) == set(with_d.case_id[with_d.slice == name]), name
    assert (with_d.slice == "D").sum() == 10
    relations = {cid: f"r{cid % 4}" for cid in ids}
    matched = fold_slices(ids, history, known, sizes, seed=0, relations=relations)
    for name in ("A", "B", "K"):
        assert set(plain.case_id[plain.slice == name]) == set(matched.case_id[matched.slice == name]), name
    rel = matched.assign(relation=matched.case_id.map(relations))
    b_mix = rel[rel.slice == "B"].relation.value_counts().sort_index()
    c_mix = rel[rel.slice == "C"].relation.value_counts().sort_index()
    assert b_mix.equals(c_mix)
    assert not set(matched.case_id[matched.slice == "C"]) & (history | known)


def tuning_config(**updates):
    return validate_config({"updates": {"sizes": {"V": 12}, "tune_lr": True, "folds": [0, 1], **updates}})


def test_tuned_runs_take_their_rate_from_the_tuning_scenario_on_its_folds_only():
    cfg = tuning_config(scenarios={
        "lr_tuning": {"folds": [0], "methods": {"full": {"lr_ratio": [0.3, 1.0, 3.0]}}},
        "nondissonant_update": {"methods": {"full": [{}, {"lr_ratio": 3.0}]}},
    })
    runs = build_runs(cfg)
    tuning = [r for r in runs.values() if r.scenario == "lr_tuning"]
    assert {r.fold for r in tuning} == {0} and len(tuning) == 3 and not any(r.tuned for r in tuning)
    updates = [r for r in runs.values() if r.scenario == "nondissonant_update"]
    assert len(updates) == 4 and all(r.tuned for r in updates)
    assert all(run_inputs(r)["lr_rates"] == "tuning/lr_full.json" for r in updates)
    assert all("lr_rates" not in run_inputs(r) for r in tuning)
    assert {row["lr"] for row in table_rows(runs)} == {"tuned x lr_ratio", "training.lr x lr_ratio"}


def test_tuning_a_method_the_tuning_scenario_does_not_run_is_refused_by_name():
    cfg = tuning_config(scenarios={"lr_tuning": {"methods": {"full": {"lr_ratio": [1.0, 3.0]}}},
                                   "nondissonant_update": {"methods": {"full": {}, "lora": {}}}})
    with pytest.raises(ValueError, match="runs no lora"):
        build_runs(cfg)
    cfg = tuning_config(scenarios={"lr_tuning": {"folds": [3], "methods": {"full": {}}}})
    with pytest.raises(ValueError, match="must be among updates.folds"):
        build_runs(cfg)


def tuning_row(method, lr_ratio, learned, n_new, kept, n_old, variant="default"):
    return {"method": method, "variant": variant, "lr_ratio": lr_ratio, "n_new": n_new, "acc_new": learned / n_new,
            "n_old": n_old, "retention_old": kept / n_old}


def test_the_declared_rule_keeps_the_most_among_rates_that_learn_and_else_the_best_learner():
    from workflow_scripts.methods.tuning import chosen_rates, rate_table

    rows = pd.DataFrame([
        tuning_row("full", 0.3, 10, 20, 19, 20),  # keeps most, but learns only half
        tuning_row("full", 1.0, 19, 20, 15, 20),  # learns: keeps 15
        tuning_row("full", 3.0, 20, 20, 9, 20),   # learns: keeps 9
        tuning_row("lora", 1.0, 2, 20, 20, 20),   # no LoRA rate learns 90 %
        tuning_row("lora", 3.0, 12, 20, 18, 20),
        # two settings of one family pool: 18 + 19 of 40 learned (0.925), 30 of 40 kept
        tuning_row("neurons", 3.0, 18, 20, 14, 20, "plastic_k0.2"), tuning_row("neurons", 3.0, 19, 20, 16, 20, "random_k0.2"),
        tuning_row("neurons", 10.0, 20, 20, 10, 20, "plastic_k0.2"), tuning_row("neurons", 10.0, 20, 20, 12, 20, "random_k0.2"),
    ])
    table = rate_table(rows)
    assert chosen_rates(table) == {"full": 1.0, "lora": 3.0, "neurons": 3.0}
    pooled = table[(table.method == "neurons") & (table.lr_ratio == 3.0)].iloc[0]
    assert (pooled.learned, pooled.n_new, pooled.kept, pooled.settings) == (37, 40, 30, 2)
    assert table[table.method == "lora"].rule.iloc[0].startswith("no rate learned")
    with pytest.raises(ValueError, match="no learning-rate tuning runs"):
        rate_table(rows.iloc[0:0])


def test_a_tuned_run_trains_at_the_chosen_rate_times_its_own_ratio(tmp_path):
    from workflow_scripts.methods.tuning import rate_table, read_rate, write_rates

    write_rates(rate_table(pd.DataFrame([tuning_row("full", 3.0, 20, 20, 9, 20)])), tmp_path / "lr.json")
    assert read_rate(tmp_path / "lr.json", "full") == 3.0
    with pytest.raises(ValueError, match="no tuned learning rate for method 'lora'"):
        read_rate(tmp_path / "lr.json", "lora")


def test_usage_position_sets_agree_between_the_torch_free_registry_and_the_tracker():
    from workflow_scripts.methods.neurons import USAGE_POSITIONS
    from workflow_scripts.training.usage import POSITIONS

    assert USAGE_POSITIONS == POSITIONS


def test_a_counterfact_that_is_true_for_a_multi_valued_relation_is_flagged():
    from workflow_scripts.facts.starter import starter_records
    from workflow_scripts.scenarios.slices import true_counterfacts

    def record(cid, subject, true, new):
        return {"case_id": cid, "requested_rewrite": {"relation_id": "P37", "subject": subject,
                                                      "target_true": {"str": true}, "target_new": {"str": new}}}

    records = [record(0, "Cyprus", "Greek", "Turkish"), record(1, "Cyprus", "Turkish", "English"),
               record(2, "Malta", "Maltese", "Greek")]
    assert true_counterfacts(records) == {0}
    assert true_counterfacts(starter_records()) == set()  # the starter draws never pick a true object


def test_starter_counterfacts_keep_each_relations_object_distribution():
    import collections

    from workflow_scripts.facts.starter import starter_records

    true, new = collections.Counter(), collections.Counter()
    for r in starter_records():
        rw = r["requested_rewrite"]
        if rw["relation_id"] == "P30":  # continents: a pool of five objects
            true[rw["target_true"]["str"]] += 1
            new[rw["target_new"]["str"]] += 1
    total = sum(true.values())
    # frequency-weighted draws: every continent's share of counterfacts within 0.15 of its share of facts
    assert all(abs(new[o] / total - true[o] / total) <= 0.15 for o in true)


def merged_config(path):
    """config.yaml with a --configfile on top (nested mappings merge, everything else replaces)."""
    def merge(base, extra):
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    with open("config.yaml", encoding="utf-8") as fh, open(path, encoding="utf-8") as extra:
        return validate_config(merge(yaml.safe_load(fh), yaml.safe_load(extra)))


@pytest.mark.parametrize("path", ["config/cpu_study.yaml", "config/original.yaml"])
def test_the_shipped_study_configs_validate_and_tune_every_family_they_run(path):
    cfg = merged_config(path)
    runs = build_runs(cfg)
    assert cfg["updates"]["tune_lr"] and len(cfg["updates"]["folds"]) >= 3
    tuned = {r.method for r in runs.values() if r.scenario == "lr_tuning"}
    assert {r.method for r in runs.values() if "lr_ratio" in r.params} == tuned  # (editors have no learning rate)
    assert all(r.fold == cfg["updates"]["folds"][0] for r in runs.values() if r.scenario == "lr_tuning")
    assert all(float(r.params["k"]) <= 1 for r in runs.values() if "k" in r.params)  # fractions: any model
    for name in ("nondissonant_update", "dissonant_update", "matched_control", "false_nonconflicting"):
        assert any(r.scenario == name for r in runs.values()), name


def test_every_run_of_the_study_config_trains_at_its_familys_tuned_rate():
    """A grid key merged from config.yaml must not silently scale a tuned family's rate."""
    runs = build_runs(merged_config("config/cpu_study.yaml"))
    assert all(r.params["lr_ratio"] == 1.0 for r in runs.values() if r.tuned)
