"""Retrieval evaluation as in BEIR/MTEB: exact dense top-k, ``pytrec_eval`` metrics, timing.

Metrics (means over judged queries, see :func:`searchr3.data.beir.judged_queries`):

- ``ndcg@10``: ``ndcg_cut_10`` with graded gains;
- ``recall@100``: ``recall_100``, a document counts as relevant at ``relevance_level`` or above;
- ``mrr@10``: ``recip_rank`` on the run cut to its top 10 (``recip_rank`` alone has no cut-off).

A judged query missing from the run scores 0 on every metric (``pytrec_eval`` would silently leave
it out of the average).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pytrec_eval
from rich.table import Table

from searchr3.baselines import BM25Retriever
from searchr3.data.beir import BeirDataset, DataError, doc_text, judged_queries, load_beir
from searchr3.io import atomic_write_json
from searchr3.retrieval import CorpusEmbeddings, Run, as_numpy, cached_encode, default_corpus_cache, dense_retrieve

__all__ = [
    "METRICS",
    "CorpusEmbeddings",
    "Encoder",
    "Run",
    "System",
    "compute_metrics",
    "default_corpus_cache",
    "dense_retrieve",
    "encode_corpus",
    "encode_queries",
    "evaluate_bm25",
    "evaluate_encoder",
    "format_table",
    "run_evaluation",
    "top_k",
    "write_results",
]

METRICS = ("ndcg@10", "recall@100", "mrr@10")
_MRR_CUTOFF = 10


@runtime_checkable
class Encoder(Protocol):
    """Anything that embeds queries and documents into L2-normalised float32 rows."""

    def encode_query(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = ...,
        show_progress_bar: bool = ...,
        reasoning: bool = ...,
    ) -> np.ndarray: ...

    def encode_document(self, texts: Sequence[str], *, batch_size: int = ..., show_progress_bar: bool = ...) -> np.ndarray: ...


# (name, encoder or "bm25", query mode: False/True/"mix"[, reasoning settings: samples, mix_weight, temperature, ...])
System = tuple[str, Encoder | Literal["bm25"], bool | str] | tuple[str, Encoder | Literal["bm25"], bool | str, Mapping[str, Any]]


def encode_corpus(
    encoder: Encoder,
    corpus: Mapping[str, Mapping[str, str]],
    *,
    batch_size: int = 32,
    show_progress_bar: bool = False,
    cache_dir: str | Path | None = None,
) -> CorpusEmbeddings:
    """Encode every document of ``corpus`` (``title + " " + text``) with ``encoder``.

    With ``cache_dir``, embeddings of an encoder that has an ``embedding_key()`` (a searchr3 model:
    its fingerprint and precision) are stored under a key of that and the corpus content, and reused by later calls: the
    same model never encodes the same corpus twice. ``seconds`` is then the original encode time.
    """
    doc_ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in doc_ids]
    key = getattr(encoder, "embedding_key", None)

    def encode(positions: list[int]) -> np.ndarray:
        return encoder.encode_document([texts[i] for i in positions], batch_size=batch_size, show_progress_bar=show_progress_bar)

    out = cached_encode(encode, doc_ids, texts, fingerprint=key() if callable(key) else None, cache_dir=cache_dir)
    _check_embeddings(out.embeddings, len(doc_ids), "document")
    return out


def top_k(run: Mapping[str, Mapping[str, float]], k: int) -> Run:
    """Each query's ``k`` best documents in trec_eval's order (score, then doc id, descending)."""
    return {qid: dict(sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k]) for qid, docs in run.items()}


def compute_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    *,
    relevance_level: int = 1,
    per_query: bool = False,
) -> dict[str, Any]:
    """nDCG@10, Recall@100 and MRR@10 averaged over judged queries, plus ``num_queries``.

    With ``per_query=True`` the result also has ``per_query``: {qid: {metric: value}}.
    """
    judged = judged_queries(qrels, relevance_level)
    if not judged:
        raise ValueError(f"no query has a judgment at relevance level {relevance_level} or above")
    values = {qid: dict.fromkeys(METRICS, 0.0) for qid in judged}
    judged_qrels = {qid: {d: int(s) for d, s in qrels[qid].items()} for qid in judged}
    judged_run = {qid: {d: float(s) for d, s in run[qid].items()} for qid in judged if run.get(qid)}
    if judged_run:
        full = pytrec_eval.RelevanceEvaluator(
            judged_qrels, {"ndcg_cut_10", "recall_100"}, relevance_level=relevance_level
        ).evaluate(judged_run)
        cut = pytrec_eval.RelevanceEvaluator(judged_qrels, {"recip_rank"}, relevance_level=relevance_level).evaluate(
            top_k(judged_run, _MRR_CUTOFF)
        )
        for qid in judged_run:
            values[qid] = {
                "ndcg@10": full[qid]["ndcg_cut_10"],
                "recall@100": full[qid]["recall_100"],
                "mrr@10": cut[qid]["recip_rank"],
            }
    result: dict[str, Any] = {m: float(np.mean([v[m] for v in values.values()])) for m in METRICS}
    result["num_queries"] = len(judged)
    if per_query:
        result["per_query"] = values
    return result


def evaluate_encoder(
    encoder: Encoder,
    dataset: BeirDataset,
    *,
    reasoning: bool,
    batch_size: int = 32,
    show_progress_bar: bool = False,
    k: int = 100,
    corpus_embeddings: CorpusEmbeddings | None = None,
    per_query: bool = False,
    generation: Mapping[str, Any] | None = None,
    queries: tuple[np.ndarray, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Encode judged queries (and the corpus unless ``corpus_embeddings`` is given) and score them.

    ``queries``: the judged queries' embeddings in this mode and their stats (``seconds`` included),
    as :func:`encode_queries` returns them, when they were encoded already.

    ``generation``: settings of the reasoning modes (``samples``, ``mix_weight``, ``temperature``, ...
    as :meth:`searchr3.SearchR3.encode_query` takes them); recorded in the row.

    Documents are always encoded the same way, so pass the ``CorpusEmbeddings`` of an earlier call
    (or of :func:`encode_corpus`) to evaluate reasoning on and off without re-encoding the corpus.
    ``seconds_per_query`` is query-encoding wall time over the number of queries (batched).
    """
    if corpus_embeddings is None:
        corpus_embeddings = encode_corpus(encoder, dataset.corpus, batch_size=batch_size, show_progress_bar=show_progress_bar)
    elif corpus_embeddings.doc_ids != list(dataset.corpus):
        raise ValueError("corpus_embeddings were computed for a different corpus")
    qids = _judged_ids(dataset)
    if queries is None:
        queries = encode_queries(
            encoder, [dataset.queries[q] for q in qids], [reasoning], generation, batch_size, show_progress_bar
        )[mode_label(reasoning)]
    query_emb, stats = queries
    stats = dict(stats)
    query_seconds = stats.pop("seconds")
    query_emb = as_numpy(query_emb)
    _check_embeddings(query_emb, len(qids), "query")
    start = time.perf_counter()
    run = dense_retrieve(query_emb, corpus_embeddings.embeddings, corpus_embeddings.doc_ids, qids, k)
    retrieval_seconds = time.perf_counter() - start
    return _result(
        dataset,
        run,
        per_query,
        reasoning=reasoning,
        seconds_per_query=query_seconds / len(qids),
        retrieval_seconds=retrieval_seconds,
        corpus_seconds=corpus_embeddings.seconds,
        **stats,
    )


