"""The persistent index, the Python search API and the `index`/`search` commands, on a tiny model."""
import json

import numpy as np
import pytest

from searchr3.index import (
    CorpusError, Doc, Index, IndexFormatError, ModelMismatchError, build_index, encode_documents, read_corpus,
)
from searchr3.search import Searcher
from tests.conftest import build_tiny_model

TEXTS = ["the cat sat on the mat", "paris is the capital of france", "proteins fold into shapes",
         "rain falls from clouds", "the heart pumps blood", "a search engine ranks documents"]


def docs(n=len(TEXTS), start=0):
    return [Doc(f"d{i}", TEXTS[i % len(TEXTS)] + f" {i}") for i in range(start, start + n)]


@pytest.fixture()
def built(tiny, tiny_model_dir, tmp_path):
    return build_index(tiny, docs(), tmp_path / "idx", model_name=str(tiny_model_dir), show_progress_bar=False), tmp_path / "idx"


# ---------------------------------------------------------------------------- corpora
def test_read_corpus_formats(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"_id": 7, "title": "T", "text": "body"}\n\n{"id": "x", "text": "two"}\n')
    assert read_corpus(tmp_path / "c.jsonl") == [Doc("7", "T body"), Doc("x", "two")]
    (tmp_path / "c.txt").write_text("first\n\nthird\n")
    assert read_corpus(tmp_path / "c.txt") == [Doc("1", "first"), Doc("3", "third")]
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "a", "title": "Title", "text": "alpha"}\n{"_id": "b", "text": "beta"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q", "text": "query"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\ta\t1\n")
    assert read_corpus(beir) == [Doc("a", "Title alpha"), Doc("b", "beta")]


@pytest.mark.parametrize("name,content,msg", [
    ("bad.jsonl", '{"_id": "a", "text": "x"}\n{oops\n', "malformed JSON"),
    ("dup.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "duplicate id"),
    ("noid.jsonl", '{"text": "x"}\n', "need an '_id'"),
    ("blank.txt", "\n  \n", "no documents"),
    ("c.csv", "a,b\n", "unsupported corpus format"),
])
def test_read_corpus_errors(tmp_path, name, content, msg):
    (tmp_path / name).write_text(content)
    with pytest.raises(CorpusError, match=msg):
        read_corpus(tmp_path / name)
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------- index
def test_build_search_roundtrip(built, tiny):
    index, path = built
    assert (path / "vectors.npy").is_file() and not (path / "index.bin").exists()
    meta = json.loads((path / "meta.json").read_text())
    assert meta["count"] == 6 and meta["dim"] == tiny.hidden_size and meta["fingerprint"] == tiny.fingerprint()
    loaded = Index.load(path)
    vecs = loaded.vectors()
    np.testing.assert_allclose(vecs, tiny.encode_document([d.text for d in docs()]), atol=1e-5)
    hits = loaded.search(vecs[3], k=3)[0]
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].id == "d3" and hits[0].score == pytest.approx(1, abs=1e-5)
    assert hits[0].text == docs()[3].text and hits[0].score >= hits[1].score >= hits[2].score
    assert len(loaded.search(vecs[:2], k=100)[1]) == 6  # k is capped at the corpus size


def test_hnsw_matches_exact(tiny, tmp_path):
    vecs = encode_documents(tiny, docs(), show_progress_bar=False)
    exact = build_index(tiny, docs(), tmp_path / "e", vectors=vecs, show_progress_bar=False)
    hnsw = build_index(tiny, docs(), tmp_path / "h", vectors=vecs, exact_threshold=0, show_progress_bar=False)
    assert (tmp_path / "h" / "index.bin").is_file() and hnsw.meta.backend == "hnsw"
    loaded = Index.load(tmp_path / "h")
    np.testing.assert_allclose(loaded.vectors(), vecs, atol=1e-6)
    for a, b in zip(exact.search(vecs, 4), loaded.search(vecs, 4)):
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)


def test_add_appends_and_crosses_to_hnsw(built, tiny, tmp_path):
    index, path = built
    index.meta.exact_threshold = 8  # the next add crosses it: the index becomes an HNSW graph
    build_index(tiny, docs(3, start=6), path, base=index, show_progress_bar=False)
    loaded = Index.load(path)
    assert len(loaded) == 9 and loaded.meta.backend == "hnsw" and [d.id for d in loaded.docs][-1] == "d8"
    assert loaded.search(tiny.encode_document(docs(3, start=6)[1].text), k=1)[0][0].id == "d7"
    with pytest.raises(ValueError, match="already in the index"):
        build_index(tiny, docs(1), path, base=loaded, show_progress_bar=False)
    with pytest.raises(ValueError, match="duplicate"):
        build_index(tiny, [Doc("z", "a"), Doc("z", "b")], tmp_path / "dup", show_progress_bar=False)


def test_other_model_is_refused(built, tmp_path):
    from searchr3 import SearchR3

    _, path = built
    other = SearchR3.from_pretrained(build_tiny_model(tmp_path / "other", seed=1), bf16=False, max_length=400)
    with pytest.raises(ModelMismatchError, match="built by model"):
        Searcher(path, other)
    with pytest.raises(ModelMismatchError):
        build_index(other, docs(1, start=50), path, base=Index.load(path), show_progress_bar=False)


