"""The development sets as the query-side probes (mix_probe, gate_probe, trace_swap) read them: both whole,
split test, the judged queries in order, the corpus embeddings from the shared cache."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_SETS = ("msmarco-mini", "wikiqa-dev")


def dev_folders(data: list[str] | None) -> list[str]:
    """``--data`` folders, or both development sets in ``../shared/data``."""
    return data or [str(ROOT.parent / "shared" / "data" / n) for n in DEV_SETS]


def judged_set(m, folder: str, batch_size: int):
    """(name, dataset, corpus embeddings of ``m``, judged query ids, their texts) of one BEIR folder."""
    from searchr3.data.beir import load_beir
    from searchr3.evaluation import encode_corpus
    from searchr3.retrieval import default_corpus_cache

    ds = load_beir(folder, "test")
    corpus = encode_corpus(m, ds.corpus, batch_size=batch_size, show_progress_bar=True, cache_dir=default_corpus_cache())
    qids = ds.judged_query_ids()
    return Path(folder).name, ds, corpus, qids, [ds.queries[q] for q in qids]
