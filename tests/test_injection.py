"""Fictional-knowledge injection (workflow_scripts.entropy.injection): the pure pieces by hand, on the real
item files when present, and a two-injection run on the tiny random models."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from workflow_scripts.entropy.injection import (DATA_FILES, InjectionSpec, acquisition, cut_text, data_paths,
                                                filter_probes, generic_windows, group_name, injection_metrics,
                                                injection_schedule, item_versions, load_items, place_sequences,
                                                prepare_run, prepend_truncate, probe_steps, run_injection)

from conftest import shared_file


def synthetic_item(words: list[str], offset: int) -> dict:
    """An item of vocabulary words: a 30-word context, two paraphrases (the context rotated) and probes:
    mem probe 0 ends inside the first 12 words, mem probe 1 at the context's end; gen probe 0's target is
    in the first 12 words, gen probe 1's only in the last words; hard_gen probe 0 targets a word in the
    rotated paraphrase's kept text only."""
    w = [words[(offset + i) % len(words)] for i in range(30)]
    context = " ".join(w)
    rotated = " ".join(w[20:] + w[:20])
    return {
        "train_context": context,
        "paraphrases": [rotated, " ".join(reversed(w))],
        "mem_input": [" ".join(w[:8]), " ".join(w[:27])],
        "mem_target": [" ".join(w[8:10]), " ".join(w[27:29])],
        "gen_input": [" ".join(w[3:7]), " ".join(w[20:24])],
        "gen_target": [w[9], w[26]],
        "hard_gen_input": [" ".join(w[5:9])],
        "hard_gen_target": [w[22]],
    }


@pytest.fixture(scope="module")
def vocabulary(tiny_model_dirs):
    from workflow_scripts.models.loading import load_model

    _, tok = load_model(tiny_model_dirs["llama"], device="cpu")
    words = sorted(w for w in tok.get_vocab() if w.isalpha() and w.islower() and len(w) > 3)
    return tok, words


def test_prepend_and_truncate_keeps_the_row_length_exactly():
    row = list(range(100, 116))
    out = prepend_truncate([1, 2, 3, 4, 5], row, 16)
    assert len(out) == 16 and out[:5] == [1, 2, 3, 4, 5] and out[5:] == row[:11]
    assert prepend_truncate(list(range(20)), row, 16) == list(range(16))  # longer knowledge: all knowledge
    assert prepend_truncate([], row, 16) == row


def test_the_schedule_gives_each_paraphrase_item_version_i_at_injection_i_and_each_once_item_exactly_once():
    schedule = injection_schedule(4, 6, 10, versions=10)
    para = [e for e in schedule if e.kind == "paraphrase"]
    assert len(para) == 40
    assert all(e.version == e.injection for e in para)
    assert sorted((e.item, e.injection) for e in para) == [(p, i) for p in range(4) for i in range(10)]
    once = [e for e in schedule if e.kind == "once"]
    assert sorted(e.item for e in once) == [0, 1, 2, 3, 4, 5]
    assert [e.injection for e in sorted(once, key=lambda e: e.item)] == [0, 1, 3, 5, 6, 8]
    assert all(e.version == 0 for e in once)
    # versions cycle when an item has fewer versions than injections
    assert [e.version for e in injection_schedule(1, 0, 5, versions=[3])] == [0, 1, 2, 0, 1]


def test_group_names_run_from_1_to_10_with_injection_0_in_group_10():
    assert [group_name(k) for k in range(12)] == [10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1]


def test_an_injection_fills_its_first_step_rows_and_spills_into_the_next_step():
    schedule = injection_schedule(4, 6, 10)
    placed = place_sequences(schedule, steps=40, injections=10, batch_size=4)
    assert len(placed) == 46 and sorted(placed.values()) == list(range(46))
    at = {index: key for key, index in placed.items()}
    # injection 0: 4 paraphrase sequences fill step 0, its once item takes row 0 of step 1
    assert [at[i] for i in range(5)] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    # injection 2 (no once item) starts at step 8
    assert {at[i] for i, e in enumerate(schedule) if e.injection == 2} == {(8, 0), (8, 1), (8, 2), (8, 3)}
    with pytest.raises(ValueError, match="more than 4 sequences"):
        place_sequences(injection_schedule(5, 0, 2), steps=2, injections=2, batch_size=4)


