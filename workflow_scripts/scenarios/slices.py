"""The one seeded slicer, and which facts a probe or stage table marks as known.

Slices are disjoint sets of case ids drawn uniformly (a seeded shuffle of the sorted ids, then
consecutive runs), written as a case_id -> slice table ('rest' = unused)."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)


def draw(pool, sizes: dict[str, int], rng: random.Random, allow_short: bool = False) -> dict[int, str]:
    """Shuffle the sorted ``pool`` with ``rng`` and give consecutive runs the names in ``sizes``
    (in order). Refuses when the pool is too small, unless ``allow_short`` (the last slices shrink)."""
    order = sorted(pool)
    need = sum(sizes.values())
    if need > len(order) and not allow_short:
        raise ValueError(f"slices {dict(sizes)} need {need} facts but only {len(order)} are available")
    rng.shuffle(order)
    names, start = {}, 0
    for name, size in sizes.items():
        for cid in order[start : start + size]:
            names[cid] = name
        start += size
    return names


def slice_table(case_ids, names: dict[int, str]) -> pd.DataFrame:
    import pandas as pd

    ids = sorted(case_ids)
    return pd.DataFrame({"case_id": ids, "slice": [names.get(c, "rest") for c in ids]})


def slice_facts(case_ids: list[int], sizes: dict[str, int], seed: int) -> pd.DataFrame:
    """Disjoint, uniformly drawn slices of all the facts (the history set H and the awareness set F)."""
    return slice_table(case_ids, draw(case_ids, sizes, random.Random(f"slices|{seed}")))


def known_case_ids(table: pd.DataFrame) -> set[int]:
    """Facts marked correct in a probe table (its target_true rows) or a stage's known table."""
    if "target_kind" in table.columns:
        table = table[table.target_kind == "true"]
    return set(table.case_id[table.correct.astype(bool)])


def true_counterfacts(records: list[dict]) -> set[int]:
    """Case ids whose counterfact target is in fact true: another record of the same relation and
    subject has it as its true object (multi-valued relations: official languages, citizenships).
    Update slices leave them out, so a "dissonant" update never teaches a true fact."""
    true_of: dict[tuple, set[str]] = {}
    for r in records:
        rw = r["requested_rewrite"]
        true_of.setdefault((rw["relation_id"], rw["subject"]), set()).add(rw["target_true"]["str"])
    return {r["case_id"] for r in records
            if r["requested_rewrite"]["target_new"]["str"] in true_of[(r["requested_rewrite"]["relation_id"],
                                                                          r["requested_rewrite"]["subject"])]}


def fold_slices(case_ids: list[int], excluded: set[int], known_by_base: set[int], sizes: dict, seed: int,
                relations: dict[int, str] | None = None) -> pd.DataFrame:
    """One fold's slices: A, B, C (|C| = |B|), D (``sizes['D']``, default 0) and the validation slice V
    (``sizes['V']``, default 0; drawn last, so it never changes the others) from the facts the
    pre-trained model does not know and that are not ``excluded`` (the history set H); K = up to
    ``sizes['known_old']`` facts it does know (outside H), then E = ``sizes['E']`` (default 0) more of them.
    Seeded by the fold. With ``relations``
    (case id -> relation), C is drawn with B's relation mix (as far as the pool allows)."""
    a, b, k_size, d = int(sizes["A"]), int(sizes["B"]), int(sizes["known_old"]), int(sizes.get("D", 0))
    v = int(sizes.get("V", 0))
    rng = random.Random(f"update-slices|{seed}")
    unknown = set(case_ids) - excluded - known_by_base
    if a + 2 * b + d + v > len(unknown):
        raise ValueError(
            f"slices A={a}, B={b}, C={b}, D={d}, V={v} need {a + 2 * b + d + v} facts the pre-trained model does not know, "
            f"outside H; only {len(unknown)} are available (lower updates.sizes or use more facts)"
        )
    names = draw(unknown, {"A": a, "B": b, "C": b, "D": d, "V": v}, rng)
    if relations is not None:
        names = match_relation_mix(names, relations, unknown)
    known = (known_by_base & set(case_ids)) - excluded
    if len(known) < k_size:
        log.warning("only %d facts known by the pre-trained model are available for K (asked for %d)", len(known), k_size)
    names.update(draw(known, {"K": k_size}, rng, allow_short=True))
    e = int(sizes.get("E", 0))
    if e:  # drawn last, with its own seed: K and every other slice stay as they were without E
        spare = known - set(names)
        if e > len(spare):
            raise ValueError(f"slice E={e} needs facts the pre-trained model knows outside H and K; only "
                             f"{len(spare)} are available (lower updates.sizes.E or known_old)")
        names.update(draw(spare, {"E": e}, random.Random(f"update-slices-E|{seed}")))
    return slice_table(case_ids, names)


def match_relation_mix(names: dict[int, str], relations: dict[int, str], pool: set[int]) -> dict[int, str]:
    """Redraw C so that its relation counts equal B's: per relation of B, the facts of the drawn C first,
    then the other facts of ``pool`` (unknown to the base model, outside H, not in A, B or D) by case id;
    where a relation has too few, the drawn C's remaining facts fill in (logged)."""
    b_counts: dict[str, int] = {}
    for cid, name in names.items():
        if name == "B":
            b_counts[relations[cid]] = b_counts.get(relations[cid], 0) + 1
    drawn = sorted(cid for cid, name in names.items() if name == "C")
    free = sorted(cid for cid in pool if names.get(cid) in (None, "C"))  # never A, B, D or V
    candidates = drawn + [cid for cid in free if cid not in set(drawn)]
    chosen: list[int] = []
    for relation, count in sorted(b_counts.items()):
        chosen.extend([cid for cid in candidates if relations.get(cid) == relation][:count])
    short = sum(b_counts.values()) - len(chosen)
    if short:
        chosen.extend([cid for cid in drawn if cid not in set(chosen)][:short])
        log.warning("C matches B's relation mix for all but %d facts", short)
    out = {cid: name for cid, name in names.items() if name != "C"}
    out.update({cid: "C" for cid in chosen})
    return out
