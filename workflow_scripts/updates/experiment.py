"""Entry points of the targeted-update stages (rules call these)."""

from __future__ import annotations

import logging

import pandas as pd

from workflow_scripts.facts.schema import flat_facts, read_facts
from workflow_scripts.io import write_parquet
from workflow_scripts.models.loading import load_model
from workflow_scripts.training.train import TrainConfig
from workflow_scripts.training.usage import load_usage
from workflow_scripts.methods.neurons import ORACLES
from workflow_scripts.updates.arms import Arm, run_arm
from workflow_scripts.updates.design import experiment, parse_k, parse_setting
from workflow_scripts.updates.lora import LoraSettings
from workflow_scripts.updates.slices import known_case_ids

log = logging.getLogger(__name__)


def run_update_arm(model_dir: str, facts_path: str, slices_path: str, known_path: str, usage_paths: dict,
                   usage_score: str, experiment_id: str, setting: str, strategy: str, k: str, fold: int,
                   training: dict, lora: dict, curves: bool, out_row: str, out_curve: str) -> dict:
    """One arm of an experiment (see ``updates.design``): ``usage_paths`` maps usage source ('A', 'B',
    'H') to a safetensors file; ``setting`` is e.g. 'lr1_e5' (learning-rate ratio and epochs)."""
    exp = experiment(experiment_id)
    lr_ratio, epochs = parse_setting(setting)
    cfg = TrainConfig(**{**training, "lr": training["lr"] * lr_ratio, "epochs": epochs, "seed": training["seed"] + fold})
    slices = pd.read_parquet(slices_path)
    flat = flat_facts(read_facts(facts_path))
    old = flat[flat.case_id.isin(slices.case_id[slices.slice == exp.old])]
    new = flat[flat.case_id.isin(slices.case_id[slices.slice == exp.new])]
    if old.empty or new.empty:
        raise ValueError(f"experiment {exp.id}: slice {exp.old if old.empty else exp.new!r} is empty in {slices_path}")
    known_before = known_case_ids(pd.read_parquet(known_path)) & set(old.case_id)
    usage = {role: load_usage(usage_paths[source], usage_score) if source else None
             for role, source in exp.usage.items()}
    model, tok = load_model(model_dir, dtype="float32")
    row, curve = run_arm(model, tok, Arm(strategy, parse_k(k), fold), old, new, known_before, cfg, usage,
                         target_column=exp.target, lora=LoraSettings(**lora), curves=curves)
    key = {"experiment": exp.id, "stage": f"{exp.start}->{exp.new}" + ("'" if exp.target == "target_new" else ""),
           "fold": fold, "lr_ratio": lr_ratio, "setting": setting,
           "oracle": bool(exp.oracle_new_usage and strategy in ORACLES)}
    write_parquet(pd.DataFrame([{**key, **row}]), out_row)
    write_parquet(curve.assign(**key, strategy=strategy, k=row["k"]), out_curve)
    log.info("%s %s %s k=%s: %s", exp.id, setting, strategy, k, row)
    return row
