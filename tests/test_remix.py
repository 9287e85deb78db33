"""REMIX building blocks (workflow_scripts.remix): mixing text sources, the mixing step, the key-value
recall set and the logit lens, on the tiny models and small local texts."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_scripts.evaluation.exact_match import score_targets
from workflow_scripts.facts.schema import flat_facts, normalise_records, to_table
from workflow_scripts.models.architectures import blocks
from workflow_scripts.models.encoding import encode_pair, pad_id, pad_right
from workflow_scripts.remix.kvr import ALPHABET, kvr_records
from workflow_scripts.remix.lens import emergence_layers, lens_logits, lens_ranks, lens_table
from workflow_scripts.remix.mixing import fact_mask, mix, mixing_count
from workflow_scripts.remix.textsources import (CODE_FILES, arithmetic_rows, code_files, code_lines, code_rows,
                                                prose_rows, random_word_rows, source_rows, text_words,
                                                vocabulary_words, window_starts, with_instruction)

WORD = re.compile(r"[a-z]{3,10}")


@pytest.fixture(scope="module")
def facts(starter):
    flat = flat_facts(starter[:12])
    return pd.DataFrame({"prompt": flat.prompt, "target": flat.target_true, "case_id": flat.case_id})


@pytest.fixture(scope="module")
def fact_texts(starter):
    flat = flat_facts(starter)
    return list(flat.prompt) + list(flat.target_true)


def _unique_word_file(tmp_path, lengths):
    """A text file of blank-line separated paragraphs of the given word counts; every word is unique."""
    paragraphs, k = [], 0
    for length in lengths:
        paragraphs.append(" ".join(f"w{k + i}" for i in range(length)))
        k += length
    path = tmp_path / "prose.txt"
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


# --- random words --------------------------------------------------------------------------------


def test_vocabulary_words_are_the_space_prefixed_lowercase_tokens_of_a_byte_level_vocabulary(fact_texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(fact_texts * 3, trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")

    words = vocabulary_words(tok, fallback_texts="", min_words=1)
    assert words and words == sorted(set(words))
    assert words == vocabulary_words(tok, fallback_texts="", min_words=1)
    for word in words:
        assert WORD.fullmatch(word)
        ids = tok(" " + word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.decode(ids) == " " + word
    expected = sorted({tok.decode([i])[1:] for i in range(len(tok))
                       if tok.decode([i]).startswith(" ") and WORD.fullmatch(tok.decode([i])[1:])})
    assert words == expected


def test_word_level_tokenizers_fall_back_to_the_words_of_the_given_text(tiny, fact_texts):
    _, _, tok = tiny
    words = vocabulary_words(tok, fallback_texts=fact_texts)
    assert words == text_words(fact_texts) and len(words) > 50
    assert all(WORD.fullmatch(w) for w in words) and words == sorted(set(words))
    with pytest.raises(ValueError, match="fallback"):
        vocabulary_words(tok, fallback_texts=["NO WORDS 42 HERE"])


def test_random_word_rows_are_seeded_with_exact_word_counts_from_the_list():
    words = [f"word{c}" for c in "abcdefghij"]
    rows = random_word_rows(words, 40, n_in=5, n_out=3, seed="remix|random|0|1")
    assert list(rows.columns) == ["prompt", "target", "kind"] and len(rows) == 40
    assert set(rows.kind) == {"random"}
    for prompt, target in zip(rows.prompt, rows.target):
        assert len(prompt.split(" ")) == 5 and len(target.split(" ")) == 3
        assert set(prompt.split(" ")) | set(target.split(" ")) <= set(words)
    pd.testing.assert_frame_equal(rows, random_word_rows(words, 40, n_in=5, n_out=3, seed="remix|random|0|1"))
    assert not rows.equals(random_word_rows(words, 40, n_in=5, n_out=3, seed="remix|random|0|2"))
    assert len(random_word_rows(words, 0, 5, 3)) == 0
    with pytest.raises(ValueError):
        random_word_rows([], 3)
    with pytest.raises(ValueError):
        random_word_rows(words, 3, n_in=0)


# --- generic prose -------------------------------------------------------------------------------


def test_prose_windows_tile_each_document_without_overlap_and_have_n_in_plus_n_out_words(tmp_path):
    lengths = [37, 50, 23, 9]
    path = _unique_word_file(tmp_path, lengths)
    source = f"file:{path}"
    n_windows = sum(length // 10 for length in lengths)
    assert window_starts(lengths, 10) == [(d, s) for d, length in enumerate(lengths) for s in range(0, length - 9, 10)]
    rows = prose_rows(n_windows, n_in=6, n_out=4, source=source, seed=3)
    seen: set[str] = set()
    for prompt, target in zip(rows.prompt, rows.target):
        words = prompt.split(" ") + target.split(" ")
        assert len(prompt.split()) == 6 and len(target.split()) == 4
        numbers = [int(w[1:]) for w in words]
        assert numbers == list(range(numbers[0], numbers[0] + 10))  # consecutive words of one paragraph
        assert not seen & set(words)
        seen |= set(words)
    assert set(rows.kind) == {"generic"}
    pd.testing.assert_frame_equal(rows, prose_rows(n_windows, 6, 4, source, seed=3))
    with pytest.raises(ValueError, match="only"):
        prose_rows(n_windows + 1, 6, 4, source, seed=3)


def test_wikipedia_prose_windows_are_seeded_and_of_the_right_length():
    try:
        rows = prose_rows(64, n_in=8, n_out=8, seed=1)
    except FileNotFoundError:
        pytest.skip("the gensim wheel (its Wikipedia sample) is not installed")
    assert len(rows) == 64 and rows.prompt.is_unique
    assert all(len(p.split()) == 8 and len(t.split()) == 8 for p, t in zip(rows.prompt, rows.target))
    pd.testing.assert_frame_equal(rows, prose_rows(64, 8, 8, seed=1))
    assert not rows.equals(prose_rows(64, 8, 8, seed=2))
    with pytest.raises(ValueError, match="only"):
        prose_rows(10**6, 8, 8)


# --- Python source -------------------------------------------------------------------------------


def test_stdlib_code_windows_are_deterministic_comment_free_and_of_the_right_length():
    files = code_files()
    assert len(files) == len(CODE_FILES) and all(f.suffix == ".py" for f in files)
    rows = code_rows(48, n_in=8, n_out=8, seed=0)
    assert len(rows) == 48 and set(rows.kind) == {"code"}
    for prompt, target in zip(rows.prompt, rows.target):
        assert len(prompt.split()) == 8 and len(target.split()) == 8
        for line in (prompt + "\n" + target).splitlines():
            assert line.strip() and not line.lstrip().startswith("#")
    pd.testing.assert_frame_equal(rows, code_rows(48, 8, 8, seed=0))
    assert not rows.equals(code_rows(48, 8, 8, seed=1))


def test_code_lines_drop_comments_and_blank_lines_but_keep_hashes_inside_strings(tmp_path):
    source = ('#!/usr/bin/env python\n"""Doc."""\n\nimport os  # trailing\n\n\ndef f(x):\n'
              '    # a comment\n    return "#not a comment" + x   \n')
    assert code_lines(source) == ['"""Doc."""', "import os", "def f(x):", '    return "#not a comment" + x']
    path = tmp_path / "m.py"
    path.write_text(source, encoding="utf-8")
    rows = code_rows(1, n_in=3, n_out=2, files=[path])
    assert rows.prompt[0] == '"""Doc."""\nimport os' and rows.target[0] == "def f(x):"
    with pytest.raises(ValueError, match="only"):
        code_rows(4, n_in=3, n_out=2, files=[path])
    with pytest.raises(FileNotFoundError):
        code_files([tmp_path / "missing.py"])


# --- arithmetic ----------------------------------------------------------------------------------

PROBLEMS = [
    (re.compile(r"(\w+) has (\d+) (\w+) and buys (\d+) more\. How many \3 does \1 have now\?"),
     lambda a, b: a + b),
    (re.compile(r"(\w+) has (\d+) (\w+) and gives (\d+) to \w+\. How many \3 does \1 have left\?"),
     lambda a, b: a - b),
    (re.compile(r"(\w+) buys (\d+) bags with (\d+) (\w+) in each\. How many \4 does \1 buy in total\?"),
     lambda a, b: a * b),
    (re.compile(r"(\w+) shares (\d+) (\w+) equally among (\d+) friends\. How many \3 does each friend get\?"),
     lambda a, b: a // b if a % b == 0 else None),
]


def _solve(question: str) -> tuple[int, int | None]:
    for i, (pattern, op) in enumerate(PROBLEMS):
        m = pattern.fullmatch(question)
        if m:
            numbers = [int(g) for g in m.groups() if g.isdigit()]
            assert len(numbers) == 2
            return i, op(*numbers)
    raise AssertionError(f"unparsed problem: {question!r}")


def test_arithmetic_word_problems_have_correct_answers_and_are_seeded():
    rows = arithmetic_rows(400, seed=5)
    assert len(rows) == 400 and set(rows.kind) == {"arithmetic"}
    kinds = set()
    for question, answer in zip(rows.prompt, rows.target):
        kind, expected = _solve(question)
        kinds.add(kind)
        assert answer.isdigit() and int(answer) == expected and expected > 0
    assert kinds == {0, 1, 2, 3}
    pd.testing.assert_frame_equal(rows, arithmetic_rows(400, seed=5))
    assert not rows.equals(arithmetic_rows(400, seed=6))


def test_source_rows_dispatch_to_each_kind_and_the_instruction_prefixes_prompts(tiny, fact_texts):
    _, _, tok = tiny
    random_rows = source_rows("random", 5, seed=1, tokenizer=tok, fallback_texts=fact_texts)
    assert len(random_rows) == 5 and all(len(p.split()) == 6 for p in random_rows.prompt)
    assert list(source_rows("arithmetic", 3, seed=1).target) == list(arithmetic_rows(3, seed=1).target)
    code = source_rows("code", 2, n_in=4, n_out=4)
    assert all(len(t.split()) == 4 for t in code.target)
    prefixed = with_instruction(code, "Complete the following partial passage:")
    assert all(p == "Complete the following partial passage:\n\n" + q for p, q in zip(prefixed.prompt, code.prompt))
    assert with_instruction(code, None) is code
    with pytest.raises(ValueError, match="tokenizer"):
        source_rows("random", 2)
    with pytest.raises(ValueError, match="unknown"):
        source_rows("poetry", 2)


# --- mixing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1, 1.5, 2.0])
def test_mixing_appends_exactly_int_r_n_rows_and_leaves_the_fact_rows_unchanged(facts, ratio):
    pool = arithmetic_rows(40, seed=0)
    mixed = mix(facts, pool, ratio, seed="remix|arithmetic|0|1")
    k = int(ratio * len(facts))
    assert len(mixed) == len(facts) + k == len(facts) + mixing_count(len(facts), ratio)
    mask = fact_mask(mixed)
    assert mask.tolist() == [True] * len(facts) + [False] * k
    kept = mixed[mask].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept[["prompt", "target"]], facts[["prompt", "target"]].reset_index(drop=True))
    assert kept.case_id.tolist() == facts.case_id.tolist()  # a facts-only column: values kept
    assert set(mixed.kind[mask]) == {"fact"} and set(mixed.kind[~mask]) == {"arithmetic"}
    mixed_rows = list(zip(mixed.prompt[~mask], mixed.target[~mask]))
    assert len(set(mixed_rows)) == k and set(mixed_rows) <= set(zip(pool.prompt, pool.target))
    pd.testing.assert_frame_equal(mixed, mix(facts, pool, ratio, seed="remix|arithmetic|0|1"))


def test_mixing_with_ratio_zero_is_a_no_op(facts):
    pool = arithmetic_rows(5)
    out = mix(facts, pool, 0, seed=1)
    pd.testing.assert_frame_equal(out, facts)
    assert out is not facts and fact_mask(out).all()


def test_mixing_raises_when_there_are_too_few_mixing_rows(facts):
    with pytest.raises(ValueError, match="needs 24 mixing rows"):
        mix(facts, arithmetic_rows(23), 2, seed=0)
    with pytest.raises(ValueError, match="ratio"):
        mix(facts, arithmetic_rows(30), -1, seed=0)
    with pytest.raises(ValueError, match="target"):
        mix(facts.rename(columns={"target": "answer"}), arithmetic_rows(30), 1, seed=0)


def test_different_stage_seeds_choose_different_mixing_rows(facts):
    pool = arithmetic_rows(200, seed=0)
    a = mix(facts, pool, 1, seed="remix|arithmetic|0|1")
    b = mix(facts, pool, 1, seed="remix|arithmetic|0|2")
    assert list(a.prompt[~fact_mask(a)]) != list(b.prompt[~fact_mask(b)])


# --- key-value recall ----------------------------------------------------------------------------


def test_kvr_records_are_schema_valid_with_unique_keys_and_a_different_new_target(tiny):
    _, _, tok = tiny
    records = kvr_records(seed=4)
    assert len(records) == 96 and records == kvr_records(seed=4) and records != kvr_records(seed=5)
    assert normalise_records(records, "again") == records
    assert to_table(records).num_rows == 96
    flat = flat_facts(records)
    assert flat.subject.is_unique and (flat.target_new != flat.target_true).all()
    assert flat.prompt.tolist() == [f"The value of key {k} is" for k in flat.subject]
    assert all(len(k) == 6 and set(k) <= set(ALPHABET) for k in flat.subject)
    assert all(len(v) == 4 and set(v) <= set(ALPHABET) for v in flat.target_true)
    assert set(flat.target_new) <= set(flat.target_true)  # another key's value
    for record, row in zip(records, flat.itertuples()):
        key = row.subject
        assert record["paraphrase_prompts"] == [f"Key {key} has the value", f"The key {key} maps to"]
        for prompt in [row.prompt, *record["paraphrase_prompts"]]:
            encode_pair(tok, prompt, row.target_true)


def test_kvr_refuses_alphabets_too_small_for_unique_keys():
    with pytest.raises(ValueError, match="keys"):
        kvr_records(n=9, key_chars=3, alphabet="AB")
    assert len({r["requested_rewrite"]["subject"] for r in kvr_records(n=8, key_chars=3, alphabet="AB")}) == 8
    single = kvr_records(n=1)
    assert single[0]["requested_rewrite"]["target_new"]["str"] != single[0]["requested_rewrite"]["target_true"]["str"]


# --- logit lens ----------------------------------------------------------------------------------


def test_logit_lens_at_the_last_layer_equals_the_models_own_logits(tiny, starter):
    _, model, tok = tiny
    flat = flat_facts(starter[:10])
    pairs = [encode_pair(tok, p, t) for p, t in zip(flat.prompt, flat.target_true)]
    input_ids, mask = pad_right([p.ids[:p.target_start] for p in pairs], pad_id(tok))
    positions = torch.tensor([p.target_start - 1 for p in pairs])
    lens = lens_logits(model, input_ids, mask.long(), positions)
    assert lens.shape == (len(pairs), len(blocks(model)), model.config.vocab_size)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask.long()).logits
    own = logits[torch.arange(len(pairs)), positions].float()
    torch.testing.assert_close(lens[:, -1], own, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(lens[:, 0], own, atol=1e-3)  # earlier layers really are different


def test_lens_ranks_at_the_last_layer_are_the_first_token_ranks_of_scoring(tiny, starter):
    _, model, tok = tiny
    flat = flat_facts(starter[:20])
    prompts, targets = flat.prompt.tolist(), flat.target_true.tolist()
    ranks = lens_ranks(model, tok, prompts, targets, batch_size=6)
    assert ranks.shape == (20, len(blocks(model))) and (ranks >= 1).all()
    scored = score_targets(model, tok, prompts, targets)
    assert ranks[:, -1].tolist() == scored.first_token_rank.tolist()
    table = lens_table(model, tok, prompts, targets, batch_size=6)
    assert table.final_rank.tolist() == ranks[:, -1].tolist()
    assert table[[f"rank_{l}" for l in range(ranks.shape[1])]].to_numpy().tolist() == ranks.tolist()
    np.testing.assert_array_equal(table.emergence_layer.to_numpy(), emergence_layers(ranks))


def test_emergence_layer_is_the_first_layer_from_which_the_answer_stays_top():
    ranks = np.array([
        [3, 1, 1, 1],  # top from layer 1 on
        [1, 2, 1, 1],  # top at 0, lost at 1, back from 2
        [1, 1, 1, 1],  # top throughout
        [1, 1, 1, 2],  # lost at the last layer: never emerges
        [5, 4, 3, 2],  # never top
        [9, 9, 9, 1],  # only the last layer
    ])
    got = emergence_layers(ranks)
    assert got[:3].tolist() == [1.0, 2.0, 0.0] and got[5] == 3.0
    assert math.isnan(got[3]) and math.isnan(got[4])
    with pytest.raises(ValueError):
        emergence_layers(np.array([1, 2, 3]))


# --- the REMIX experiment (workflow_scripts.remix.experiment / report) ---------------------------------

from workflow_scripts.remix.experiment import (AFTER_STAGE1, Cell, cells_from_grids, cut_answer, fact_rows,  # noqa: E402
                                               generation_exact_match, run_stage1_arm, starts_with_answer,
                                               stops_after_answer)
from workflow_scripts.remix.report import cell_metrics, comparisons  # noqa: E402
from workflow_scripts.training.train import TrainConfig, train  # noqa: E402


def test_the_default_cells_are_the_four_core_cells_and_three_non_factoid_stage2_types():
    grids = [{"stage1": ["none", "random"], "stage2": "facts", "mixing": ["none", "generic"]},
             {"stage1": "none", "stage2": ["prose", "code", "arithmetic", "facts"], "mixing": "none"}]
    names = [c.name for c in cells_from_grids(grids)]
    assert names == ["none/facts/none", "none/facts/generic", "random/facts/none", "random/facts/generic",
                     "none/prose/none", "none/code/none", "none/arithmetic/none"]  # none/facts/none only once
    with pytest.raises(ValueError, match="stage2 must be one of"):
        cells_from_grids({"stage1": "none", "stage2": "poetry"})
    with pytest.raises(ValueError, match="unknown keys"):
        cells_from_grids({"stage1": "none", "stage2": "facts", "ratio": 2})


@pytest.mark.parametrize("text, answer", [(" Paris. It is", "Paris"), (" Paris\nThe", "Paris"),
                                          (" Paris, France", "Paris"), (" New York City is", "New York City is"),
                                          (" U.S.A", "U.S.A")])
def test_generated_answers_are_cut_at_the_first_line_break_or_sentence_end(text, answer):
    assert cut_answer(text) == answer


@pytest.mark.parametrize("text, target, starts, stops", [(" Paris Paris Paris", "Paris", True, False),
                                                         (" Paris. It", "paris", True, True),
                                                         (" Parisian food", "Paris", False, False),
                                                         (" New  York\n", "New York", True, True)])
def test_generation_answers_start_with_the_target_at_a_word_boundary_and_may_also_stop(text, target, starts, stops):
    assert starts_with_answer(text, target) is starts and stops_after_answer(text, target) is stops


def test_generation_exact_match_decodes_greedily_from_the_prompt(tiny):
    family, model, tok = tiny
    if family != "llama":
        pytest.skip("one family is enough")
    model = _copy(model)
    prompts, targets = ["The capital of France is", "The capital of Spain is"], ["Paris.", "Madrid Madrid"]
    train(model, tok, prompts, targets, TrainConfig(lr=3e-3, epochs=60, batch_size=2))
    assert score_targets(model, tok, prompts, targets).correct.all()
    hits, texts = generation_exact_match(model, tok, prompts, ["Paris", "Madrid"], extra_tokens=2)
    assert hits.tolist() == [True, True], texts
    assert [stops_after_answer(x, t) for x, t in zip(texts, ["Paris", "Madrid"])] == [True, False], texts
    wrong, _ = generation_exact_match(model, tok, prompts, ["Madrid", "Paris"], extra_tokens=2)
    assert not wrong.any()


def _kvr_halves(n, seed):
    """Two halves of a small key-value set, as stage-1 and stage-2 facts."""
    records = kvr_records(n, 3, 2, seed=seed)
    return (fact_rows(records, [r["case_id"] for r in records[: n // 2]]),
            fact_rows(records, [r["case_id"] for r in records[n // 2:]]))


def _copy(model):
    other = type(model)(model.config)
    other.load_state_dict(model.state_dict())
    return other


def test_each_stage2_cell_starts_from_the_same_stage1_weights(tiny):
    family, model, tok = tiny
    if family != "llama":
        pytest.skip("one family is enough")
    first, second = _kvr_halves(8, 1)
    cfg = TrainConfig(lr=3e-3, epochs=3, batch_size=4)
    cells = [Cell("none", "facts", "generic"), Cell("none", "arithmetic", "none"), Cell("none", "facts", "none")]
    both, stages = run_stage1_arm(_copy(model), tok, "kvr", "none", cells, first, second, cfg, cfg, ratio=1.0, fold=0)
    alone, _ = run_stage1_arm(_copy(model), tok, "kvr", "none", cells[-1:], first, second, cfg, cfg, ratio=1.0, fold=0)
    assert both.cell.value_counts().to_dict() == {AFTER_STAGE1: 4, **{c.name: 4 for c in cells}}
    last = both[both.cell == "none/facts/none"].reset_index(drop=True)
    same = alone[alone.cell == "none/facts/none"].reset_index(drop=True)
    np.testing.assert_array_equal(last.mean_logprob, same.mean_logprob)  # the earlier cells left no trace
    counts = stages.set_index("cell")
    assert counts.loc["none/facts/generic", "mix_rows"] == 4 and counts.loc["none/facts/none", "mix_rows"] == 0
    assert counts.loc[AFTER_STAGE1, "steps"] == 3 and counts.loc["none/facts/generic", "steps"] == 3 * 2
    assert counts.loc["none/arithmetic/none", "stage2_rows"] == 4


def _outcomes(cells_correct: dict, after1=(True, True, True, True)):
    rows = []
    for stage1 in ("none", "random"):
        rows += [{"set": "facts", "stage1": stage1, "cell": AFTER_STAGE1, "case_id": i, "correct": c,
                  "generation_em": c, "emergence_layer": 1.0} for i, c in enumerate(after1)]
    for name, correct in cells_correct.items():
        rows += [{"set": "facts", "stage1": name.split("/")[0], "cell": name, "case_id": i, "correct": c,
                  "generation_em": False, "emergence_layer": 2.0} for i, c in enumerate(correct)]
    return pd.DataFrame(rows)


def test_cells_one_factor_apart_are_compared_by_exact_mcnemar_on_the_same_facts():
    outcomes = _outcomes({"none/facts/none": [True, False, False, False], "none/facts/generic": [True, True, True, True],
                          "random/facts/none": [True, True, True, False], "random/facts/generic": [True] * 4,
                          "none/prose/none": [True, True, True, True]}, after1=(True, True, True, False))
    order = ["none/facts/none", "none/facts/generic", "random/facts/none", "random/facts/generic", "none/prose/none"]
    tests = comparisons(outcomes, order)
    pairs = {(t.baseline, t.cell): t for t in tests.itertuples()}
    assert set(pairs) == {("none/facts/none", "none/facts/generic"), ("none/facts/none", "random/facts/none"),
                          ("none/facts/generic", "random/facts/generic"), ("random/facts/none", "random/facts/generic"),
                          ("none/facts/none", "none/prose/none")}
    generic = pairs[("none/facts/none", "none/facts/generic")]
    assert (generic.factor, generic.only_baseline, generic.only_cell) == ("mixing", 0, 3)
    assert generic.p_exact == pytest.approx(0.25)  # 3 discordant pairs all one way: 2 x 1/8
    metrics = cell_metrics(outcomes, pd.DataFrame({"set": ["facts"], "cell": ["none/facts/none"], "stage2_learned": [2],
                                                    "stage2_rows": [4], "steps": [8], "mix_rows": [0], "seconds": [1.0]}))
    base = metrics.set_index("cell").loc["none/facts/none"]
    # kept: of the 3 facts known after stage 1, 1 still known; exact after stage 2: 1 of all 4
    assert (base.retention_k, base.retention_n, base.exact_k, base.exact_n) == (1, 3, 1, 4)
    assert (base.stage2_learned_k, base.stage2_rows) == (2, 4)


def test_a_reused_cell_scores_the_saved_model_instead_of_training(tiny, tmp_path):
    family, model, tok = tiny
    if family != "llama":
        pytest.skip("one family is enough")
    first, second = _kvr_halves(8, 2)
    cfg = TrainConfig(lr=3e-3, epochs=3, batch_size=4)
    trained = _copy(model)
    train(trained, tok, list(second.prompts), list(second.targets), cfg)
    trained.save_pretrained(tmp_path / "ab")
    cell = Cell("none", "facts", "none")
    outcomes, stages = run_stage1_arm(_copy(model), tok, "kvr", "none", [cell], first, second, None, cfg, ratio=1.0, fold=0,
                                      reused={cell.name: str(tmp_path / "ab")})
    expected = score_targets(trained, tok, list(first.prompts), list(first.targets))
    got = outcomes[outcomes.cell == cell.name].reset_index(drop=True)
    np.testing.assert_allclose(got.mean_logprob, expected.mean_logprob, rtol=1e-6)
    row = stages.set_index("cell").loc[cell.name]
    assert row.seconds == 0.0 and row.steps == 3 and row.reused == str(tmp_path / "ab")
