"""Offline (prompt, target) rows for REMIX's data mixing.

Every source returns a DataFrame with the columns ``prompt``, ``target`` and ``kind``:

- ``random`` (:func:`random_word_rows`): ``n_in`` random words, then ``n_out`` more as the target.
  The words (:func:`vocabulary_words`) are the model's own single-token words: every vocabulary
  token that decodes to ``" " + w`` with ``w`` matching ``[a-z]{3,10}``. Word-level tokenizers
  (the tiny test models) have no such tokens; then the words of a fallback text are used.
- ``generic`` (:func:`prose_rows`): non-overlapping windows of ``n_in + n_out`` words of English
  prose, by default from the shortened English Wikipedia sample that the ``gensim`` wheel ships
  (read through :mod:`workflow_scripts.editing.corpora`), or from a local file (``file:<path>``,
  blank-line separated paragraphs).
- ``code`` (:func:`code_rows`): non-overlapping windows of ``n_in + n_out`` whitespace-separated
  tokens of the Python standard library's own source files (a fixed, sorted list), with comments
  and blank lines removed and line breaks and indentation kept.
- ``arithmetic`` (:func:`arithmetic_rows`): generated arithmetic word problems whose target is the
  number that answers them.

Windows never cross a document (article, paragraph file or source file) and never overlap; which
windows are used is a seeded sample. Asking for more windows than a source has raises ValueError
(the REMIX seed silently truncated). Seeds may be integers or strings (``random.Random`` seeds a
string through SHA-512, so a string seed gives the same rows in every process).
"""

from __future__ import annotations

import functools
import io
import random
import re
import sysconfig
import tokenize
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from workflow_scripts.editing.corpora import corpus_texts

Seed = int | str
COLUMNS = ("prompt", "target", "kind")
WORD = re.compile(r"[a-z]{3,10}")
SPACE_MARKERS = ("Ġ", "▁")  # byte-level BPE and SentencePiece spellings of a leading space
PROSE_SOURCES = ("gensim_wiki", "gensim_news", "file:<path>")

# Standard-library modules whose source is the "code" mixing text: plain, long-lived pure-Python
# modules present in every supported CPython (paths relative to the stdlib directory), sorted.
CODE_FILES = (
    "argparse.py",
    "calendar.py",
    "csv.py",
    "difflib.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "json/decoder.py",
    "json/encoder.py",
    "shlex.py",
    "string.py",
    "textwrap.py",
)

# One token of a window: (the whitespace that precedes it in the text, the token itself).
_Token = tuple[str, str]


# --- helpers -------------------------------------------------------------------------------------