def test_probe_filtering_keeps_only_probes_whose_targets_are_inside_the_kept_span():
    words = [f"w{i:02d}" for i in range(30)]
    item = synthetic_item(words, 0)
    kept_context = " ".join(words[:12])  # w00 .. w11
    kept = filter_probes(item, kept_context)
    assert [(p["probe_type"], p["probe"]) for p in kept] == [("mem", 0), ("gen", 0)]
    assert kept[0]["char_end"] == len(" ".join(words[:10])) <= len(kept_context)
    # mem probes go by offset: a target string that occurs only before its input does not count
    repeated = {**item, "mem_target": ["w09", "w02"]}  # w02 occurs before the cut, but not after the input
    assert [p["probe"] for p in filter_probes(repeated, kept_context) if p["probe_type"] == "mem"] == [0]
    # gen/hard_gen targets found in another trained version's kept text count
    rotated_kept = " ".join((words[20:] + words[:20])[:12])  # w20 .. w29, w00, w01
    kept = filter_probes(item, kept_context, [rotated_kept])
    assert [(p["probe_type"], p["probe"]) for p in kept] == [("mem", 0), ("gen", 0), ("gen", 1), ("hard_gen", 0)]
    with pytest.raises(ValueError, match="prefix"):
        filter_probes(item, "not the context")


def test_acquisition_is_positive_when_log_probs_rise_and_negative_when_they_fall():
    assert acquisition(-4.0, -3.0) == pytest.approx(0.25)
    assert acquisition(-4.0, -5.0) == pytest.approx(-0.25)
    assert acquisition(-2.0, -2.0) == 0.0
    assert math.isnan(acquisition(0.0, -1.0))


def test_generic_windows_are_exact_width_round_robin_over_documents():
    docs = [list(range(0, 10)), list(range(100, 105)), list(range(200, 207))]
    assert generic_windows(docs, 4, 3) == [[0, 1, 2], [100, 101, 102], [200, 201, 202], [3, 4, 5]]
    with pytest.raises(ValueError, match="only 6 windows"):
        generic_windows(docs, 7, 3)


def test_probe_steps_are_0_every_probe_every_steps_and_the_end():
    assert probe_steps(40, 20) == [0, 20, 40]
    assert probe_steps(10, 4) == [0, 4, 8, 10]


def test_a_missing_data_dir_names_the_config_key_and_the_expected_files(tmp_path):
    with pytest.raises(ValueError, match=r"entropy\.injection\.data_dir is not set.*paraphrase70\.json.*once60\.json"):
        data_paths(None)
    (tmp_path / DATA_FILES["paraphrase"]).write_text("[]")
    with pytest.raises(ValueError, match=r"entropy\.injection\.data_dir.*lacks .*once60\.json"):
        data_paths(tmp_path)


def test_the_run_prepends_cut_knowledge_to_rows_that_keep_their_length(vocabulary):
    tok, words = vocabulary
    spec = InjectionSpec(paraphrase_items=2, once_items=1, injections=2, steps=4, batch_size=2, max_tokens=16,
                         knowledge_tokens=12, probe_every=2)
    rows = [[7] * 16 for _ in range(8)]
    items = [synthetic_item(words, 0), synthetic_item(words, 40), synthetic_item(words, 80)]
    batches, injected, probes = prepare_run(tok, items[:2], items[2:], rows, spec)
    assert [len(r) for b in batches for r in b] == [16] * 8
    assert [(r["step"], r["row"], r["kind"], r["version"]) for r in injected] == [
        (0, 0, "paraphrase", 0), (0, 1, "paraphrase", 0), (1, 0, "once", 0),
        (2, 0, "paraphrase", 1), (2, 1, "paraphrase", 1)]
    ids, kept = cut_text(tok, items[0]["train_context"], 12)
    assert len(ids) == 12 and kept == " ".join(items[0]["train_context"].split()[:12])
    assert batches[0][0] == ids + [7] * 4 and batches[1][1] == [7] * 16
    # per item: mem 0, gen 0 (inside the context's first 12 words); paraphrase items also gen 1 and
    # hard_gen 0, whose targets are in their rotated version's kept text
    assert sorted((p["kind"], p["item"], p["probe_type"], p["probe"]) for p in probes) == sorted(
        [(k, i, "mem", 0) for k, i in [("paraphrase", 0), ("paraphrase", 1), ("once", 0)]]
        + [(k, i, "gen", 0) for k, i in [("paraphrase", 0), ("paraphrase", 1), ("once", 0)]]
        + [("paraphrase", i, t, n) for i in (0, 1) for t, n in (("gen", 1), ("hard_gen", 0))])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_two_injection_run_on_the_tiny_model_raises_the_injected_items_probe_log_prob(tiny_model_dirs, vocabulary,
                                                                                     family):
    from workflow_scripts.models.loading import load_model

    _, words = vocabulary
    model, tok = load_model(tiny_model_dirs[family], device="cpu")
    # generic text without the items' words (words 5..89), so their probes can only gain from the injections
    other = words[150:]
    generic = [" ".join(other[(17 * d + 3 * i) % len(other)] for i in range(60)) for d in range(12)]
    # one step per injection: step 0 trains the paraphrase item's version 0 and the once item, step 1 its version 1
    spec = InjectionSpec(paraphrase_items=1, once_items=1, injections=2, steps=2, batch_size=2, max_tokens=24,
                         knowledge_tokens=16, probe_every=1, lr=3e-3)
    result = run_injection(model, tok, [synthetic_item(words, 5)], [synthetic_item(words, 60)], generic[:10],
                           generic[10:], spec)
    probes = result.probes
    assert sorted(probes.step.unique()) == [0, 1, 2]
    assert len(probes) == 3 * result.run["probes_kept"] == 3 * 6 and result.run["trained_tokens"] == 2 * 2 * 24
    assert [(r["step"], r["kind"], r["version"]) for r in result.run["injected"]] == [
        (0, "paraphrase", 0), (0, "once", 0), (1, "paraphrase", 1)]
    assert len(result.run["losses"]) == 2 and all(math.isfinite(x) for x in result.run["losses"])
    metrics = injection_metrics(probes).set_index(["kind", "probe_type"])
    for kind in ("paraphrase", "once"):
        k0, k1 = metrics.loc[(kind, "all"), ["K_start", "K_end"]]
        assert k1 > k0 and metrics.loc[(kind, "all"), "A"] > 0
    assert all(math.isfinite(r["heldout_perplexity"]) and r["heldout_perplexity"] > 1 for r in result.run["probe_steps"])


