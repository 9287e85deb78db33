"""Experiment design, fold slices and the overview's pure helpers."""

import pandas as pd
import pytest
import torch

from workflow_scripts.config import validate_config
from workflow_scripts.updates.design import EXPERIMENTS, arms, experiment, parse_setting, setting_label
from workflow_scripts.updates.overview import epochs_to_learn, stubborn_location
from workflow_scripts.updates.slices import known_case_ids, update_slices


def test_every_experiment_is_defined_consistently():
    assert set(EXPERIMENTS) == {"2.1", "2.2", "3.1", "3.3"}
    assert experiment("3_1") is EXPERIMENTS["3.1"] and EXPERIMENTS["3.1"].slug == "3_1"
    # 3.1 and 3.3 differ only in what they learn, so they are matched
    d, m = EXPERIMENTS["3.1"], EXPERIMENTS["3.3"]
    assert (d.start, d.old, d.known, d.usage, d.arms) == (m.start, m.old, m.known, m.usage, m.arms)
    assert (d.new, d.target) == ("B", "target_new") and (m.new, m.target) == ("C", "target_true")
    assert EXPERIMENTS["2.2"].start == "base" and EXPERIMENTS["2.2"].usage["history"] == "H"
    with pytest.raises(ValueError, match="unknown experiment '4.1'"):
        experiment("4.1")


def test_setting_labels_round_trip():
    assert setting_label(1, 5) == "lr1_e5" and setting_label(0.5, 10) == "lr0.5_e10"
    assert parse_setting("lr0.5_e10") == (0.5, 10)
    with pytest.raises(ValueError, match="not an arm setting"):
        parse_setting("fast")


def test_arms_with_sweeps():
    updates = validate_config({"updates": {
        "exp_2_1": {"strategies": ["full", "plastic"], "k": [0.01, 100], "epochs": 5},
        "exp_3": {"strategies": ["full", "lora", "plastic"], "k": [0.05], "epochs": 8},
        "sweeps": {"lr_ratios": [2], "epochs": [8, 3], "strategies": ["full", "plastic"], "k": [0.05]},
    }})["updates"]
    assert arms(updates, "2.1") == [
        ("lr1_e5", "full", "all"), ("lr1_e5", "plastic", "0.01"), ("lr1_e5", "plastic", "100"),
        ("lr2_e5", "full", "all"), ("lr2_e5", "plastic", "0.05"),
    ]
    # the epoch sweep repeats nothing already run (8 epochs is the experiment's own setting)
    assert arms(updates, "3.3") == [
        ("lr1_e8", "full", "all"), ("lr1_e8", "lora", "all"), ("lr1_e8", "plastic", "0.05"),
        ("lr1_e3", "full", "all"), ("lr1_e3", "plastic", "0.05"),
    ]
    assert arms(updates, "2.2") == [("lr1_e5", s, k) for s in ("lottery", "non_lottery", "random") for k in ("0.01", "0.05")]


def test_update_slices_are_disjoint_new_and_seeded():
    ids = list(range(100))
    known = set(range(0, 100, 4))  # 25 known by the pre-trained model
    history = {1, 2, 3, 4}
    sizes = {"A": 20, "B": 10, "known_old": 15}
    slices = update_slices(ids, history, known, sizes, seed=0)
    groups = {name: set(part.case_id) for name, part in slices.groupby("slice")}
    assert [len(groups[n]) for n in "ABCK"] == [20, 10, 10, 15]
    assert not (groups["A"] | groups["B"] | groups["C"]) & (known | history)
    assert groups["K"] <= known - history
    assert slices.equals(update_slices(ids, history, known, sizes, seed=0))
    assert not slices.equals(update_slices(ids, history, known, sizes, seed=1))
    with pytest.raises(ValueError, match="need 80 facts the pre-trained model does not know, outside H; only 72"):
        update_slices(ids, history, known, {"A": 60, "B": 10, "known_old": 1}, seed=0)


def test_known_case_ids_reads_probe_and_stage_tables():
    probe = pd.DataFrame({"case_id": [1, 1, 2, 2], "target_kind": ["true", "new", "true", "new"],
                          "correct": [True, False, False, True]})
    assert known_case_ids(probe) == {1}
    stage = pd.DataFrame({"case_id": [5, 6], "slice": ["A", "A"], "correct": [True, False]})
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
        "experiment": "3.1", "setting": "lr1_e3", "strategy": "full", "k": 10, "fold": 0,
        "epoch": [1, 2, 3], "acc_new": [0.2, 0.95, 1.0], "retention_old": [0.9, 0.5, 0.4],
    })
    row = epochs_to_learn(curves).iloc[0]
    assert row.epochs_to_learn == 2 and row.retention_when_learned == 0.5 and row.epochs_run == 3
    never = epochs_to_learn(curves.assign(acc_new=0.1)).iloc[0]
    assert pd.isna(never.epochs_to_learn)
