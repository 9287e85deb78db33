"""Novel (unknown) facts that look like the familiar ones.

The fictionaliser keeps a real fact's relation, prompt template and paraphrase/generation texts, and
replaces its subject and objects with invented names of the same kind (a person by a person, a city
by a city). Real entities map to invented ones consistently ("Paris" is the same invented city in
every novel fact), so novel facts share objects the way real ones do and get real neighbourhood
prompts. Everything is seeded and deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from workflow_scripts.facts.schema import fill, normalise_records
from workflow_scripts.facts.starter import load_relations

NOVEL_CASE_ID_OFFSET = 1_000_000
MAX_PROMPTS = 10

# Kinds of CounterFact relations that the starter relations do not cover.
EXTRA_RELATION_KINDS: dict[str, tuple[str, str]] = {
    "P20": ("person", "city"),
    "P101": ("person", "field"),
    "P108": ("person", "company"),
    "P127": ("company", "company"),
    "P138": ("thing", "person"),
    "P140": ("person", "religion"),
    "P190": ("city", "city"),
    "P264": ("person", "company"),
    "P276": ("landmark", "city"),
    "P364": ("product", "language"),
    "P39": ("person", "position"),
    "P407": ("product", "language"),
    "P449": ("product", "company"),
    "P463": ("organisation", "organisation"),
    "P740": ("band", "city"),
    "P937": ("person", "city"),
    "P1412": ("person", "language"),
}

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "kr", "gl", "st", "tr", "th", "sh", "ch", "qu", "h", "j"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou", "ia"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "th", "nd", "rk"]

_PATTERNS: dict[str, list[str]] = {
    # {W}, {V} = capitalised invented words, {w} = lower-case, {W2} = one syllable, {X} = model code
    "person": ["{W} {V}", "{W} {V}", "{W} {V}{W2}"],
    "city": ["{W}", "{W}ora", "{W}burg", "{W}ford", "{W}ville", "{W}grad", "Port {W}"],
    "country": ["{W}ia", "{W}land", "{W}stan", "{W}ania", "{W}"],
    "language": ["{W}ese", "{W}ish", "{W}ic", "{W}an", "{W}i"],
    "company": ["{W}", "{W}", "{W} Systems", "{W} Motors", "{W}tek"],
    "product": ["{W} {X}", "{W}{W2}", "{W} {X}"],
    "landmark": ["{W} Tower", "{W} Palace", "{W} Bridge", "Temple of {W}", "{W} Gate", "{W} Castle"],
    "organisation": ["{W} Institute", "{W} Union", "{W} Council", "{W} League"],
    "instrument": ["{w}phone", "{w}lin", "{w}horn", "{w}harp", "{w}"],
    "sport": ["{w}ball", "{w}ing", "{w}"],
    "continent": ["{W}ica", "{W}asia", "{W}ea"],
    "religion": ["{W}ism", "{W}ianism"],
    "genre": ["{w} rock", "{w}core", "{w}wave", "{w} pop"],
    "occupation": ["{w}ist", "{w}er", "{w}smith", "{w}wright"],
    "river": ["{W}", "{W} River"],
    "mountain": ["Mount {W}", "{W}"],
    "band": ["The {W}s", "{W}", "{W} {V}"],
    "team": ["{W} FC", "{W} United", "{W} Rovers"],
    "position": ["{w}back", "{w} keeper", "{w}forward"],
    "field": ["{w}ology", "{w}ics", "{w}nomy"],
    "thing": ["{W}"],
}


def _word(rng: random.Random, syllables: int) -> str:
    parts = []
    for _ in range(syllables):
        parts.append(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS))
    return "".join(parts)


@dataclass
class NameMaker:
    """Invents unique names of a kind; the same (kind, real name, copy) always gets the same one."""

    seed: int
    reserved: set[str] = field(default_factory=set)
    _names: dict[tuple, str] = field(default_factory=dict)
    _used: set[str] = field(default_factory=set)

    def __post_init__(self):
        self._rng = random.Random(f"fictionaliser|{self.seed}")
        self._reserved_lower = {r.lower() for r in self.reserved}

    def invent(self, kind: str) -> str:
        patterns = _PATTERNS.get(kind, _PATTERNS["thing"])
        for _ in range(1000):
            pattern = self._rng.choice(patterns)
            name = pattern.format(
                W=_word(self._rng, self._rng.choice([1, 2, 2])).capitalize(),
                V=_word(self._rng, self._rng.choice([1, 2, 2])).capitalize(),
                W2=_word(self._rng, 1),
                w=_word(self._rng, self._rng.choice([1, 2])),
                X=f"{self._rng.choice('ABCDEFGHKLMNPRSTVXZ')}{self._rng.randint(1, 9)}",
            )
            if name not in self._used and name.lower() not in self._reserved_lower:
                self._used.add(name)
                return name
        raise RuntimeError(f"could not invent a new {kind} name")

    def name_for(self, kind: str, real: str, copy: int = 0) -> str:
        key = (kind, real, copy)
        if key not in self._names:
            self._names[key] = self.invent(kind)
        return self._names[key]


def relation_kinds() -> dict[str, tuple[str, str]]:
    kinds = dict(EXTRA_RELATION_KINDS)
    kinds.update({r.id: (r.subject_kind, r.object_kind) for r in load_relations().values()})
    return kinds


def _swap_subject(texts: list[str], real: str, invented: str) -> list[str]:
    return [t.replace(real, invented) for t in texts if real in t]


def choose_sources(records: list[dict], n: int, seed: int) -> list[tuple[dict, int]]:
    """n source records, drawn without replacement (then again, as further copies, if n > len)."""
    rng = random.Random(f"novel-sources|{seed}")
    picked: list[tuple[dict, int]] = []
    copy = 0
    while len(picked) < n:
        order = list(range(len(records)))
        rng.shuffle(order)
        picked.extend((records[i], copy) for i in order[: n - len(picked)])
        copy += 1
    return picked


def build_novel_records(
    sources: list[tuple[dict, int]],
    inventions: list[dict],
    names: NameMaker,
    generator: str,
) -> list[dict]:
    """CounterFact records for novel facts.

    ``inventions[i]`` gives the invented ``subject``, ``target_true`` and ``target_new`` for
    ``sources[i]``; texts are rebuilt from the source record with the subject swapped.
    """
    kinds = relation_kinds()
    relations = load_relations()
    drafts = []
    for i, ((src, _copy), inv) in enumerate(zip(sources, inventions)):
        rw = src["requested_rewrite"]
        real, subj = rw["subject"], inv["subject"]
        rel = relations.get(rw["relation_id"])
        paraphrases = _swap_subject(src["paraphrase_prompts"], real, subj)
        if not paraphrases:
            paraphrases = [fill(p, subj) for p in (rel.paraphrases if rel else (rw["prompt"],))]
        generation = _swap_subject(src["generation_prompts"], real, subj)
        if not generation:
            generation = [fill(p, subj) for p in rel.generation] if rel else list(paraphrases)
        drafts.append(
            {
                "case_id": NOVEL_CASE_ID_OFFSET + i,
                "pararel_idx": None,
                "requested_rewrite": {
                    "prompt": rw["prompt"],
                    "relation_id": rw["relation_id"],
                    "subject": subj,
                    "target_true": {"str": inv["target_true"], "id": None},
                    "target_new": {"str": inv["target_new"], "id": None},
                },
                "paraphrase_prompts": paraphrases,
                "generation_prompts": generation,
                "source": generator,
            }
        )
    by_object: dict[str, list[int]] = {}
    for i, d in enumerate(drafts):
        by_object.setdefault(d["requested_rewrite"]["target_true"]["str"], []).append(i)

    def prompt_of(j: int) -> str:
        rw = drafts[j]["requested_rewrite"]
        return fill(rw["prompt"], rw["subject"])

    for i, d in enumerate(drafts):
        rw = d["requested_rewrite"]
        true, new = rw["target_true"]["str"], rw["target_new"]["str"]
        neighbours = [prompt_of(j) for j in by_object[true] if j != i][:MAX_PROMPTS]
        subject_kind = kinds.get(rw["relation_id"], ("thing", "thing"))[0]
        while len(neighbours) < 2:
            # a further invented subject that shares the invented object, in the same template
            neighbours.append(fill(rw["prompt"], names.invent(subject_kind)))
        d["neighborhood_prompts"] = neighbours
        d["attribute_prompts"] = [prompt_of(j) for j in by_object.get(new, [])][:MAX_PROMPTS]
    return normalise_records(drafts, f"{generator} novel facts")


def reserved_names(records: list[dict]) -> set[str]:
    out = set()
    for r in records:
        rw = r["requested_rewrite"]
        out.update((rw["subject"], rw["target_true"]["str"], rw["target_new"]["str"]))
    return out


def fictionalise(records: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` novel facts made from the given real facts (see the module docstring)."""
    if not records:
        raise ValueError("no facts to fictionalise")
    kinds = relation_kinds()
    names = NameMaker(seed, reserved=reserved_names(records))
    sources = choose_sources(records, n, seed)
    inventions = []
    for src, copy in sources:
        rw = src["requested_rewrite"]
        s_kind, o_kind = kinds.get(rw["relation_id"], ("thing", "thing"))
        true = names.name_for(o_kind, rw["target_true"]["str"])
        new = names.name_for(o_kind, rw["target_new"]["str"])
        if new == true:  # only if the real record had equal targets, which validation forbids
            new = names.invent(o_kind)
        inventions.append(
            {"subject": names.name_for(s_kind, rw["subject"], copy), "target_true": true, "target_new": new}
        )
    return build_novel_records(sources, inventions, names, "fictionaliser")
