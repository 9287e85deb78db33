"""What one edit asks for: a prompt that contains the subject, the subject, and the target to write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EditRequest:
    prompt: str  # the filled prompt, subject inside ("The capital of France is")
    subject: str
    target: str  # the object to write (" " is put in front when it is tokenised after the prompt)
    case_id: Any = None

    def __post_init__(self):
        if not self.subject or not self.prompt.strip() or not self.target.strip():
            raise ValueError(f"empty prompt, subject or target in {self}")


def requests_from_facts(facts, target: str) -> list[EditRequest]:
    """Edit requests from flat facts (columns case_id, subject, prompt and the ``target`` column)."""
    missing = {"subject", "prompt", target} - set(facts.columns)
    if missing:
        raise ValueError(f"facts lack column(s) {sorted(missing)}")
    case_ids = facts["case_id"] if "case_id" in facts.columns else [None] * len(facts)
    return [EditRequest(str(p), str(s), str(t), c)
            for p, s, t, c in zip(facts["prompt"], facts["subject"], facts[target], case_ids)]
