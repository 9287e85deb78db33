"""Facts: the embedded starter set, the CounterFact loaders (on the real shared records), bad input."""

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from workflow_scripts.facts.prepare import download, prepare_facts, sha256_of
from workflow_scripts.facts.schema import (
    FACT_SCHEMA,
    FactsError,
    fill,
    flat_facts,
    load_facts_file,
    read_facts,
    write_facts,
)
from workflow_scripts.facts.starter import load_relations

from conftest import shared_file


def test_starter_set_size_and_coverage(starter):
    assert len(starter) >= 400
    relations = Counter(r["requested_rewrite"]["relation_id"] for r in starter)
    assert len(relations) >= 15
    assert set(relations) == set(load_relations())
    for r in starter:
        assert len(r["paraphrase_prompts"]) >= 1
        assert len(r["neighborhood_prompts"]) >= 2
        assert len(r["generation_prompts"]) >= 1


def test_starter_targets_are_plausible_and_neighbours_share_the_object(starter):
    objects = {}
    answer_of = {}
    relations = load_relations()
    for r in starter:
        rw = r["requested_rewrite"]
        objects.setdefault(rw["relation_id"], set()).add(rw["target_true"]["str"])
        answer_of[fill(relations[rw["relation_id"]].prompt, rw["subject"])] = rw["target_true"]["str"]
    for r in starter:
        rw = r["requested_rewrite"]
        assert rw["target_new"]["str"] != rw["target_true"]["str"]
        assert rw["target_new"]["str"] in objects[rw["relation_id"]]  # same type: an object of this relation
        for prompt in r["neighborhood_prompts"]:
            assert answer_of[prompt] == rw["target_true"]["str"]
            assert prompt != fill(relations[rw["relation_id"]].prompt, rw["subject"])
        for prompt in r["paraphrase_prompts"] + r["generation_prompts"]:
            assert rw["subject"] in prompt


def test_starter_is_deterministic(starter):
    from workflow_scripts.facts.starter import starter_records

    assert starter_records() == starter


def test_parquet_round_trip_keeps_the_schema(tmp_path, starter):
    path = tmp_path / "facts.parquet"
    write_facts(starter[:5], path)
    assert pq.read_schema(path).equals(FACT_SCHEMA)
    assert read_facts(path) == starter[:5]
    # a Parquet file is also accepted as input
    assert [r["case_id"] for r in load_facts_file(path)] == [r["case_id"] for r in starter[:5]]


@pytest.mark.parametrize(
    "name,n", [("counterfact_preknown.json", 1093), ("knwon_facts_gpt2.json", 891)]
)
def test_loader_accepts_real_counterfact_records(name, n):
    records = load_facts_file(shared_file("conflictaware", "dataset", "facts", name))
    assert len(records) == n
    first = records[0]["requested_rewrite"]
    assert first["prompt"] == "The mother tongue of {} is"
    assert first["subject"] == "Danielle Darrieux"
    assert first["target_true"] == {"str": "French", "id": "Q150"}
    assert len(records[0]["neighborhood_prompts"]) == 10
    flat = flat_facts(records)
    assert flat.prompt[0] == "The mother tongue of Danielle Darrieux is"


def test_loader_accepts_multi_counterfact_records():
    records = load_facts_file(shared_file("collabedit", "multi_counterfact-50.json"))
    assert len(records) == 46


def test_prepare_facts_from_a_real_file(tmp_path):
    src = shared_file("conflictaware", "dataset", "facts", "counterfact_preknown.json")
    out = tmp_path / "facts.parquet"
    assert prepare_facts("file", str(out), path=str(src), limit=50) == 50
    assert len(read_facts(out)) == 50


def test_truncated_json_names_the_file_and_position(tmp_path):
    src = shared_file("conflictaware", "dataset", "dataset_generation", "synthetic_gen", "unknown_phrases.json")
    out = tmp_path / "facts.parquet"
    with pytest.raises(FactsError, match=r"unknown_phrases\.json: invalid JSON at line \d+, column \d+"):
        prepare_facts("file", str(out), path=str(src))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_llm_written_novel_facts_are_not_in_the_counterfact_schema():
    src = shared_file("conflictaware", "dataset", "facts", "multi_counterfact_unknown.json")
    with pytest.raises(FactsError, match=r"record 0: missing field 'case_id'"):
        load_facts_file(src)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda r: r["requested_rewrite"].pop("subject"), r"record 3: missing or empty field 'requested_rewrite.subject'"),
        (lambda r: r["requested_rewrite"]["target_new"].pop("str"), r"record 3: .*'requested_rewrite.target_new.str'"),
        (lambda r: r.pop("paraphrase_prompts"), r"record 3: missing field 'paraphrase_prompts'"),
        (lambda r: r["requested_rewrite"].update(prompt="no slot"), r"record 3: .*exactly one '\{\}'"),
        (lambda r: r.update(case_id="x"), r"record 3: field 'case_id' must be an integer"),
        (lambda r: r.update(neighborhood_prompts="abc"), r"record 3: field 'neighborhood_prompts' must be a list"),
    ],
)
def test_bad_record_names_the_file_record_and_field(tmp_path, starter, mutate, message):
    records = json.loads(json.dumps(starter[:5]))
    mutate(records[3])
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(records))
    out = tmp_path / "out" / "facts.parquet"
    with pytest.raises(FactsError, match=r"bad\.json: " + message):
        prepare_facts("file", str(out), path=str(src))
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_duplicate_case_ids_are_rejected(tmp_path, starter):
    records = json.loads(json.dumps(starter[:3]))
    records[2]["case_id"] = records[0]["case_id"]
    src = tmp_path / "dup.json"
    src.write_text(json.dumps(records))
    with pytest.raises(FactsError, match="record 2: duplicate case_id 0"):
        load_facts_file(src)


def test_download_checks_the_sha256(tmp_path, starter):
    src = tmp_path / "cf.json"
    src.write_text(json.dumps(starter[:3]))
    digest = sha256_of(src)
    dest = tmp_path / "dl" / "counterfact.json"
    assert download(src.as_uri(), dest, digest) == digest
    assert dest.read_bytes() == src.read_bytes()
    assert (dest.parent / "counterfact.json.sha256").read_text().startswith(digest)
    bad = tmp_path / "dl2" / "counterfact.json"
    with pytest.raises(FactsError, match="sha256 mismatch"):
        download(src.as_uri(), bad, "0" * 64)
    assert not bad.exists()