@pytest.mark.parametrize("damage,msg", [
    (lambda p: (p / "vectors.npy").unlink(), "missing vectors.npy"),
    (lambda p: (p / "vectors.npy").write_bytes(b"garbage"), "corrupted"),
    (lambda p: (p / "meta.json").write_text("{not json"), "corrupted"),
    (lambda p: (p / "meta.json").unlink(), "not an index"),
    (lambda p: (p / "docs.jsonl").write_text('{"id": "d0"}\n'), "1 documents but"),
    (lambda p: (p / "docs.jsonl").write_text("oops\n"), "corrupted document line"),
])
def test_damaged_index_is_a_clear_error(built, damage, msg):
    _, path = built
    damage(path)
    with pytest.raises(IndexFormatError, match=msg):
        Index.load(path)


def test_missing_index(tmp_path):
    with pytest.raises(IndexFormatError, match="does not exist"):
        Index.load(tmp_path / "nope")


def test_encoding_resumes_from_saved_chunks(tiny, tmp_path):
    straight = encode_documents(tiny, docs(), chunk_size=2, show_progress_bar=False)
    real, calls = tiny.encode_document, []

    def dies_on_the_third_chunk(texts, **kw):
        calls.append(list(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(texts, **kw)

    tiny.encode_document = dies_on_the_third_chunk
    with pytest.raises(KeyboardInterrupt):
        encode_documents(tiny, docs(), chunk_size=2, work_dir=tmp_path / "w", show_progress_bar=False)
    assert len(list((tmp_path / "w").glob("*.partial/chunk-*.npy"))) == 2  # the two finished chunks are kept
    calls.clear()
    tiny.encode_document = lambda texts, **kw: (calls.append(list(texts)), real(texts, **kw))[1]
    resumed = encode_documents(tiny, docs(), chunk_size=2, work_dir=tmp_path / "w", show_progress_bar=False)
    assert calls == [[d.text for d in docs()[4:6]]]  # only the unfinished chunk is encoded again
    np.testing.assert_allclose(resumed, straight, atol=1e-6)
    assert len(list((tmp_path / "w").glob("*.npz"))) == 1 and not list((tmp_path / "w").glob("*.partial"))
    calls.clear()
    encode_documents(tiny, docs(), chunk_size=2, work_dir=tmp_path / "w", show_progress_bar=False)
    assert calls == []  # a finished corpus is read from the cache
    encode_documents(tiny, docs(2, start=10), chunk_size=2, work_dir=tmp_path / "w", show_progress_bar=False)
    assert len(calls) == 1  # another corpus never reuses those embeddings


def test_searcher_api(built, tiny):
    _, path = built
    s = Searcher(path, tiny)
    hits = s.search("the cat", k=2)
    assert len(hits) == 2 and hits[0].score >= hits[1].score
    tiny.prompts.max_reasoning_tokens = 4
    res = s.search_many(["the cat", "rain"], k=3, reasoning=True)
    assert [r.query for r in res] == ["the cat", "rain"] and all(isinstance(r.reasoning, str) and len(r.hits) == 3 for r in res)
    with pytest.raises(TypeError):
        s.search_many("not a list")
    with pytest.raises(ValueError, match="k must be"):
        s.search("x", k=0)


# ---------------------------------------------------------------------------- CLI (through searchr3.cli.main)
def test_cli_build_add_search(cli, tiny_model_dir, tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(TEXTS[:4]) + "\n")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"_id": f"b{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS[4:])))
    idx = tmp_path / "idx"
    common = ["--model", tiny_model_dir, "--fp32"]
    out = cli("index", "build", "--corpus", tmp_path / "a.txt", "--out", idx, "--max-length", "400", *common)
    assert out.code == 0, out.err[-2000:]
    assert "indexed 4 documents" in out.out
    cli("index", "build", "--corpus", tmp_path / "a.txt", "--out", idx, *common).assert_bad_input("already exists")
    out = cli("index", "add", idx, "--corpus", tmp_path / "b.jsonl", "--fp32")
    assert out.code == 0 and "now holds 6" in out.out, out.err[-2000:]
    out = cli("search", idx, "the heart pumps blood", "paris", "-k", "3", "--json", "--fp32")
    assert out.code == 0, out.err[-2000:]
    lines = [json.loads(line) for line in out.out.strip().splitlines()]
    assert [x["query"] for x in lines] == ["the heart pumps blood", "paris"] and all(len(x["hits"]) == 3 for x in lines)
    assert {h["id"] for x in lines for h in x["hits"]} <= {"1", "2", "3", "4", "b0", "b1"}
    out = cli("search", idx, "paris", "-k", "2", "--fp32")
    assert out.code == 0 and "query: paris" in out.out and "  1. " in out.out


def test_cli_errors(cli, tiny_model_dir, tmp_path):
    cli("index", "build", "--corpus", tmp_path / "none.txt", "--out", tmp_path / "i", "--model", tiny_model_dir).assert_bad_input("does not exist")
    cli("search", tmp_path / "i", "q").assert_bad_input("does not exist")
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    out = cli("index", "build", "--corpus", tmp_path / "a.txt", "--out", tmp_path / "i", "--model", tiny_model_dir, "--max-length", "400", "--fp32")
    assert out.code == 0, out.err[-2000:]
    other = build_tiny_model(tmp_path / "other", seed=3)
    cli("search", tmp_path / "i", "q", "--model", other, "--fp32").assert_bad_input("built by model")
    cli("index", "add", tmp_path / "i", "--corpus", tmp_path / "a.txt", "--model", other, "--fp32").assert_bad_input("built by model")
    cli("index", "add", tmp_path / "i", "--corpus", tmp_path / "a.txt", "--fp32").assert_bad_input("already in the index")
    cli("search", tmp_path / "i", "  ").assert_bad_input("empty")
