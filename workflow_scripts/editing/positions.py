"""Which token an edit reads and writes at: the subject's last token, found by character offsets.

The prompt is tokenised once, as the model sees it, and the subject-last token is the token whose
character span covers the subject's last character (so a token that runs past the end of the subject,
e.g. "France" for the subject "Fran", still counts). This is the rule the metric uses to find target
tokens (``models.encoding.encode_pair``), and it does not assume, as the reference code does, that BPE
never merges across the prefix/subject boundary.

Which occurrence: the *first* occurrence of the subject in the filled prompt (exact case, else
case-insensitive). Fact prompts contain their subject once; with a context template the prompt's own
span is shifted by the template's prefix, so a subject inside the generated prefix is never chosen.
Offsets need a fast (Rust) tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.models.encoding import encode_pair

KL_TEMPLATE = "{} is a"  # the essence prompt of the KL term


@dataclass(frozen=True)
class EncodedEdit:
    ids: list[int]
    subject_last: int  # index of the subject's last token
    target_start: int = -1  # first target token (-1: no target)
    target_end: int = -1  # one past the last target token

    @property
    def n_target(self) -> int:
        return max(0, self.target_end - self.target_start)


def subject_span(prompt: str, subject: str) -> tuple[int, int]:
    """Character span [start, end) of the subject's first occurrence in the prompt."""
    subject = subject.strip()
    if not subject:
        raise ValueError("empty subject")
    start = prompt.find(subject)
    if start < 0:
        start = prompt.lower().find(subject.lower())
    if start < 0:
        raise ValueError(f"subject {subject!r} does not occur in the prompt {prompt!r}")
    return start, start + len(subject)


def _offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("finding the subject's tokens needs a fast tokenizer (with offset mappings)")
    enc = tokenizer(text, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def token_covering(offsets: list[tuple[int, int]], char: int) -> int:
    """Index of the (non-special) token whose character span contains ``char``."""
    for i, (s, e) in enumerate(offsets):
        if e > s and s <= char < e:
            return i
    # a character no token covers (e.g. whitespace a tokenizer trims): the last token ending before it
    before = [i for i, (s, e) in enumerate(offsets) if e > s and e <= char]
    if not before:
        raise ValueError(f"no token covers or precedes character {char}")
    return before[-1]


def subject_last_index(tokenizer, prompt: str, subject: str) -> int:
    """Index of the subject's last token in ``tokenizer(prompt)``."""
    _, offsets = _offsets(tokenizer, prompt)
    start, end = subject_span(prompt, subject)
    return token_covering(offsets, end - 1)


def fill_template(template: str, prompt: str) -> tuple[str, int]:
    """(template with the prompt in place of its ``{}``, where the prompt starts)."""
    if template.count("{}") != 1:
        raise ValueError(f"a context template needs exactly one '{{}}': {template!r}")
    pre, post = template.split("{}")
    return pre + prompt + post, len(pre)


def encode_edit(tokenizer, prompt: str, subject: str, target: str | None = None,
                template: str = "{}") -> EncodedEdit:
    """Tokenise ``template`` filled with ``prompt`` (followed by `` target`` when given, tokenised
    jointly as the metric does) and locate the subject's last token and the target tokens."""
    text, shift = fill_template(template, prompt)
    start, end = subject_span(prompt, subject)
    last_char = shift + end - 1
    if target is None:
        ids, offsets = _offsets(tokenizer, text)
        return EncodedEdit(ids, token_covering(offsets, last_char))
    pair = encode_pair(tokenizer, text, target)
    ids, offsets = _offsets(tokenizer, f"{text.rstrip()} {target.strip()}")
    if ids != pair.ids:
        raise ValueError(f"tokenisation of {text!r} + {target!r} is not reproducible")
    index = token_covering(offsets, last_char)
    if index >= pair.target_start:
        raise ValueError(f"the subject {subject!r} ends inside the target in {text!r} + {target!r}")
    return EncodedEdit(pair.ids, index, pair.target_start, pair.target_end)
