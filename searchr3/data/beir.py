"""BEIR-format retrieval datasets: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

BEIR's own loader (``beir.datasets.data_loader.GenericDataLoader``) is not installable offline here,
so this is a small stand-alone reader on ``json`` + ``csv`` that is stricter than BEIR's: every
malformed input raises :class:`DataError` naming the file and line.

Defined behaviour:

- Blank lines are skipped in all three files; a UTF-8 byte-order mark at the start is ignored.
- ``_id`` may be a JSON string or integer (kept as a string); ``title`` is optional; ``text`` is
  required (it may be empty). Duplicate ids, an empty corpus and a split without judgments raise.
- The qrels file has exactly three tab-separated columns (query-id, corpus-id, integer score).
  The first line is a header when its score column is not an integer; anywhere else a
  non-integer score raises. A repeated (query-id, corpus-id) pair raises.
- A qrels line whose query id is not in ``queries.jsonl`` raises: it means mismatched files, and a
  query without text cannot be evaluated. A corpus id not in the corpus only warns
  (:class:`UnknownDocumentWarning`): the judgment is kept, so such a document counts as a relevant
  document that no system can retrieve, as when evaluating on a sub-sampled corpus.
- Queries without any judgment stay in ``queries`` but are not evaluated; see
  :meth:`BeirDataset.judged_query_ids`.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BeirDataset",
    "DataError",
    "UnknownDocumentWarning",
    "available_splits",
    "doc_text",
    "judged_queries",
    "load_beir",
]


class DataError(ValueError):
    """Malformed or missing dataset input; ``path`` and ``line`` (1-based) locate it."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else Path(path)
        self.line = line
        where = "" if path is None else f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class UnknownDocumentWarning(UserWarning):
    """A qrels line references a corpus id that is not in the corpus."""


@dataclass
class BeirDataset:
    """One split of a BEIR dataset held in memory."""

    name: str
    corpus: dict[str, dict[str, str]]  # doc id -> {"title": ..., "text": ...}
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: graded relevance}
    split: str = "test"

    def judged_query_ids(self, relevance_level: int = 1) -> list[str]:
        """Ids of the queries that are evaluated (see :func:`judged_queries`), in file order."""
        judged = set(judged_queries(self.qrels, relevance_level))
        return [qid for qid in self.queries if qid in judged]

    def subset(self, max_docs: int, max_queries: int = 0) -> "BeirDataset":
        """A smaller evaluation set that every system sees the same way.

        Without ``max_queries``: the first ``max_docs`` documents (file order), with the qrels
        restricted to them (a judged document that was cut no longer counts in the ideal ranking);
        ``max_docs <= 0`` or at least the corpus size returns ``self``.

        With ``max_queries > 0``: the first ``max_queries`` judged queries (file order); their relevant
        documents first, then their other judged documents, then the first other documents, up to
        ``max_docs`` in all (no limit when ``max_docs <= 0``); qrels restricted to what is kept. For sets
        whose judged passages sit late in the file (wikiqa-dev), where the first documents alone would
        keep few queries.
        """
        if max_queries > 0:
            kept = self.judged_query_ids()[:max_queries]
            budget = max_docs if max_docs > 0 else len(self.corpus)
            relevant = {d for q in kept for d, g in self.qrels[q].items() if g > 0}
            judged = {d for q in kept for d in self.qrels[q]}
            chosen: set[str] = set()
            for group in (relevant, judged, self.corpus.keys()):
                for d in self.corpus:
                    if len(chosen) >= budget:
                        break
                    if d in group:
                        chosen.add(d)
            corpus = {d: doc for d, doc in self.corpus.items() if d in chosen}
            qrels = {q: {d: g for d, g in self.qrels[q].items() if d in corpus} for q in kept}
            qrels = {q: j for q, j in qrels.items() if any(g > 0 for g in j.values())}
            return BeirDataset(f"{self.name}[{len(qrels)}q/{len(corpus)}d]", corpus, self.queries, qrels, self.split)
        if max_docs <= 0 or max_docs >= len(self.corpus):
            return self
        corpus = dict(list(self.corpus.items())[:max_docs])
        qrels = {q: {d: g for d, g in docs.items() if d in corpus} for q, docs in self.qrels.items()}
        return BeirDataset(f"{self.name}[:{max_docs}]", corpus, self.queries, {q: j for q, j in qrels.items() if j}, self.split)

    def __repr__(self) -> str:
        return (
            f"BeirDataset(name={self.name!r}, split={self.split!r}, docs={len(self.corpus)}, "
            f"queries={len(self.queries)}, judged={len(self.judged_query_ids())})"
        )


