"""Reasoning traces for stage 1: what the model learns to write before ``<|embed_token|>``.

Two sources:

* ``keywords`` (default) — extractive hints without a teacher model: the terms of the positive
  passage that the query lacks, ranked by tf-idf over the training positives, written as
  ``Key terms: a, b, c.``. The model learns to name the vocabulary of the answer (not to restate
  the question) and to end with the token after a short, bounded trace, which is what teaches
  emission. Cheap: no generation.
* ``model`` — the base model's own greedy completion of the reasoning prompt, cut at the length
  limit (:func:`searchr3.sft.load_or_make_traces`); slow, and at 135M often a repetition of the query.

A trace is stored as completion token ids ending with the embedding token, the same layout the
reasoning encoder (:meth:`searchr3.SearchR3.reason`) produces.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'\-]*[A-Za-z0-9]")


def _stopwords() -> frozenset[str]:
    # bm25s ships the usual English stopword list; used rather than writing another one.
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def _stem(word: str) -> str:
    """A crude shared stem so that 'proteins' in the passage counts as present for 'protein' in the query."""
    w = word.lower()
    return w[:6] if len(w) > 6 else w.rstrip("s")


class KeywordTracer:
    """Builds ``Key terms: ...`` traces; document frequencies come from ``documents``."""

    def __init__(self, documents: Iterable[str], max_terms: int = 6) -> None:
        if max_terms < 1:
            raise ValueError("max_terms must be >= 1")
        self.max_terms = max_terms
        self.stop = _stopwords()
        df: Counter[str] = Counter()
        n = 0
        for doc in documents:
            n += 1
            df.update({_stem(w) for w in _WORD.findall(doc)})
        self.n_docs = max(n, 1)
        self.df = df

    def terms(self, query: str, positive: str) -> list[str]:
        """The passage's highest tf-idf terms that are neither stopwords nor (by stem) in the query."""
        in_query = {_stem(w) for w in _WORD.findall(query)}
        tf: Counter[str] = Counter()
        first: dict[str, str] = {}
        for w in _WORD.findall(positive):
            st = _stem(w)
            if w.lower() in self.stop or st in in_query or len(w) < 3:
                continue
            tf[st] += 1
            first.setdefault(st, w)
        idf = {st: math.log((1 + self.n_docs) / (1 + self.df.get(st, 0))) + 1.0 for st in tf}
        ranked = sorted(tf, key=lambda st: (-(1 + math.log(tf[st])) * idf[st], first[st]))
        return [first[st] for st in ranked[: self.max_terms]]

    def text(self, query: str, positive: str) -> str:
        terms = self.terms(query, positive)
        return f"{KEYWORD_PREFIX} {', '.join(terms)}." if terms else ""


KEYWORD_PREFIX = "Key terms:"


def keyword_traces(
    model, pairs: Sequence[tuple[str, str]], documents: Iterable[str], max_tokens: int, max_terms: int = 6
) -> dict[str, list[int]]:
    """{query: completion ids} for (query, positive) pairs: the keyword trace, cut to ``max_tokens``
    at a term boundary, then the embedding token. An empty trace is just the token.

    When the model's reasoning prompt already ends with :data:`KEYWORD_PREFIX` (``reasoning_prefix``),
    the trace is only its continuation (`` a, b, c.``); otherwise it starts with the prefix itself."""
    lead = "" if model.prompts.reasoning_prefix.strip() == KEYWORD_PREFIX else KEYWORD_PREFIX
    tracer = KeywordTracer(documents, max_terms)
    out: dict[str, list[int]] = {}
    for query, positive in pairs:
        if query in out:
            continue
        terms = tracer.terms(query, positive)
        ids: list[int] = []
        while terms:
            ids = model.tokenizer(f"{lead} {', '.join(terms)}.", add_special_tokens=False)["input_ids"]
            if len(ids) <= max_tokens:
                break
            terms, ids = terms[:-1], []
        out[query] = ids + [model.embed_token_id]
    return out