def _check_count(n: int, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {n!r}")
    return n


def _check_lengths(n_in: int, n_out: int) -> None:
    for name, value in (("n_in", n_in), ("n_out", n_out)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _frame(prompts: list[str], targets: list[str], kind: str) -> pd.DataFrame:
    # "str": pandas' own string dtype (what it infers for text columns; object before pandas 3)
    return pd.DataFrame({
        "prompt": pd.Series(prompts, dtype="str"),
        "target": pd.Series(targets, dtype="str"),
        "kind": pd.Series([kind] * len(prompts), dtype="str"),
    })


def _join(tokens: Sequence[_Token]) -> str:
    """The text of consecutive tokens, without the whitespace before the first one."""
    if not tokens:
        return ""
    return tokens[0][1] + "".join(sep + tok for sep, tok in tokens[1:])


def window_starts(doc_lengths: Sequence[int], width: int) -> list[tuple[int, int]]:
    """(document, first token) of every window of ``width`` consecutive tokens, tiling each document
    from its start without overlap (a document's last ``len % width`` tokens are left out)."""
    if width < 1:
        raise ValueError(f"window width must be positive, got {width}")
    return [(d, start) for d, length in enumerate(doc_lengths) for start in range(0, length - width + 1, width)]


def _window_rows(docs: Sequence[Sequence[_Token]], n: int, n_in: int, n_out: int, seed: Seed, kind: str,
                 source: str) -> pd.DataFrame:
    """``n`` windows of ``n_in + n_out`` tokens sampled (seeded, without replacement) from the
    non-overlapping tiling of ``docs``; the first ``n_in`` tokens are the prompt, the rest the target."""
    _check_count(n)
    _check_lengths(n_in, n_out)
    width = n_in + n_out
    starts = window_starts([len(d) for d in docs], width)
    if n > len(starts):
        raise ValueError(f"{source}: asked for {n} windows of {width} words, but the source has only "
                         f"{len(starts)} non-overlapping windows of that width")
    rng = random.Random(f"{kind}|{seed}")
    chosen = [starts[i] for i in rng.sample(range(len(starts)), n)]
    prompts, targets = [], []
    for d, start in chosen:
        window = docs[d][start:start + width]
        prompts.append(_join(window[:n_in]))
        targets.append(_join(window[n_in:]))
    return _frame(prompts, targets, kind)


def with_instruction(rows: pd.DataFrame, instruction: str | None) -> pd.DataFrame:
    """A copy of ``rows`` whose prompts start with ``instruction`` and a blank line (the REMIX seed's
    ``"Complete the following partial passage:"``); the rows themselves when there is none."""
    if not instruction:
        return rows
    out = rows.copy()
    out["prompt"] = [f"{instruction.strip()}\n\n{p}" for p in out["prompt"]]
    return out


# --- random words ------------------------------------------------------------------------------


def text_words(texts: str | Iterable[str]) -> list[str]:
    """The distinct words of ``texts`` that match ``[a-z]{3,10}`` in full (after stripping the
    punctuation around them), sorted."""
    if isinstance(texts, str):
        texts = [texts]
    words = set()
    for text in texts:
        for raw in text.split():
            word = raw.strip(".,;:!?\"'()[]{}")
            if WORD.fullmatch(word):
                words.add(word)
    return sorted(words)


def vocabulary_words(tokenizer, fallback_texts: str | Iterable[str] | None = None, min_words: int = 200) -> list[str]:
    """The model's own single-token words, sorted: every vocabulary token that decodes to
    ``" " + w`` (or whose spelling is a leading-space marker, ``Ġ``/``▁``, followed by ``w``, as
    SentencePiece drops the space when decoding one token) with ``w`` matching ``[a-z]{3,10}``.

    When the vocabulary yields fewer than ``min_words`` such words (word-level tokenizers have none),
    the words of ``fallback_texts`` are returned instead (see :func:`text_words`); by default those
    of the generic prose source (the gensim Wikipedia sample). Raises ValueError when both are empty.
    """
    n = len(tokenizer)
    decoded = tokenizer.batch_decode([[i] for i in range(n)])
    spelled = tokenizer.convert_ids_to_tokens(list(range(n)))
    words = set()
    for text, token in zip(decoded, spelled):
        if text.startswith(" ") and WORD.fullmatch(text[1:]):
            words.add(text[1:])
        elif isinstance(token, str) and token[:1] in SPACE_MARKERS and WORD.fullmatch(token[1:]):
            words.add(token[1:])
    if len(words) >= max(min_words, 1):
        return sorted(words)
    fallback = text_words(fallback_texts if fallback_texts is not None else prose_texts())
    if not fallback:
        raise ValueError(f"the vocabulary has only {len(words)} single-token words and the fallback text "
                         "has no words matching [a-z]{3,10}")
    return fallback


def random_word_rows(words: Sequence[str], n: int, n_in: int = 6, n_out: int = 6, seed: Seed = 0) -> pd.DataFrame:
    """``n`` rows of uniformly random words (with replacement) from ``words``: ``n_in`` words as the
    prompt, ``n_out`` more as the target, joined by single spaces; seeded."""
    _check_count(n)
    _check_lengths(n_in, n_out)
    words = list(words)
    if not words:
        raise ValueError("no words to draw random rows from")
    rng = random.Random(f"random|{seed}")
    prompts, targets = [], []
    for _ in range(n):
        drawn = [rng.choice(words) for _ in range(n_in + n_out)]
        prompts.append(" ".join(drawn[:n_in]))
        targets.append(" ".join(drawn[n_in:]))
    return _frame(prompts, targets, "random")


# --- generic prose -----------------------------------------------------------------------------


def prose_texts(source: str = "gensim_wiki") -> list[str]:
    """The documents of a prose source, in a fixed order: ``gensim_wiki`` (the Wikipedia sample in
    the gensim wheel, one text per article), ``gensim_news`` (gensim's Lee news corpus) or
    ``file:<path>`` (a local UTF-8 file, one text per blank-line separated paragraph)."""
    if not (source in ("gensim_wiki", "gensim_news") or source.startswith("file:")):
        raise ValueError(f"unknown prose source {source!r}; known: {list(PROSE_SOURCES)}")
    if source.startswith("file:"):
        return list(corpus_texts(source))
    return list(_named_prose(source))


@functools.lru_cache(maxsize=4)
def _named_prose(source: str) -> tuple[str, ...]:
    # The wheel's files do not change within a process; a local file is re-read every time.
    return tuple(corpus_texts(source))


def prose_rows(n: int, n_in: int = 8, n_out: int = 8, source: str = "gensim_wiki", seed: Seed = 0) -> pd.DataFrame:
    """``n`` non-overlapping windows of ``n_in + n_out`` words of generic prose (see
    :func:`prose_texts`), a seeded sample; words are joined by single spaces."""
    docs = [[(" ", w) for w in text.split()] for text in prose_texts(source)]
    return _window_rows(docs, n, n_in, n_out, seed, "generic", source)


# --- Python source -----------------------------------------------------------------------------


def stdlib_dir() -> Path:
    """The directory of the running Python's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def code_files(files: Sequence[str | Path] | None = None) -> list[Path]:
    """The source files of the ``code`` source: by default :data:`CODE_FILES` in the standard library
    directory; any given list is used as it is, sorted. A missing file raises FileNotFoundError."""
    if files is None:
        paths = [stdlib_dir() / rel for rel in CODE_FILES]
    else:
        paths = sorted(Path(f) for f in files)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Python source files not found: {missing}")
    return paths


def code_lines(source: str) -> list[str]:
    """The lines of Python ``source`` without comments (full-line and trailing ones, found by the
    ``tokenize`` module, so a ``#`` inside a string stays), blank lines and trailing whitespace;
    indentation is kept. Source that does not tokenize keeps every non-blank line that does not
    start with ``#``."""
    lines = source.splitlines()
    try:
        comments = {tok.start[0]: tok.start[1]
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                    if tok.type == tokenize.COMMENT}
    except (tokenize.TokenError, IndentationError, SyntaxError):
        comments = {i + 1: 0 for i, line in enumerate(lines) if line.lstrip().startswith("#")}
    out = []
    for number, line in enumerate(lines, start=1):
        if number in comments:
            line = line[:comments[number]]
        line = line.rstrip()
        if line.strip():
            out.append(line)
    return out


def _code_tokens(lines: Sequence[str]) -> list[_Token]:
    tokens: list[_Token] = []
    for line in lines:
        indent = line[:len(line) - len(line.lstrip())]
        for i, word in enumerate(line.split()):
            tokens.append(("\n" + indent if i == 0 else " ", word))
    return tokens


def code_rows(n: int, n_in: int = 8, n_out: int = 8, seed: Seed = 0,
              files: Sequence[str | Path] | None = None) -> pd.DataFrame:
    """``n`` non-overlapping windows of ``n_in + n_out`` whitespace-separated tokens of Python source
    (see :func:`code_files` and :func:`code_lines`), a seeded sample. A window keeps its line breaks
    and indentation (so ``len(text.split())`` counts its tokens)."""
    docs = [_code_tokens(code_lines(p.read_text(encoding="utf-8"))) for p in code_files(files)]
    return _window_rows(docs, n, n_in, n_out, seed, "code", "python source")


# --- arithmetic word problems ------------------------------------------------------------------

NAMES = ("Tom", "Anna", "Ravi", "Mei", "Lucas", "Sara", "Omar", "Nina", "Jonas", "Aiko")
ITEMS = ("apples", "pencils", "marbles", "cookies", "stickers", "books", "cards", "oranges", "shells", "coins")
OPERATIONS = ("add", "subtract", "multiply", "divide")


def arithmetic_problem(rng: random.Random) -> tuple[str, str]:
    """One (question, answer) word problem of a random operation, drawn from ``rng``."""
    op = rng.choice(OPERATIONS)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if op == "add":
        a, b = rng.randint(2, 20), rng.randint(1, 20)
        return (f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?", str(a + b))
    if op == "subtract":
        other = rng.choice([x for x in NAMES if x != name])
        a = rng.randint(5, 30)
        b = rng.randint(1, a - 1)
        return (f"{name} has {a} {item} and gives {b} to {other}. How many {item} does {name} have left?",
                str(a - b))
    if op == "multiply":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return (f"{name} buys {a} bags with {b} {item} in each. How many {item} does {name} buy in total?",
                str(a * b))
    friends, each = rng.randint(2, 9), rng.randint(2, 9)
    return (f"{name} shares {friends * each} {item} equally among {friends} friends. "
            f"How many {item} does each friend get?", str(each))


def arithmetic_rows(n: int, seed: Seed = 0) -> pd.DataFrame:
    """``n`` generated arithmetic word problems (addition, subtraction, multiplication, exact
    division of small whole numbers); the target is the answer's digits; seeded."""
    _check_count(n)
    rng = random.Random(f"arithmetic|{seed}")
    pairs = [arithmetic_problem(rng) for _ in range(n)]
    return _frame([q for q, _ in pairs], [a for _, a in pairs], "arithmetic")


# --- one entry point ---------------------------------------------------------------------------

KINDS = ("random", "generic", "code", "arithmetic")
DEFAULT_LENGTHS = {"random": (6, 6), "generic": (8, 8), "code": (8, 8)}


def source_rows(kind: str, n: int, seed: Seed = 0, *, tokenizer=None, n_in: int | None = None,
                n_out: int | None = None, source: str = "gensim_wiki",
                fallback_texts: str | Iterable[str] | None = None) -> pd.DataFrame:
    """``n`` rows of one mixing kind (see :data:`KINDS`), with the default lengths of
    :data:`DEFAULT_LENGTHS` unless ``n_in``/``n_out`` are given. ``random`` needs the ``tokenizer``
    (its words, see :func:`vocabulary_words`); ``generic`` reads ``source``."""
    if kind not in KINDS:
        raise ValueError(f"unknown mixing kind {kind!r}; known: {list(KINDS)}")
    if kind == "arithmetic":
        return arithmetic_rows(n, seed)
    d_in, d_out = DEFAULT_LENGTHS[kind]
    n_in, n_out = n_in or d_in, n_out or d_out
    if kind == "random":
        if tokenizer is None:
            raise ValueError("random word rows need the model's tokenizer")
        return random_word_rows(vocabulary_words(tokenizer, fallback_texts), n, n_in, n_out, seed)
    if kind == "generic":
        return prose_rows(n, n_in, n_out, source, seed)
    return code_rows(n, n_in, n_out, seed)


__all__ = [
    "COLUMNS",
    "CODE_FILES",
    "KINDS",
    "PROSE_SOURCES",
    "arithmetic_problem",
    "arithmetic_rows",
    "code_files",
    "code_lines",
    "code_rows",
    "prose_rows",
    "prose_texts",
    "random_word_rows",
    "source_rows",
    "stdlib_dir",
    "text_words",
    "vocabulary_words",
    "window_starts",
    "with_instruction",
]