def test_injection_metrics_count_exact_matches_with_wilson_intervals():
    probes = pd.DataFrame({
        "kind": ["once"] * 4, "item": [0, 0, 0, 0], "probe_type": ["mem", "mem", "mem", "mem"],
        "probe": [0, 1, 0, 1], "step": [0, 0, 5, 5], "logprob": [-4.0, -2.0, -2.0, -1.0],
        "correct": [False, False, True, False]})
    m = injection_metrics(probes).set_index("probe_type")
    assert m.loc["mem", "K_start"] == -3.0 and m.loc["mem", "K_end"] == -1.5 and m.loc["mem", "A"] == 0.5
    assert (m.loc["mem", "em_start"], m.loc["mem", "em_end"], m.loc["mem", "probes"]) == (0, 1, 2)
    assert m.loc["mem", "em_end_lo"] == pytest.approx(0.0945, abs=1e-4)
    assert m.loc["mem", "em_end_hi"] == pytest.approx(0.9055, abs=1e-4)
    assert m.loc["all", "A"] == 0.5


def test_the_real_item_files_give_ten_versions_and_kept_probes_under_a_120_token_cut():
    paraphrase = load_items(shared_file("knowledge-entropy", DATA_FILES["paraphrase"]), 4)
    once = load_items(shared_file("knowledge-entropy", DATA_FILES["once"]), 6)
    assert [len(item_versions(it)) for it in paraphrase] == [10] * 4
    # every mem input is a verbatim part of train_context, as the offset filter assumes
    assert all(it["train_context"].find(p) >= 0 for it in paraphrase + once for p in it["mem_input"])
    context = once[0]["train_context"]
    kept = filter_probes(once[0], context[:530])  # about the first 120 SmolLM2 tokens
    assert [(p["probe_type"], p["probe"]) for p in kept if p["probe_type"] == "mem"] == [("mem", 0)]
    assert all(p["target"] in context[:530] for p in kept)


def test_enabling_the_injection_without_its_files_fails_at_parse_time_and_with_them_plans_one_job_per_checkpoint(
        tmp_path, tiny_model_dirs):
    from conftest import snakemake, write_config

    # (tune_lr off: the test config's tuning scenario predates method resuscitate)
    write_config(tmp_path, tiny_model_dirs["gpt2"], updates__tune_lr=False,
                 entropy__injection={"enabled": True, "data_dir": None})
    proc = snakemake(tmp_path, "-n", "results/report/entropy_injection.md")
    assert proc.returncode != 0
    assert "entropy.injection.data_dir is not set" in proc.stdout + proc.stderr
    data = tmp_path / "items"
    data.mkdir()
    for name in DATA_FILES.values():
        (data / name).write_text("[]")
    write_config(tmp_path, tiny_model_dirs["gpt2"], updates__tune_lr=False,
                 entropy__injection={"enabled": True, "data_dir": str(data), "checkpoints": ["base", "fold0_A"]})
    proc = snakemake(tmp_path, "-n", "results/report/entropy_injection.md")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
              if line.split()[:1] in (["entropy_injection"], ["entropy_injection_report"])}
    assert counts == {"entropy_injection": 2, "entropy_injection_report": 1}, proc.stdout[-3000:]
