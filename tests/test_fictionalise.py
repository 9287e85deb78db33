"""The fictionaliser: seeded, consistent, invented names of the right kind, same style as real facts."""

import statistics

from workflow_scripts.facts.fictionalise import NOVEL_CASE_ID_OFFSET, fictionalise, reserved_names
from workflow_scripts.facts.schema import fill


def _texts(records):
    return [fill(r["requested_rewrite"]["prompt"], r["requested_rewrite"]["subject"]) + " "
            + r["requested_rewrite"]["target_true"]["str"] for r in records]


def test_same_seed_same_facts_other_seed_other_names(starter):
    a = fictionalise(starter, 50, seed=3)
    assert a == fictionalise(starter, 50, seed=3)
    b = fictionalise(starter, 50, seed=4)
    assert [r["requested_rewrite"]["subject"] for r in a] != [r["requested_rewrite"]["subject"] for r in b]


def test_novel_facts_keep_relation_and_template_but_invent_entities(starter):
    novel = fictionalise(starter, 200, seed=1)
    real = reserved_names(starter)
    templates = {(r["requested_rewrite"]["relation_id"], r["requested_rewrite"]["prompt"]) for r in starter}
    subjects = set()
    for r in novel:
        rw = r["requested_rewrite"]
        assert (rw["relation_id"], rw["prompt"]) in templates
        for name in (rw["subject"], rw["target_true"]["str"], rw["target_new"]["str"]):
            assert name not in real
        assert rw["target_true"]["str"] != rw["target_new"]["str"]
        assert r["case_id"] >= NOVEL_CASE_ID_OFFSET
        assert r["source"] == "fictionaliser"
        assert len(r["neighborhood_prompts"]) >= 2 and r["paraphrase_prompts"] and r["generation_prompts"]
        assert all(rw["subject"] in p for p in r["paraphrase_prompts"])
        subjects.add((rw["relation_id"], rw["subject"]))
    assert len(subjects) == len(novel)  # one fictional world: a subject may recur across relations


def test_real_objects_map_consistently_so_neighbours_share_objects(starter):
    paris = [r for r in starter if r["requested_rewrite"]["target_true"]["str"] == "Paris"][:2]
    assert {r["requested_rewrite"]["relation_id"] for r in paris} <= {"P36", "P131", "P19", "P159"}
    a, b = fictionalise(paris, 2, seed=2)
    assert a["requested_rewrite"]["target_true"] == b["requested_rewrite"]["target_true"]
    prompt = lambda r: fill(r["requested_rewrite"]["prompt"], r["requested_rewrite"]["subject"])  # noqa: E731
    assert prompt(b) in a["neighborhood_prompts"] and prompt(a) in b["neighborhood_prompts"]


def test_style_and_length_match_the_real_facts(starter):
    novel = fictionalise(starter, 300, seed=5)
    real_words = statistics.mean(len(t.split()) for t in _texts(starter))
    novel_words = statistics.mean(len(t.split()) for t in _texts(novel))
    assert abs(novel_words - real_words) / real_words < 0.15
    real_chars = statistics.mean(len(t) for t in _texts(starter))
    novel_chars = statistics.mean(len(t) for t in _texts(novel))
    assert abs(novel_chars - real_chars) / real_chars < 0.2


def test_more_novel_facts_than_sources(starter):
    novel = fictionalise(starter[:10], 25, seed=0)
    assert len(novel) == 25
    assert len({r["requested_rewrite"]["subject"] for r in novel}) == 25
