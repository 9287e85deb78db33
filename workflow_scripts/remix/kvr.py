"""Key-value recall (KVR): random keys and values as facts in the project's CounterFact schema.

REMIX's second stage-1 set. Keys and values are random strings over an alphabet (A–Z and 0–9 by
default), so no model knows them before training. Per record:

- ``requested_rewrite``: prompt ``"The value of key {} is"``, subject = the key, relation ``KVR``,
  ``target_true`` = the key's value, ``target_new`` = the value of another key (drawn so that it
  differs from the true value; a fresh random value when no other value differs);
- ``paraphrase_prompts``: ``"Key {key} has the value"`` and ``"The key {key} maps to"``;
- ``neighborhood_prompts``: the prompts of other keys with the same value (usually none);
- ``attribute_prompts``: the prompts of keys whose value is this record's ``target_new``;
- ``generation_prompts``: ``"When the key is {key}, the value is"`` (the seed's question form).

Keys are unique; records are seeded and validated with
:func:`workflow_scripts.facts.schema.normalise_records`.
"""

from __future__ import annotations

import random
import string

from workflow_scripts.facts.schema import fill, normalise_records

ALPHABET = string.ascii_uppercase + string.digits
RELATION_ID = "KVR"
PROMPT = "The value of key {} is"
PARAPHRASES = ("Key {} has the value", "The key {} maps to")
GENERATION = ("When the key is {}, the value is",)
MAX_PROMPTS = 10


def _random_string(rng: random.Random, length: int, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def kvr_records(n: int = 96, key_chars: int = 6, value_chars: int = 4, alphabet: str = ALPHABET,
                seed: int | str = 0, first_case_id: int = 0) -> list[dict]:
    """``n`` key-value recall facts as validated CounterFact records (``case_id`` from
    ``first_case_id`` on, ``source`` ``"kvr"``); the same arguments give the same records.

    Raises ValueError when the alphabet cannot make ``n`` distinct keys or the sizes are invalid.
    """
    for name, value in (("n", n), ("key_chars", key_chars), ("value_chars", value_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    alphabet = "".join(dict.fromkeys(alphabet))  # distinct symbols, order kept
    if len(alphabet) < 2 or any(ch.isspace() or ch in "{}" for ch in alphabet):
        raise ValueError(f"the alphabet needs at least two symbols and no spaces or braces, got {alphabet!r}")
    if len(alphabet) ** key_chars < n:
        raise ValueError(f"{len(alphabet)} symbols make only {len(alphabet) ** key_chars} keys of "
                         f"{key_chars} characters, fewer than n = {n}")
    rng = random.Random(f"kvr|{seed}")
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < n:
        key = _random_string(rng, key_chars, alphabet)
        if key not in seen:
            seen.add(key)
            keys.append(key)
    values = [_random_string(rng, value_chars, alphabet) for _ in range(n)]
    several = len(set(values)) > 1
    news = []
    for value in values:
        new = value
        while several and new == value:  # another key's value (some key's value differs)
            new = values[rng.randrange(n)]
        while new == value:  # every key has this value: a fresh one
            new = _random_string(rng, value_chars, alphabet)
        news.append(new)
    by_value: dict[str, list[int]] = {}
    for i, value in enumerate(values):
        by_value.setdefault(value, []).append(i)

    records = []
    for i, (key, value, new) in enumerate(zip(keys, values, news)):
        neighbours = [fill(PROMPT, keys[j]) for j in by_value[value] if j != i]
        attributes = [fill(PROMPT, keys[j]) for j in by_value.get(new, [])]
        records.append({
            "case_id": first_case_id + i,
            "pararel_idx": None,
            "requested_rewrite": {
                "prompt": PROMPT,
                "relation_id": RELATION_ID,
                "subject": key,
                "target_true": {"str": value, "id": None},
                "target_new": {"str": new, "id": None},
            },
            "paraphrase_prompts": [fill(p, key) for p in PARAPHRASES],
            "neighborhood_prompts": neighbours[:MAX_PROMPTS],
            "attribute_prompts": attributes[:MAX_PROMPTS],
            "generation_prompts": [fill(p, key) for p in GENERATION],
            "source": "kvr",
        })
    return normalise_records(records, "kvr facts")


__all__ = ["ALPHABET", "GENERATION", "PARAPHRASES", "PROMPT", "RELATION_ID", "kvr_records"]