def judged_queries(qrels: Mapping[str, Mapping[str, int]], relevance_level: int = 1) -> list[str]:
    """Query ids with at least one document judged at ``relevance_level`` or above.

    Queries with no such document have no defined recall or reciprocal rank, so they are left out
    of every average.
    """
    return [qid for qid, docs in qrels.items() if any(s >= relevance_level for s in docs.values())]


def doc_text(doc: Mapping[str, str]) -> str:
    """A document as one string: ``title + " " + text`` (BEIR's convention), or the text alone."""
    title = (doc.get("title") or "").strip()
    text = (doc.get("text") or "").strip()
    return f"{title} {text}".strip() if title else text


def available_splits(folder: str | Path) -> list[str]:
    """Split names that have a ``qrels/<split>.tsv`` file, sorted."""
    qrels_dir = Path(folder) / "qrels"
    if not qrels_dir.is_dir():
        raise DataError("no qrels/ folder", Path(folder))
    return sorted(p.stem for p in qrels_dir.glob("*.tsv") if p.is_file())


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """Load the BEIR dataset in ``folder`` with the judgments of ``split`` (rules: module doc)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("dataset folder does not exist", folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = available_splits(folder) if (folder / "qrels").is_dir() else []
        raise DataError(f"no qrels for split {split!r} (available: {splits})", qrels_path)

    corpus_path = folder / "corpus.jsonl"
    corpus = {
        doc_id: {"title": _optional_str(rec, "title", corpus_path, n), "text": text}
        for doc_id, text, rec, n in _read_records(corpus_path)
    }
    if not corpus:
        raise DataError("corpus is empty", corpus_path)
    queries = {qid: text for qid, text, _, _ in _read_records(folder / "queries.jsonl")}
    qrels = _read_qrels(qrels_path, queries, corpus)
    return BeirDataset(name=folder.name, corpus=corpus, queries=queries, qrels=qrels, split=split)


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of a UTF-8 file, without the line break."""
    if not path.is_file():
        raise DataError("file does not exist", path)
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not valid UTF-8 ({e.reason} at byte {e.start})", path, n) from None
            if n == 1:
                line = line.removeprefix("\ufeff")
            yield n, line.rstrip("\r\n")


def _read_records(path: Path) -> Iterator[tuple[str, str, dict, int]]:
    """(id, text, record, line number) for each JSON line; checks ids and text."""
    seen: set[str] = set()
    for n, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", path, n) from None
        if not isinstance(rec, dict):
            raise DataError(f"expected a JSON object, got {type(rec).__name__}", path, n)
        rid = rec.get("_id")
        if isinstance(rid, bool) or not isinstance(rid, str | int) or str(rid) == "":
            raise DataError("missing or invalid '_id' (need a non-empty string or integer)", path, n)
        rid = str(rid)
        if rid in seen:
            raise DataError(f"duplicate id {rid!r}", path, n)
        seen.add(rid)
        text = rec.get("text")
        if not isinstance(text, str):
            raise DataError(f"record {rid!r}: missing or non-string 'text'", path, n)
        yield rid, text, rec, n


def _optional_str(rec: dict, key: str, path: Path, line: int) -> str:
    value = rec.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{key!r} must be a string", path, line)
    return value


def _read_qrels(path: Path, queries: Mapping[str, str], corpus: Mapping[str, object]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    unknown_docs: set[str] = set()
    numbered = list(_read_lines(path))
    first_line = next((n for n, line in numbered if line.strip()), None)
    rows = csv.reader((line for _, line in numbered), delimiter="\t", quoting=csv.QUOTE_NONE)
    for (n, _), row in zip(numbered, rows, strict=True):
        fields = [f.strip() for f in row]
        if not any(fields):
            continue
        if len(fields) != 3:
            raise DataError(
                f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(fields)}",
                path,
                n,
            )
        qid, did, score_text = fields
        try:
            score = int(score_text)
        except ValueError:
            if n == first_line:
                continue  # header line, e.g. "query-id  corpus-id  score"
            raise DataError(f"score {score_text!r} is not an integer", path, n) from None
        if not qid or not did:
            raise DataError("empty query-id or corpus-id", path, n)
        if qid not in queries:
            raise DataError(f"query id {qid!r} is not in queries.jsonl", path, n)
        if did not in corpus:
            unknown_docs.add(did)
        judged = qrels.setdefault(qid, {})
        if did in judged:
            raise DataError(f"duplicate judgment for ({qid!r}, {did!r})", path, n)
        judged[did] = score
    if not qrels:
        raise DataError("no judgments", path)
    if unknown_docs:
        warnings.warn(
            f"{path}: {len(unknown_docs)} judged corpus ids are not in the corpus "
            f"(e.g. {sorted(unknown_docs)[:3]}); the judgments are kept, "
            "but no system can retrieve those documents",
            UnknownDocumentWarning,
            stacklevel=3,
        )
    return qrels
