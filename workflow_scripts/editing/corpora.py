"""Offline text for the key statistics (C = E[k kᵀ]).

Corpora, by id:

- ``gensim_wiki`` (default): the shortened English Wikipedia dump (2016; 106 articles, Anarchism,
  Autism, Albedo, ...) that the ``gensim`` wheel ships as test data. The file is located without
  importing gensim and read with ``bz2``; wiki markup is stripped crudely (templates, tables, refs,
  files, categories, lists and headings go; links keep their text) into prose paragraphs.
- ``gensim_news``: ``lee_background.cor`` from the same wheel (300 short Australian news articles).
- ``model_samples``: text sampled from the model itself (seeded, top-k 40), from openers taken from
  the wiki articles' titles when available (circular; an ablation).
- ``file:<path>``: a local UTF-8 text file; blank-line separated paragraphs are the texts.

:func:`corpus_id` names a corpus for cache keys (a file's id includes its content hash).
"""

from __future__ import annotations

import bz2
import hashlib
import html
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path
from typing import Iterator

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
CORPORA = ("gensim_wiki", "gensim_news", "model_samples", "file:<path>")


def gensim_test_file(name: str) -> Path:
    """Path of a file in gensim's ``test/test_data``, found without importing gensim."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("gensim")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "test" / "test_data" / name for p in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.files("gensim") or []:
            if f.name == name:
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    for entry in sys.path:
        candidates.append(Path(entry) / "gensim" / "test" / "test_data" / name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"gensim's test data file {name!r} was not found: pip install gensim "
                            "(the wheel ships it), or choose another covariance corpus")


# --- wiki markup ---------------------------------------------------------------------------------

_PAGE = re.compile(r"<page>(.*?)</page>", re.S)
_TITLE = re.compile(r"<title>(.*?)</title>", re.S)
_NS = re.compile(r"<ns>(\d+)</ns>")
_TEXT = re.compile(r"<text[^>]*>(.*?)</text>", re.S)
_LINK = re.compile(r"\[\[(?!(?:[A-Za-z]+|[a-z]{2,3}(?:-[a-z]+)?):)(?:[^\[\]|]*\|)?([^\[\]|]*)\]\]")
_OTHER_LINK = re.compile(r"\[\[[^\[\]]*\]\]")
_EXTERNAL = re.compile(r"\[(?:https?|ftp)://[^\s\]]+\s*([^\]]*)\]")
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_NON_PROSE = re.compile(r"<(math|code|pre|gallery|timeline|score|syntaxhighlight|source)\b[^>]*>.*?</\1>", re.S | re.I)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"<[^>]+>")
_QUOTES = re.compile(r"'{2,}")
_MARKERS = ("=", "*", "#", ":", ";", "|", "!", "{", "}", "[[", "__")


_BRACKETS = re.compile(r"\{\{|\}\}|\{\||\|\}")


def _drop_templates_and_tables(text: str) -> str:
    """Remove ``{{...}}`` templates and ``{|...|}`` tables, nested, by a bracket scan (regexes fail on
    templates that contain single braces); a table opens only at the start of a line."""
    out, stack, last = [], [], 0
    for m in _BRACKETS.finditer(text):
        token, i = m.group(), m.start()
        if token == "{|" and i > 0 and text[i - 1] != "\n":
            continue
        if token in ("{{", "{|"):
            if not stack:
                out.append(text[last:i])
            stack.append(token)
        elif stack and stack[-1] == ("{{" if token == "}}" else "{|"):
            stack.pop()
            if not stack:
                last = m.end()
    if not stack:
        out.append(text[last:])
    return "".join(out)


def _repeat(pattern: re.Pattern, repl, text: str) -> str:
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


def strip_wiki(markup: str, min_words: int = 8) -> str:
    """Prose paragraphs of a wiki article (joined by newlines), markup removed crudely."""
    text = html.unescape(markup)
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _NON_PROSE.sub("", text)
    text = _drop_templates_and_tables(text)
    text = _repeat(_LINK, r"\1", text)  # ordinary links keep their text, innermost first
    text = _repeat(_OTHER_LINK, "", text)  # files, images, categories, interwiki links
    text = _EXTERNAL.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    paragraphs = []
    for line in text.split("\n"):
        line = line.strip()
        if not line or line.startswith(_MARKERS):
            continue
        line = " ".join(line.replace("()", " ").split())
        if len(line.split()) >= min_words:
            paragraphs.append(line)
    return "\n".join(paragraphs)


def wiki_articles(path: str | Path | None = None, min_words: int = 50) -> Iterator[tuple[str, str]]:
    """(title, prose) of each article (namespace 0, not a redirect) in a MediaWiki XML dump (.bz2)."""
    path = Path(path) if path is not None else gensim_test_file(WIKI_FILE)
    with bz2.open(path, "rt", encoding="utf-8") as f:
        data = f.read()
    for page in _PAGE.finditer(data):
        body = page.group(1)
        ns = _NS.search(body)
        if (ns and ns.group(1) != "0") or "<redirect" in body:
            continue
        text = _TEXT.search(body)
        if not text:
            continue
        prose = strip_wiki(text.group(1))
        if len(prose.split()) >= min_words:
            title = _TITLE.search(body)
            yield (html.unescape(title.group(1)) if title else ""), prose


def news_articles(path: str | Path | None = None) -> Iterator[str]:
    path = Path(path) if path is not None else gensim_test_file(NEWS_FILE)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = " ".join(line.split())
        if line:
            yield line


def file_texts(path: str | Path) -> Iterator[str]:
    text = Path(path).read_text(encoding="utf-8")
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if para:
            yield para


def model_samples(model, tokenizer, n: int, length: int = 128, seed: int = 0, top_k: int = 40,
                  openers: list[str] | None = None) -> Iterator[str]:
    """``n`` texts of ``length`` new tokens sampled from the model with ``generate`` (top-k), each
    under its own forked, seeded RNG state."""
    import torch

    if openers is None:
        try:
            openers = [" ".join(p.split()[:3]) for _, p in wiki_articles()]
        except FileNotFoundError:
            openers = ["The", "In", "A", "It", "This", "There", "When", "One"]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for i in range(n):
        ids = torch.tensor([tokenizer(openers[i % len(openers)])["input_ids"]], device=device)
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(int(seed) * 1_000_003 + i)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=top_k,
                                 max_new_tokens=length, min_new_tokens=length, pad_token_id=pad)
        yield tokenizer.decode(out[0], skip_special_tokens=True)


def corpus_texts(corpus: str, model=None, tokenizer=None, seed: int = 0) -> Iterator[str]:
    """The texts of a corpus, in a fixed order."""
    if corpus == "gensim_wiki":
        for _, prose in wiki_articles():
            yield prose
    elif corpus == "gensim_news":
        yield from news_articles()
    elif corpus == "model_samples":
        if model is None or tokenizer is None:
            raise ValueError("the model_samples corpus needs the model and tokenizer")
        yield from model_samples(model, tokenizer, n=100_000, seed=seed)
    elif corpus.startswith("file:"):
        yield from file_texts(corpus[len("file:"):])
    else:
        raise ValueError(f"unknown covariance corpus {corpus!r}; known: {list(CORPORA)}")


def corpus_id(corpus: str, seed: int = 0) -> str:
    """A stable name of a corpus for cache keys: the corpus name (and seed for sampled text); a
    local file is named by its content's sha256. Any other name is taken as it is (texts the caller
    passes to ``covariance`` under that name)."""
    if corpus.startswith("file:"):
        path = Path(corpus[len("file:"):])
        return f"file-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    if corpus == "model_samples":
        return f"model_samples-seed{seed}"
    return corpus  # a named corpus (or the caller's own texts, named by the caller)
