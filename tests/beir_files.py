"""Write small BEIR folders (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) for tests."""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path


def write_beir(folder: Path, docs: Mapping[str, str | Mapping[str, str]], queries: Mapping[str, str],
               qrels: Iterable[tuple[str, str, int]], split: str = "train") -> Path:
    """``docs`` maps ids to text (or to ``{"title", "text"}``); ``qrels`` are (query, doc, grade) rows."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    rows = [{"_id": d, **(t if isinstance(t, Mapping) else {"title": "", "text": t})} for d, t in docs.items()]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return folder
