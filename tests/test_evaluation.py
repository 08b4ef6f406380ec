"""The evaluation harness: metrics against hand computations, exact dense top-k, the encoder
protocol (with a deterministic fake encoder), result files, and the two baselines."""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from searchr3.baselines import BM25Retriever, MiniLMEncoder
from searchr3.data import BeirDataset, load_beir
from searchr3.evaluation import (
    METRICS,
    Encoder,
    compute_metrics,
    dense_retrieve,
    encode_corpus,
    evaluate_bm25,
    evaluate_encoder,
    format_table,
    run_evaluation,
    top_k,
    write_results,
)
from tests.conftest import shared_dataset, write_beir


class HashingEncoder:
    """Bag of words hashed into 1024 buckets, L2-normalised; counts calls. ``reasoning`` drops the
    query's first word, so that on/off give different (deterministic) embeddings."""

    dim = 1024

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.document_calls = 0
        self.query_calls: list[bool] = []

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, zlib.crc32(word.encode()) % self.dim] += 1.0
            if not out[row].any():
                out[row, 0] = 1.0
        return self.scale * out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode_query(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        reasoning: bool = False,
    ) -> np.ndarray:
        self.query_calls.append(reasoning)
        return self._embed([" ".join(t.split()[1:]) if reasoning else t for t in texts])

    def encode_document(self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        self.document_calls += 1
        return self._embed(texts)


CORPUS = {
    "d1": {"title": "Cats", "text": "cats purr and sleep all day"},
    "d2": {"title": "", "text": "dogs bark at the mail carrier"},
    "d3": {"title": "Fish", "text": "fish swim in cold water"},
    "d4": {"title": "", "text": "birds sing in the morning"},
}
QUERIES = {"q1": "do cats purr", "q2": "why do dogs bark", "q3": "unjudged query"}
QRELS = {"q1": {"d1": 2}, "q2": {"d2": 1, "d4": 0}}


@pytest.fixture
def tiny() -> BeirDataset:
    return BeirDataset("tiny", CORPUS, QUERIES, QRELS)


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    qrels = [(q, d, g) for q, docs in QRELS.items() for d, g in docs.items()]
    return write_beir(tmp_path / "tiny", CORPUS, QUERIES, qrels, split="test")


# ---------------------------------------------------------------- metrics


def ranked(*doc_ids: str) -> dict[str, float]:
    """A run row listing ``doc_ids`` best first."""
    return {d: float(len(doc_ids) - i) for i, d in enumerate(doc_ids)}


def test_metrics_match_a_hand_computation() -> None:
    qrels = {"q": {"d1": 3, "d2": 1, "d3": 0}}
    run = {"q": ranked("d3", "d1", "x", "d2")}  # relevant docs at ranks 2 and 4
    got = compute_metrics(qrels, run)
    dcg = 3 / math.log2(3) + 1 / math.log2(5)  # trec_eval: gain = grade, discount log2(rank + 1)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    assert got["ndcg@10"] == pytest.approx(dcg / idcg)
    assert got["recall@100"] == pytest.approx(1.0)
    assert got["mrr@10"] == pytest.approx(0.5)
    assert got["num_queries"] == 1
    strict = compute_metrics(qrels, {"q": ranked("d2", "x", "d1")}, relevance_level=2)
    assert strict["mrr@10"] == pytest.approx(1 / 3)  # grade 1 no longer counts as relevant
    assert strict["recall@100"] == pytest.approx(1.0)


def test_mrr_is_cut_at_10() -> None:
    qrels = {"q": {"rel": 1}}
    run = {"q": ranked(*[f"n{i}" for i in range(10)], "rel")}  # relevant doc at rank 11
    raw = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    assert raw["q"]["recip_rank"] == pytest.approx(1 / 11)  # pytrec_eval alone has no cut-off
    got = compute_metrics(qrels, run)
    assert got["mrr@10"] == 0.0
    assert got["ndcg@10"] == 0.0
    assert got["recall@100"] == 1.0
    at_10 = compute_metrics(qrels, {"q": ranked(*[f"n{i}" for i in range(9)], "rel")})
    assert at_10["mrr@10"] == pytest.approx(0.1)


def test_ties_are_cut_in_trec_eval_order() -> None:
    # All scores tie: trec_eval ranks by doc id descending, so d11 is first and d01 eleventh.
    run = {"q": {f"d{i:02d}": 1.0 for i in range(12)}}
    assert list(top_k(run, 3)["q"]) == ["d11", "d10", "d09"]
    assert compute_metrics({"q": {"d01": 1}}, run)["mrr@10"] == 0.0
    assert compute_metrics({"q": {"d08": 1}}, run)["mrr@10"] == pytest.approx(1 / 4)


def test_missing_and_unjudged_queries() -> None:
    qrels = {"a": {"x": 1}, "b": {"y": 1}, "zero": {"z": 0}}
    run = {"a": {"x": 1.0}, "zero": {"z": 1.0}, "extra": {"x": 1.0}}
    got = compute_metrics(qrels, run, per_query=True)
    assert got["num_queries"] == 2  # "zero" has no relevant doc; "extra" is not judged
    assert got["ndcg@10"] == pytest.approx(0.5)  # "b" is missing from the run: it scores 0
    assert got["per_query"] == {"a": dict.fromkeys(METRICS, 1.0), "b": dict.fromkeys(METRICS, 0.0)}
    assert compute_metrics(qrels, {})["ndcg@10"] == 0.0
    with pytest.raises(ValueError, match="no query"):
        compute_metrics({"zero": {"z": 0}}, run)


# ---------------------------------------------------------------- dense retrieval


def test_dense_retrieve_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    docs = rng.normal(size=(1000, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    qids, dids = [f"q{i}" for i in range(37)], [f"d{i}" for i in range(1000)]
    run = dense_retrieve(queries, docs, dids, qids, k=20, doc_chunk_size=64, query_chunk_size=8)
    scores = queries @ docs.T
    for i, qid in enumerate(qids):
        best = np.argsort(-scores[i], kind="stable")[:20]
        assert list(run[qid]) == [dids[j] for j in best]
        assert list(run[qid].values()) == pytest.approx(scores[i, best].tolist(), rel=1e-5)


def test_dense_retrieve_edges() -> None:
    docs = np.eye(3, dtype=np.float32)
    run = dense_retrieve(docs[:1], docs, ["a", "b", "c"], ["q"], k=100)
    assert next(iter(run["q"])) == "a"
    assert len(run["q"]) == 3  # k larger than the corpus
    with pytest.raises(ValueError, match="dimension"):
        dense_retrieve(np.ones((1, 2)), docs, ["a", "b", "c"], ["q"])
    with pytest.raises(ValueError, match="differ in number"):
        dense_retrieve(docs[:1], docs, ["a", "b"], ["q"])
    with pytest.raises(ValueError, match="k must be"):
        dense_retrieve(docs[:1], docs, ["a", "b", "c"], ["q"], k=0)


# ---------------------------------------------------------------- encoder harness


def test_fake_encoder_satisfies_the_protocol() -> None:
    assert isinstance(HashingEncoder(), Encoder)


def test_evaluate_encoder_reuses_corpus_embeddings(tiny: BeirDataset) -> None:
    enc = HashingEncoder()
    off = evaluate_encoder(enc, tiny, reasoning=False, k=10)
    assert enc.document_calls == 1
    assert off["num_queries"] == 2 and off["num_docs"] == 4 and off["reasoning"] is False
    assert off["ndcg@10"] == pytest.approx(1.0)  # word overlap finds both relevant documents
    assert set(off["run"]) == {"q1", "q2"}  # unjudged q3 is not encoded
    assert off["seconds_per_query"] >= 0 and off["corpus_seconds"] >= 0
    corpus = encode_corpus(enc, tiny.corpus)
    on = evaluate_encoder(enc, tiny, reasoning=True, k=10, corpus_embeddings=corpus)
    assert enc.document_calls == 2  # encode_corpus only; evaluate_encoder reused it
    assert enc.query_calls == [False, True]
    assert on["corpus_seconds"] == corpus.seconds
    other = BeirDataset("other", {"d9": {"title": "", "text": "x"}}, QUERIES, QRELS)
    with pytest.raises(ValueError, match="different corpus"):
        evaluate_encoder(enc, other, reasoning=False, corpus_embeddings=corpus)


def test_unnormalised_embeddings_are_rejected(tiny: BeirDataset) -> None:
    with pytest.raises(ValueError, match="not L2-normalised"):
        evaluate_encoder(HashingEncoder(scale=2.0), tiny, reasoning=False)


def test_run_evaluation_table_and_results_file(tiny_dir: Path, tmp_path: Path) -> None:
    enc = HashingEncoder()
    systems = [("bm25", "bm25", False), ("hash", enc, False), ("hash+r", enc, True)]
    rows = run_evaluation(tiny_dir, "test", systems, k=10)
    assert enc.document_calls == 1  # one corpus encoding for both reasoning settings
    assert [(r["system"], r["reasoning"]) for r in rows] == [
        ("bm25", False),
        ("hash", False),
        ("hash+r", True),
    ]
    for row in rows:
        assert row["dataset"] == "tiny" and row["split"] == "test" and row["num_queries"] == 2
        assert all(0.0 <= row[m] <= 1.0 for m in METRICS)
        assert "run" not in row and "per_query" not in row
    # per_query: every judged query's metrics, whose means are the row's
    for row in run_evaluation(tiny_dir, "test", systems, k=10, per_query=True):
        assert len(row["per_query"]) == row["num_queries"] == 2
        for m in METRICS:
            assert np.mean([v[m] for v in row["per_query"].values()]) == pytest.approx(row[m])
    table = format_table(rows, title="tiny")
    assert table.row_count == 3 and len(table.columns) == 9
    out = tmp_path / "results" / "tiny.json"
    write_results(rows, out)
    write_results(rows, out)  # overwrites in place
    assert json.loads(out.read_text()) == rows
    assert [p.name for p in out.parent.iterdir()] == ["tiny.json"]  # no temporary file left
    with pytest.raises(ValueError, match="no reasoning"):
        run_evaluation(tiny_dir, "test", [("bm25", "bm25", True)])
    with pytest.raises(ValueError, match="unknown system"):
        run_evaluation(tiny_dir, "test", [("x", "tfidf", False)])


def test_sub_corpus_keeps_the_first_documents_and_their_qrels(tiny: BeirDataset, tiny_dir: Path) -> None:
    sub = tiny.subset(2)
    assert list(sub.corpus) == ["d1", "d2"] and sub.name == "tiny[:2]"
    assert sub.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}}  # d4 was cut, so its judgment goes too
    assert tiny.subset(0) is tiny and tiny.subset(4) is tiny
    one = tiny.subset(1)
    assert one.qrels == {"q1": {"d1": 2}} and one.judged_query_ids() == ["q1"]  # q2 lost its relevant document
    rows = run_evaluation(tiny_dir, "test", [("bm25", "bm25", False), ("hash", HashingEncoder(), False)], max_docs=1)
    assert [(r["dataset"], r["num_docs"], r["num_queries"]) for r in rows] == [("tiny[:1]", 1, 1)] * 2
    assert all(r["ndcg@10"] == 1.0 for r in rows)  # one document, and it is the relevant one

    # ---------------------------------------------------------------- baselines
    # max_queries: the first judged queries keep all their judged documents, whatever their position.
    late = BeirDataset(
        "x",
        {f"d{i}": {"title": "", "text": str(i)} for i in range(6)},
        {"a": "qa", "b": "qb", "c": "qc"},
        {"a": {"d5": 1}, "b": {"d4": 2, "d0": 0}, "c": {"d3": 1}},
    )
    two = late.subset(3, max_queries=2)
    assert (
        two.judged_query_ids() == ["a", "b"] and list(two.corpus) == ["d0", "d4", "d5"] and two.qrels["b"] == {"d4": 2, "d0": 0}
    )
    assert list(late.subset(0, max_queries=1).corpus) == list(late.corpus)  # max_docs 0: every document
    one = late.subset(1, max_queries=2)  # relevant documents come first, in file order
    assert list(one.corpus) == ["d4"] and one.qrels == {"b": {"d4": 2}}


def test_bm25_ranks_the_matching_document_first(tiny: BeirDataset) -> None:
    bm25 = BM25Retriever()
    bm25.index(tiny.corpus)
    run = bm25.search({"q": "purring cat", "none": "zebra"}, k=10)
    assert next(iter(run["q"])) == "d1"  # stemming: purring -> purr, cat -> cats
    assert run["none"] == {}  # no shared term: zero-score documents are left out
    with pytest.raises(RuntimeError, match="index"):
        BM25Retriever().search({"q": "x"})


def test_bm25_on_msmarco_mini() -> None:
    result = evaluate_bm25(load_beir(shared_dataset("msmarco-mini"), "test"))
    assert result["num_queries"] == 43
    assert result["ndcg@10"] > 0.3


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


def test_minilm_encoder(minilm: MiniLMEncoder) -> None:
    assert isinstance(minilm, Encoder)
    docs = minilm.encode_document(
        ["The cat sat on the mat and purred.", "Stock markets fell sharply on Monday."],
        batch_size=2,
    )
    query = minilm.encode_query(["a purring cat"], reasoning=True)
    assert docs.shape == (2, 384) and query.shape == (1, 384)
    assert docs.dtype == np.float32
    assert np.linalg.norm(docs, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    scores = (query @ docs.T)[0]
    assert scores[0] > scores[1]
    assert minilm.encode_query([]).shape == (0, 384)


def test_corpus_embeddings_are_cached_per_model(tmp_path, tiny_model_dir):
    from searchr3 import SearchR3
    from searchr3.evaluation import encode_corpus
    from searchr3.retrieval import CacheWarning

    class Counting:
        """Counts document encodes of a real model (the cache is under test, not the model)."""

        def __init__(self, model):
            self.model, self.calls = model, 0
            self.embedding_key = model.embedding_key

        def encode_document(self, texts, **kw):
            self.calls += 1
            return self.model.encode_document(texts, **kw)

    corpus = {f"d{i}": {"title": "", "text": f"text number {i}"} for i in range(5)}
    enc = Counting(SearchR3.from_pretrained(tiny_model_dir, bf16=False))
    first = encode_corpus(enc, corpus, cache_dir=tmp_path)
    second = encode_corpus(enc, corpus, cache_dir=tmp_path)
    assert enc.calls == 1
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    (entry,) = list(tmp_path.glob("*.npz"))
    entry.write_bytes(b"damaged")
    with pytest.warns(CacheWarning, match="damaged"):  # recomputed, but not without a word
        third = encode_corpus(enc, corpus, cache_dir=tmp_path)
    assert enc.calls == 2
    np.testing.assert_allclose(third.embeddings, first.embeddings, atol=1e-6)
    corpus["d0"]["text"] = "changed"
    encode_corpus(enc, corpus, cache_dir=tmp_path)
    assert enc.calls == 3 and len(list(tmp_path.glob("*.npz"))) == 2
    enc.model.bf16 = True  # the same weights in the other precision: their own entry, never the fp32 one
    encode_corpus(enc, corpus, cache_dir=tmp_path)
    assert enc.calls == 4 and len(list(tmp_path.glob("*.npz"))) == 3
