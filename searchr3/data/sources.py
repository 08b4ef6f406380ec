"""Training examples for the supervised stage: (query, positive document, hard negatives).

Sources, each a small function returning a list of :class:`Example`:

* :func:`beir_examples` — a BEIR folder's training qrels (e.g. scifact-2k: claim -> abstract).
* :func:`cloze_examples` — inverse cloze on any corpus: one sentence is the query, the rest of the
  passage (without that sentence) the positive.
* :func:`wordnet_examples` — definition -> words of a WordNet synset, read from Debian's
  ``wordnet-base`` data files (``apt-get install wordnet-base``).
* :func:`add_bm25_negatives` — hard negatives from BM25 (``bm25s``) over a pool, never a known positive.

Evaluation data (msmarco-mini) is never a training source.
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

from .beir import BeirDataset, DataError, UnknownDocumentWarning, doc_text, load_beir

WORDNET_DIR = Path("/usr/share/wordnet")
_WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


@dataclass(frozen=True)
class Example:
    """One training example. ``positive_ids`` are documents that must never be used as its negatives."""

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    source: str = ""
    positive_ids: frozenset[str] = field(default_factory=frozenset)
    positive_id: str = ""  # id of ``positive`` ("" when unknown: then compared by text)
    negative_ids: tuple[str, ...] = ()  # ids of ``negatives``, in order


def load_training_folder(folder: str | Path, split: str = "train") -> BeirDataset:
    """Load a BEIR folder for training; a judged positive missing from the corpus is an error here.

    (For evaluation such a judgment only warns; for training it means the pairs cannot be built.)
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownDocumentWarning)
        try:
            return load_beir(folder, split)
        except UnknownDocumentWarning as w:
            raise DataError(f"positive documents missing from the corpus: {w}", Path(folder)) from None


def beir_examples(dataset: BeirDataset, query_ids: Sequence[str] | None = None) -> list[Example]:
    """One example per (query, document judged > 0) of ``dataset`` (restricted to ``query_ids`` if given)."""
    qids = list(dataset.qrels) if query_ids is None else list(query_ids)
    out = []
    for qid in qids:
        judged = dataset.qrels.get(qid, {})
        positives = frozenset(d for d, s in judged.items() if s > 0)
        for did in sorted(positives):
            if did not in dataset.corpus:
                raise DataError(f"positive {did!r} of query {qid!r} is not in the corpus", dataset.name)
            text = doc_text(dataset.corpus[did])
            if dataset.queries[qid].strip() and text:
                out.append(Example(dataset.queries[qid], text, source=dataset.name, positive_ids=positives, positive_id=did))
    if not out:
        raise DataError(f"no usable (query, positive) pairs in split {dataset.split!r}", dataset.name)
    return out


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


def split_sentences(text: str) -> list[str]:
    """A rule-based sentence split (full stop/!/? then a capital or digit): enough for cloze queries."""
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def cloze_examples(
    corpus: Mapping[str, Mapping[str, str]], n: int, *, seed: int = 0, min_words: int = 6, name: str = "cloze"
) -> list[Example]:
    """Inverse cloze: up to ``n`` examples, each from a different passage of ``corpus``.

    The query is the title when there is one, else a random sentence of at least ``min_words``
    words; the positive is the passage without that sentence.
    """
    rng = random.Random(seed)
    ids = sorted(corpus)
    rng.shuffle(ids)
    out = []
    for did in ids:
        if len(out) >= n:
            break
        doc = corpus[did]
        title, text = (doc.get("title") or "").strip(), (doc.get("text") or "").strip()
        if title and text:
            out.append(Example(title, text, source=name, positive_ids=frozenset([did]), positive_id=did))
            continue
        sents = split_sentences(text)
        choices = [i for i, s in enumerate(sents) if len(s.split()) >= min_words]
        if len(sents) < 3 or not choices:
            continue
        i = rng.choice(choices)
        rest = " ".join(sents[:i] + sents[i + 1 :])
        out.append(Example(sents[i], rest, source=name, positive_ids=frozenset([did]), positive_id=did))
    return out


def wordnet_available(wordnet_dir: str | Path = WORDNET_DIR) -> bool:
    return all((Path(wordnet_dir) / f).is_file() for f in _WORDNET_FILES)


def parse_wordnet_line(line: str) -> tuple[str, list[str], str] | None:
    """(synset offset, words, definition) of a WordNet ``data.*`` line; None for the licence header.

    Format (wndb(5)): ``offset lex_filenum ss_type w_cnt(hex) word lex_id ... | gloss``; the gloss
    is the definition, then optional ``; "example"`` parts.
    """
    if line.startswith("  ") or "|" not in line:
        return None
    head, gloss = line.split("|", 1)
    parts = head.split()
    count = int(parts[3], 16)
    words = [parts[4 + 2 * i].replace("_", " ") for i in range(count)]
    words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]  # adjective markers like "(a)"
    definition = gloss.split('; "')[0].strip().rstrip(";").strip()
    return parts[0], words, definition


def wordnet_examples(n: int, *, seed: int = 0, wordnet_dir: str | Path = WORDNET_DIR) -> list[Example]:
    """``n`` definition -> words examples ("a domesticated carnivorous mammal ..." -> "dog, domestic dog, ...")."""
    wordnet_dir = Path(wordnet_dir)
    if not wordnet_available(wordnet_dir):
        raise FileNotFoundError(f"WordNet data files not found in {wordnet_dir}: apt-get install wordnet-base")
    synsets = []
    for name in _WORDNET_FILES:
        with open(wordnet_dir / name, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parsed = parse_wordnet_line(line)
                if parsed and len(parsed[2].split()) >= 3:
                    synsets.append((f"{name}:{parsed[0]}", parsed[1], parsed[2]))
    rng = random.Random(seed)
    picked = rng.sample(synsets, min(n, len(synsets)))
    return [Example(d, ", ".join(w), source="wordnet", positive_ids=frozenset([sid]), positive_id=sid) for sid, w, d in picked]


def add_bm25_negatives(
    examples: Sequence[Example], pool: Mapping[str, str], n: int = 1, *, depth: int = 20, seed: int = 0
) -> list[Example]:
    """Give each example ``n`` hard negatives: the best BM25 hits in ``pool`` (id -> text) for its query
    that are not among its ``positive_ids`` nor equal to its positive; random pool documents fill in
    when BM25 finds too few.
    """
    from .bm25 import BM25Retriever

    if n <= 0:
        return list(examples)
    if len(pool) < 2:
        raise ValueError("hard-negative mining needs a pool of at least 2 documents")
    bm25 = BM25Retriever()
    bm25.index({d: {"title": "", "text": t} for d, t in pool.items()})
    run = bm25.search({str(i): ex.query for i, ex in enumerate(examples)}, k=min(depth, len(pool)))
    rng = random.Random(seed)
    ids = list(pool)
    out = []
    for i, ex in enumerate(examples):
        ok = lambda d: d not in ex.positive_ids and pool[d] != ex.positive  # noqa: E731
        negs = [d for d in run.get(str(i), {}) if ok(d)][:n]
        for _ in range(100 * n):
            if len(negs) >= n:
                break
            d = rng.choice(ids)
            if ok(d) and d not in negs:
                negs.append(d)
        out.append(replace(ex, negatives=tuple(pool[d] for d in negs), negative_ids=tuple(negs)))
    return out


def corpus_pool(dataset: BeirDataset) -> dict[str, str]:
    """A dataset's corpus as id -> text, the pool that hard negatives are mined from."""
    return {d: doc_text(doc) for d, doc in dataset.corpus.items()}