def encode_queries(
    encoder: Encoder,
    texts: Sequence[str],
    modes: Sequence[bool | str],
    generation: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    show_progress_bar: bool = False,
) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """``texts`` embedded in each query mode, keyed "off"/"on"/"mix": (embeddings, stats with ``seconds``).

    A searchr3 model encodes the modes together (:meth:`searchr3.SearchR3.encode_query_modes`: one set
    of rollouts for "on" and "mix"); ``generation`` (reasoning settings) is recorded in the stats of
    the reasoning modes."""
    gen = dict(generation or {})
    wanted = {mode_label(m): m for m in modes}
    if hasattr(encoder, "encode_query_modes"):  # a searchr3 model: also report what reasoning did
        if set(wanted) == {"off"}:
            gen = {}  # reasoning settings are refused by the direct mode alone; they do not apply to it
        # One call: "off" and "mix" share the direct pass, "on" and "mix" the rollouts.
        out = encoder.encode_query_modes(
            texts, list(wanted.values()), batch_size=batch_size, show_progress_bar=show_progress_bar, **gen
        )
        for k in out:
            if gen and k != "off":
                out[k][1]["generation"] = gen
        return out
    out = {}
    for k, m in wanted.items():  # any other encoder: its own encode_query, mode by mode
        start = time.perf_counter()
        emb = as_numpy(encoder.encode_query(texts, batch_size=batch_size, show_progress_bar=show_progress_bar, reasoning=m))
        out[k] = emb, {"seconds": time.perf_counter() - start}
    return out


