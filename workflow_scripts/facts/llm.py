"""Novel facts written by an LLM through the ``openai`` client (optional generator).

The model only invents names (subject, true object, wrong object) for each real fact it is shown;
the record is then built exactly as the fictionaliser builds it, so both generators give the same
schema and style. Every response is cached on disk under the hash of its request, so a rerun sends
nothing. Items that are invalid or duplicates are rejected and counted. Timeouts, 429s and 5xx are
retried with exponential backoff. The API key is read from the environment variable *named* in the
config and never logged or written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from workflow_scripts.facts.fictionalise import (
    NameMaker,
    build_novel_records,
    choose_sources,
    reserved_names,
)
from workflow_scripts.facts.schema import fill
from workflow_scripts.io import atomic_path

log = logging.getLogger(__name__)

RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "facts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "subject": {"type": "string"},
                    "target_true": {"type": "string"},
                    "target_new": {"type": "string"},
                },
                "required": ["id", "subject", "target_true", "target_new"],
            },
        }
    },
    "required": ["facts"],
}
MAX_NAME_CHARS = 60


@dataclass(frozen=True)
class LLMSettings:
    base_url: str
    model: str
    api_key_env: str | None
    prompt_file: str
    response_format: str = "json_schema"
    facts_per_request: int = 5
    temperature: float = 0.7
    max_tokens: int = 600
    timeout_s: float = 60
    max_retries: int = 5
    cache_dir: str = "cache/llm"
    backoff_s: float = 1.0


@dataclass
class GenerationStats:
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    unparsable_responses: int = 0
    accepted: int = 0
    rejected_invalid: int = 0
    rejected_duplicate: int = 0
    reasons: dict = field(default_factory=dict)

    def reject(self, kind: str, reason: str) -> None:
        setattr(self, f"rejected_{kind}", getattr(self, f"rejected_{kind}") + 1)
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def read_prompt(path: str | os.PathLike) -> str:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.startswith("#")).strip()


def api_key(settings: LLMSettings) -> str:
    if settings.api_key_env is None:
        return "not-needed"
    key = os.environ.get(settings.api_key_env)
    if not key:
        raise RuntimeError(
            f"the environment variable {settings.api_key_env!r} (novel.llm.api_key_env) is not set; "
            "export the API key there, or set api_key_env to null for a server that needs none"
        )
    return key


def response_format(style: str) -> dict:
    if style == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "novel_facts", "schema": RESPONSE_SCHEMA}}
    if style == "json_object":
        return {"type": "json_object", "schema": RESPONSE_SCHEMA}
    raise ValueError(f"unknown response_format {style!r}; use json_schema or json_object")


class CachedChat:
    """Chat completions with an on-disk cache keyed by the request, and retries with backoff."""

    def __init__(self, settings: LLMSettings, stats: GenerationStats, client=None):
        self.settings = settings
        self.stats = stats
        self.cache_dir = Path(settings.cache_dir)
        if client is None:
            import openai

            client = openai.OpenAI(
                base_url=settings.base_url, api_key=api_key(settings),
                timeout=settings.timeout_s, max_retries=0,
            )
        self.client = client

    def request_key(self, request: dict) -> str:
        blob = json.dumps({"base_url": self.settings.base_url, **request}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def complete(self, messages: list[dict], seed: int) -> str:
        import openai

        request = {
            "model": self.settings.model,
            "messages": messages,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
            "seed": seed,
            "response_format": response_format(self.settings.response_format),
        }
        path = self.cache_dir / f"{self.request_key(request)}.json"
        if path.is_file():
            self.stats.cache_hits += 1
            return json.loads(path.read_text(encoding="utf-8"))["content"]
        retryable = (
            openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError,
        )
        for attempt in range(self.settings.max_retries + 1):
            try:
                self.stats.requests += 1
                response = self.client.chat.completions.create(**request)
                break
            except retryable as exc:
                if attempt == self.settings.max_retries:
                    raise RuntimeError(
                        f"LLM request to {self.settings.base_url} failed after {attempt + 1} attempts: "
                        f"{type(exc).__name__}"
                    ) from None
                self.stats.retries += 1
                wait = self.settings.backoff_s * 2**attempt
                log.warning("LLM request failed (%s); retry %d in %.1f s", type(exc).__name__, attempt + 1, wait)
                time.sleep(wait)
        content = response.choices[0].message.content or ""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"request": request, "content": content}, indent=1), encoding="utf-8")
        return content


def _clean_name(value) -> str | None:
    if not isinstance(value, str):
        return None
    value = " ".join(value.split())
    if not value or len(value) > MAX_NAME_CHARS or any(c in value for c in "{}"):
        return None
    return value


def generate_llm_novel(
    records: list[dict], n: int, seed: int, settings: LLMSettings, client=None
) -> tuple[list[dict], GenerationStats]:
    """Ask the LLM for fictional counterparts of ``n`` real facts; returns (records, stats).

    Fewer than ``n`` records (possibly none) come back if the model keeps producing invalid items
    after being shown three times as many source facts as requested.
    """
    stats = GenerationStats()
    chat = CachedChat(settings, stats, client)
    system = read_prompt(settings.prompt_file)
    reserved = reserved_names(records)
    reserved_lower = {r.lower() for r in reserved}
    candidates = choose_sources(records, 3 * n, seed)
    accepted: list[tuple[tuple[dict, int], dict]] = []
    used: set[str] = set()
    k = settings.facts_per_request
    for start in range(0, len(candidates), k):
        if len(accepted) >= n:
            break
        chunk = candidates[start : start + k]
        shown = []
        for i, (src, _copy) in enumerate(chunk):
            rw = src["requested_rewrite"]
            shown.append(
                {
                    "id": i,
                    "sentence": f"{fill(rw['prompt'], rw['subject'])} {rw['target_true']['str']}",
                    "subject": rw["subject"],
                    "object": rw["target_true"]["str"],
                    "wrong_object": rw["target_new"]["str"],
                }
            )
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": json.dumps(shown, ensure_ascii=False)},
        ]
        content = chat.complete(messages, seed=seed + start)
        try:
            items = json.loads(content)["facts"]
            if not isinstance(items, list):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            stats.unparsable_responses += 1
            stats.reject("invalid", "unparsable response")
            continue
        answered: set[int] = set()
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("id"), int) or not 0 <= item["id"] < len(chunk):
                stats.reject("invalid", "missing or unknown id")
                continue
            names = [_clean_name(item.get(key)) for key in ("subject", "target_true", "target_new")]
            if None in names:
                stats.reject("invalid", "missing, empty or malformed name")
                continue
            subject, true, new = names
            if len({x.lower() for x in names}) < 3:
                stats.reject("invalid", "subject and targets not all different")
                continue
            if any(x.lower() in reserved_lower for x in names):
                stats.reject("invalid", "reuses a real name")
                continue
            if item["id"] in answered or subject.lower() in used:
                stats.reject("duplicate", "duplicate subject or id")
                continue
            answered.add(item["id"])
            used.add(subject.lower())
            accepted.append((chunk[item["id"]], {"subject": subject, "target_true": true, "target_new": new}))
            if len(accepted) >= n:
                break
    stats.accepted = len(accepted)
    if len(accepted) < n:
        log.warning("only %d of %d novel facts were valid", len(accepted), n)
    if not accepted:
        return [], stats
    names = NameMaker(seed, reserved=reserved | used)
    recs = build_novel_records([a[0] for a in accepted], [a[1] for a in accepted], names, "llm")
    return recs, stats