def evaluate_bm25(
    dataset: BeirDataset,
    *,
    k: int = 100,
    show_progress_bar: bool = False,
    retriever: BM25Retriever | None = None,
    per_query: bool = False,
) -> dict[str, Any]:
    """BM25 on ``dataset``; ``corpus_seconds`` is index time, ``seconds_per_query`` search time."""
    retriever = retriever or BM25Retriever()
    start = time.perf_counter()
    retriever.index(dataset.corpus, show_progress_bar=show_progress_bar)
    index_seconds = time.perf_counter() - start
    qids = _judged_ids(dataset)
    start = time.perf_counter()
    run = retriever.search({q: dataset.queries[q] for q in qids}, k, show_progress_bar=show_progress_bar)
    search_seconds = time.perf_counter() - start
    return _result(
        dataset,
        run,
        per_query,
        reasoning=False,
        seconds_per_query=search_seconds / len(qids),
        retrieval_seconds=search_seconds,
        corpus_seconds=index_seconds,
    )


def run_evaluation(
    data_dir: str | Path,
    split: str,
    systems: Sequence[System],
    *,
    batch_size: int = 32,
    show_progress_bar: bool = False,
    k: int = 100,
    cache_dir: str | Path | None = None,
    max_docs: int = 0,
    max_queries: int = 0,
    per_query: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate each ``(name, encoder or "bm25", reasoning)`` on one BEIR split; one row per system.

    Systems sharing an encoder object share its corpus embeddings (encoded once); with
    ``cache_dir`` they are also kept on disk across calls (see :func:`encode_corpus`).
    ``max_docs`` evaluates on the corpus's first documents only (:meth:`BeirDataset.subset`);
    ``max_queries`` keeps the first judged queries, their relevant documents first within ``max_docs``;
    rows then carry the sub-corpus in their ``dataset`` name. ``per_query``: each row also holds every judged
    query's metrics (``per_query``: {qid: {metric: value}}), so two rows can be compared query by query later
    (``benchmarks/paired_bootstrap.py --results``) without encoding anything again.
    """
    dataset = load_beir(data_dir, split).subset(max_docs, max_queries)
    if not dataset.judged_query_ids():  # checked before any encoding; a DataError is one `error:` line on the CLI
        cut = f" among the first {max_docs} documents (raise --max-docs)" if max_docs > 0 else ""
        raise DataError(f"no query has a relevant judgment{cut}", Path(data_dir) / "qrels" / f"{split}.tsv")
    corpus_cache: dict[int, CorpusEmbeddings] = {}
    # Every query mode one encoder is evaluated in with one set of reasoning settings is encoded in one
    # call (encode_queries): "on" and "mix" rows of a searchr3 model share their rollouts.
    qids = dataset.judged_query_ids()
    modes: dict[tuple[int, str], list[bool | str]] = {}
    for _name, system, reasoning, *settings in systems:
        if not isinstance(system, str):
            modes.setdefault((id(system), _settings_key(settings)), []).append(reasoning)
    query_cache: dict[tuple[int, str], dict[str, tuple[np.ndarray, dict[str, Any]]]] = {}
    rows = []
    for name, system, reasoning, *settings in systems:
        if isinstance(system, str):
            if system != "bm25":
                raise ValueError(f"unknown system {system!r}: pass an Encoder or 'bm25'")
            if reasoning:
                raise ValueError(f"{name}: BM25 has no reasoning mode")
            result = evaluate_bm25(dataset, k=k, show_progress_bar=show_progress_bar, per_query=per_query)
        else:
            if id(system) not in corpus_cache:
                corpus_cache[id(system)] = encode_corpus(
                    system,
                    dataset.corpus,
                    batch_size=batch_size,
                    show_progress_bar=show_progress_bar,
                    cache_dir=cache_dir,
                )
            key = (id(system), _settings_key(settings))
            if key not in query_cache:
                texts = [dataset.queries[q] for q in qids]
                query_cache[key] = encode_queries(
                    system, texts, modes[key], settings[0] if settings else None, batch_size, show_progress_bar
                )
            result = evaluate_encoder(
                system,
                dataset,
                reasoning=reasoning,
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
                k=k,
                corpus_embeddings=corpus_cache[id(system)],
                generation=settings[0] if settings else None,
                per_query=per_query,
                queries=query_cache[key][mode_label(reasoning)],
            )
        result.pop("run")
        rows.append({"system": name, "dataset": dataset.name, "split": split, **result})
    return rows


def _settings_key(settings: Sequence[Any]) -> str:
    return json.dumps(dict(settings[0]) if settings and settings[0] else {}, sort_keys=True, default=str)


def format_table(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Table:
    """A rich table of result rows (as returned by :func:`run_evaluation`)."""
    table = Table(title=title)
    for header in ("System", "Reasoning", "nDCG@10", "Recall@100", "MRR@10", "s/query", "emit", "tokens", "Queries"):
        if header == "System":
            table.add_column(header, overflow="fold")
        else:
            table.add_column(header, justify="right")
    for row in rows:
        table.add_row(
            str(row["system"]),
            mode_label(row["reasoning"])
            + (f" ×{row['generation']['samples']}" if row.get("generation", {}).get("samples", 1) > 1 else ""),
            *(f"{row[m]:.4f}" for m in METRICS),
            f"{row['seconds_per_query']:.3g}",
            f"{row['emit_rate']:.2f}" if "emit_rate" in row else "-",
            f"{row['mean_new_tokens']:.1f}" if "mean_new_tokens" in row else "-",
            str(row["num_queries"]),
        )
    return table


def mode_label(reasoning: bool | str) -> str:
    """How a row's query mode is shown: off, on or mix."""
    return reasoning if isinstance(reasoning, str) else ("on" if reasoning else "off")


def write_results(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write ``rows`` to ``path`` as JSON, atomically (see :mod:`searchr3.io`)."""
    atomic_write_json(path, [dict(row) for row in rows])


def _judged_ids(dataset: BeirDataset) -> list[str]:
    qids = dataset.judged_query_ids()
    if not qids:
        raise ValueError(f"{dataset.name}/{dataset.split}: no query has a relevant judgment")
    return qids


def _result(dataset: BeirDataset, run: Run, per_query: bool, **timings: float | bool) -> dict[str, Any]:
    """Metrics, then ``timings``, ``num_docs`` and the ``run`` itself."""
    return {
        **compute_metrics(dataset.qrels, run, per_query=per_query),
        **timings,
        "num_docs": len(dataset.corpus),
        "run": run,
    }


def _check_embeddings(emb: np.ndarray, rows: int, what: str) -> None:
    """Rows must match the inputs and be L2-normalised (loose: bf16 models are off by ~1e-3)."""
    if emb.ndim != 2 or emb.shape[0] != rows:
        raise ValueError(f"expected {rows} {what} embeddings as a 2-D array, got shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1)
    if rows and not np.allclose(norms, 1.0, atol=1e-2):
        raise ValueError(f"{what} embeddings are not L2-normalised (norms {norms.min():.3g}..{norms.max():.3g})")
