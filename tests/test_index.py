"""The persistent index, the Python search API and the `index`/`search` commands, on a tiny model."""

import json

import numpy as np
import pytest

from searchr3.index import (
    CorpusError,
    Doc,
    Index,
    IndexFormatError,
    ModelMismatchError,
    build_index,
    encode_documents,
    read_corpus,
)
from searchr3.search import Searcher
from tests.conftest import build_tiny_model

TEXTS = [
    "the cat sat on the mat",
    "paris is the capital of france",
    "proteins fold into shapes",
    "rain falls from clouds",
    "the heart pumps blood",
    "a search engine ranks documents",
]


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


@pytest.mark.parametrize(
    "name,content,msg",
    [
        ("bad.jsonl", '{"_id": "a", "text": "x"}\n{oops\n', "malformed JSON"),
        ("dup.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "duplicate id"),
        ("noid.jsonl", '{"text": "x"}\n', "need an '_id'"),
        ("blank.txt", "\n  \n", "no documents"),
        ("c.csv", "a,b\n", "unsupported corpus format"),
    ],
)
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


def _edit_meta(p, **fields):
    meta = json.loads((p / "meta.json").read_text())
    meta.update(fields)
    (p / "meta.json").write_text(json.dumps(meta))


def _nan_vectors(p):
    v = np.load(p / "vectors.npy")
    v[2, 5] = np.nan
    np.save(p / "vectors.npy", v)


DAMAGE = [
    ("vectors.npy missing", lambda p: (p / "vectors.npy").unlink(), "missing vectors.npy"),
    ("vectors.npy garbage", lambda p: (p / "vectors.npy").write_bytes(b"garbage"), "vectors.npy is corrupted"),
    ("vectors.npy empty", lambda p: (p / "vectors.npy").write_bytes(b""), "vectors.npy is corrupted"),
    (
        "vectors.npy strings",
        lambda p: np.save(p / "vectors.npy", np.full((6, 32), "x")),
        "holds <U1 values, expected float32 vectors",
    ),
    ("vectors.npy NaN", _nan_vectors, "1 vectors contain NaN or inf \\(first at row 2\\)"),
    ("meta.json not JSON", lambda p: (p / "meta.json").write_text("{not json"), "corrupted"),
    ("meta.json missing", lambda p: (p / "meta.json").unlink(), "not an index"),
    ("meta.json max_length 0", lambda p: _edit_meta(p, max_length=0), "max_length is 0, expected an integer >= 16"),
    ("meta.json dim a string", lambda p: _edit_meta(p, dim="32"), "dim is '32', expected an integer >= 1"),
    ("meta.json unknown compact", lambda p: _edit_meta(p, compact="int4"), "compact is 'int4'"),
    ("docs.jsonl short", lambda p: (p / "docs.jsonl").write_text('{"id": "d0"}\n'), "1 documents but"),
    ("docs.jsonl garbage line", lambda p: (p / "docs.jsonl").write_text("oops\n"), "corrupted document line"),
    (
        "docs.jsonl non-UTF-8",
        lambda p: (p / "docs.jsonl").write_bytes((p / "docs.jsonl").read_bytes().replace(b"cat", b"c\xfft")),
        "docs.jsonl:1: not UTF-8 \\(byte 0xff\\)",
    ),
]


@pytest.mark.parametrize("damage,msg", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_damaged_index_is_a_clear_error(built, damage, msg):
    _, path = built
    damage(path)
    with pytest.raises(IndexFormatError, match=msg):
        Index.load(path)


@pytest.fixture()
def hnsw_built(tiny, tmp_path):
    vecs = np.random.default_rng(0).standard_normal((300, tiny.hidden_size)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    build_index(tiny, docs(300), tmp_path / "h", vectors=vecs, exact_threshold=0, show_progress_bar=False)
    return tmp_path / "h"


def _poke(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


HNSW_DAMAGE = [
    ("header count", lambda f: _poke(f, 16, (10**12).to_bytes(8, "little")), "header says 1000000000000 vectors"),
    ("header M", lambda f: _poke(f, 72, (7).to_bytes(8, "little")), "header has M=7"),
    ("header element size", lambda f: _poke(f, 24, (12).to_bytes(8, "little")), "element layout does not fit"),
    ("header entry point", lambda f: _poke(f, 52, (10**6).to_bytes(4, "little")), "entry point or level out of range"),
    (
        "header max level",
        lambda f: _poke(f, 48, (9).to_bytes(4, "little")),
        "entry point is not on the top level|impossible size",
    ),
    ("header all garbage", lambda f: _poke(f, 0, b"\xff" * 96), "is corrupted"),
    (
        "a link past the end",
        lambda f: _poke(f, 96 + 4, (10**6).to_bytes(4, "little")),
        "level-0 link points past the last vector",
    ),
    ("cut short", lambda f: f.write_bytes(f.read_bytes()[:5000]), "bytes, the header promises|cut short|impossible size"),
    ("trailing bytes", lambda f: f.write_bytes(f.read_bytes() + b"\0" * 8), "unexpected bytes at the end"),
    ("empty file", lambda f: f.write_bytes(b""), "shorter than the header"),
]


@pytest.mark.parametrize("damage,msg", [d[1:] for d in HNSW_DAMAGE], ids=[d[0] for d in HNSW_DAMAGE])
def test_corrupted_hnsw_file_is_an_error_not_a_crash(hnsw_built, damage, msg):
    """hnswlib trusts its file; before the check a bad header was a segmentation fault of the whole process."""
    damage(hnsw_built / "index.bin")
    with pytest.raises(IndexFormatError, match=msg):
        Index.load(hnsw_built)


def test_hnsw_file_check_accepts_every_real_graph(hnsw_built, tiny):
    loaded = Index.load(hnsw_built)  # 300 vectors: a graph with upper levels
    assert len(loaded) == 300 and loaded.search(loaded.vectors()[7], k=1)[0][0].id == "d7"


def test_nan_vectors_are_refused_when_added(tiny, tmp_path):
    vecs = np.ones((2, tiny.hidden_size), np.float32)
    vecs[1, 0] = np.nan
    with pytest.raises(ValueError, match="vector of document 'd1' is not finite"):
        build_index(tiny, docs(2), tmp_path / "x", vectors=vecs, show_progress_bar=False)
    assert not (tmp_path / "x").exists()


def test_index_is_readable_by_other_accounts(built):
    """The folder and its files follow the umask (0755/0644 here), not mkdtemp/mkstemp's private 0700/0600."""
    import os
    import stat

    _, path = built
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask
    for f in path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name


def test_int8_compact_index(tiny, tmp_path):
    vecs = encode_documents(tiny, docs(), show_progress_bar=False)
    full = build_index(tiny, docs(), tmp_path / "f", vectors=vecs, show_progress_bar=False)
    build_index(tiny, docs(), tmp_path / "c", vectors=vecs, compact="int8", show_progress_bar=False)
    assert (tmp_path / "c" / "index.faiss").is_file() and not (tmp_path / "c" / "vectors.npy").exists()
    loaded = Index.load(tmp_path / "c")
    assert loaded.meta.compact == "int8" and loaded.meta.backend == "exact"
    rnd = np.random.default_rng(1).standard_normal((300, tiny.hidden_size)).astype(np.float32)
    rnd /= np.linalg.norm(rnd, axis=1, keepdims=True)
    f300 = build_index(tiny, docs(300), tmp_path / "f300", vectors=rnd, show_progress_bar=False)
    c300 = build_index(tiny, docs(300), tmp_path / "c300", vectors=rnd, compact="int8", show_progress_bar=False)
    assert f300.memory_bytes() == 300 * tiny.hidden_size * 4
    assert c300.memory_bytes() < 300 * tiny.hidden_size * 1.1  # 1 byte per dimension instead of 4, plus the trained ranges
    np.testing.assert_allclose(loaded.vectors(), vecs, atol=0.02)  # decoded int8 is close to the floats
    for a, b in zip(full.search(vecs, 3), loaded.search(vecs, 3)):
        assert a[0].id == b[0].id and abs(a[0].score - b[0].score) < 0.02
    # a flat int8 index retrains its ranges on every add: a first vector alone does not clip later ones
    one = build_index(tiny, docs(1), tmp_path / "one", vectors=vecs[:1], compact="int8", show_progress_bar=False)
    build_index(tiny, docs(5, start=1), tmp_path / "one", base=one, vectors=vecs[1:], show_progress_bar=False)
    np.testing.assert_allclose(Index.load(tmp_path / "one").vectors(), vecs, atol=0.02)
    # adding crosses the threshold: the int8 index becomes an int8 HNSW graph
    loaded.meta.exact_threshold = 8
    more = encode_documents(tiny, docs(3, start=6), show_progress_bar=False)
    build_index(tiny, docs(3, start=6), tmp_path / "c", base=loaded, vectors=more, show_progress_bar=False)
    again = Index.load(tmp_path / "c")
    assert len(again) == 9 and again.meta.backend == "hnsw" and again.meta.compact == "int8"
    assert again.search(more[1], k=1)[0][0].id == "d7"
    raw = bytearray((tmp_path / "c" / "index.faiss").read_bytes())
    raw[10] ^= 0xFF
    (tmp_path / "c" / "index.faiss").write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match="SHA-256 does not match"):
        Index.load(tmp_path / "c")


@pytest.mark.parametrize(
    "name,content,msg",
    [
        ("latin1.txt", b"caf\xe9 au lait\n", "latin1.txt:1: not UTF-8 text \\(byte 0xe9 at offset 3\\)"),
        ("latin1.jsonl", b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n', "latin1.jsonl:2: not UTF-8"),
        ("surrogate.jsonl", b'{"_id": "a", "text": "x \\ud800 y"}\n', "surrogate.jsonl:1: the text holds a lone surrogate"),
    ],
)
def test_corpus_encoding_errors(tmp_path, name, content, msg):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CorpusError, match=msg):
        read_corpus(tmp_path / name)


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
    assert [r.truncated for r in res] == [False, False]
    assert [r.truncated for r in s.search_many(["cat " * 500, "cat"], k=1)] == [True, False]
    with pytest.raises(TypeError):
        s.search_many("not a list")
    with pytest.raises(ValueError, match="k must be"):
        s.search("x", k=0)


def test_searcher_query_modes(built, tiny):
    """search takes the three query modes of encode_query; "mix" ranks by exactly encode_query's mix embedding
    (one greedy rollout) and shows the reasoning it was read after."""
    _, path = built
    s = Searcher(path, tiny)
    tiny.prompts.max_reasoning_tokens = 4
    queries = ["the cat", "rain"]
    mixed = s.search_many(queries, k=3, reasoning="mix", mix_weight=0.3)
    on = s.search_many(queries, k=3, reasoning="on")
    want = tiny.encode_query(queries, reasoning="mix", mix_weight=0.3)
    for r, w, o in zip(mixed, s.index.search(want, 3), on):
        assert [h.id for h in r.hits] == [h.id for h in w]
        np.testing.assert_allclose([h.score for h in r.hits], [h.score for h in w], atol=1e-5)
        assert isinstance(r.reasoning, str) and r.reasoning == o.reasoning  # the same greedy rollout
    for mode, weight in (("off", 1.0), ("on", 0.0)):  # the mix's two ends
        ends = s.search_many(queries, k=3, reasoning="mix", mix_weight=weight)
        for a, b in zip(ends, s.search_many(queries, k=3, reasoning=mode)):
            assert [h.id for h in a.hits] == [h.id for h in b.hits]
            np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-5)
    assert s.search_many(queries, k=1, reasoning="off")[0].reasoning is None
    with pytest.raises(ValueError, match="reasoning must be"):
        s.search("x", reasoning="maybe")
    with pytest.raises(ValueError, match="mix_weight must be in"):
        s.search("x", reasoning="mix", mix_weight=1.5)


# ---------------------------------------------------------------------------- CLI (through searchr3.cli.main)
def test_cli_build_add_search(cli, tiny_model_dir, tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(TEXTS[:4]) + "\n")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"_id": f"b{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS[4:])))
    idx = tmp_path / "idx"
    common = ["--model", tiny_model_dir, "--fp32"]
    out = cli("index", "build", "--corpus", tmp_path / "a.txt", "--out", idx, "--max-length", "400", *common)
    assert out.code == 0, out.err[-2000:]
    assert "indexed 4 documents (float32, exact search" in out.out and "no document was cut at --max-length 400" in out.out
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
    out = cli("search", idx, "paris", "-k", "2", "--reasoning", "mix", "--mix-weight", "0.5", "--json", "--fp32")
    assert out.code == 0, out.err[-2000:]
    (line,) = [json.loads(x) for x in out.out.strip().splitlines()]
    assert isinstance(line["reasoning"], str) and len(line["hits"]) == 2
    cli("search", idx, "paris", "--reasoning", "maybe", "--fp32").assert_bad_input("--reasoning")
    cli("search", idx, "paris", "--reasoning", "mix", "--mix-weight", "1.5", "--fp32").assert_bad_input("--mix-weight")
    out = cli("search", idx, "cat " * 500, "-k", "1", "--fp32")
    assert out.code == 0 and "note: the query was cut at the index's max_length (400 tokens)" in out.out


def test_cli_errors(cli, tiny_model_dir, tmp_path):
    cli("index", "build", "--corpus", tmp_path / "none.txt", "--out", tmp_path / "i", "--model", tiny_model_dir).assert_bad_input(
        "does not exist"
    )
    cli("search", tmp_path / "i", "q").assert_bad_input("does not exist")
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    out = cli(
        "index",
        "build",
        "--corpus",
        tmp_path / "a.txt",
        "--out",
        tmp_path / "i",
        "--model",
        tiny_model_dir,
        "--max-length",
        "400",
        "--fp32",
    )
    assert out.code == 0, out.err[-2000:]
    other = build_tiny_model(tmp_path / "other", seed=3)
    cli("search", tmp_path / "i", "q", "--model", other, "--fp32").assert_bad_input("built by model")
    cli("index", "add", tmp_path / "i", "--corpus", tmp_path / "a.txt", "--model", other, "--fp32").assert_bad_input(
        "built by model"
    )
    cli("index", "add", tmp_path / "i", "--corpus", tmp_path / "a.txt", "--fp32").assert_bad_input("already in the index")
    cli("search", tmp_path / "i", "  ").assert_bad_input("empty")
    cli("search", tmp_path / "i", " ").assert_bad_input("empty")
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    cli("index", "build", "--corpus", tmp_path / "bad.txt", "--out", tmp_path / "j", "--model", tiny_model_dir).assert_bad_input(
        "bad.txt:2: not UTF-8 text"
    )
    cli(
        "index", "build", "--corpus", tmp_path / "a.txt", "--out", tmp_path / "j", "--model", tiny_model_dir, "--compact", "int4"
    ).assert_bad_input("--compact")
    (tmp_path / "afile").write_text("keep me")
    cli(
        "index", "build", "--corpus", tmp_path / "a.txt", "--out", tmp_path / "afile", "--model", tiny_model_dir, "--overwrite"
    ).assert_bad_input("is not a folder")
    assert (tmp_path / "afile").read_text() == "keep me"


def test_cli_reports_truncation_compaction_and_the_ann_choice(cli, tiny_model_dir, tmp_path):
    long = " ".join(["the heart pumps blood through the body"] * 40)
    (tmp_path / "c.txt").write_text("\n".join([long, "short one", long, "cat"]) + "\n")
    out = cli(
        "index",
        "build",
        "--corpus",
        tmp_path / "c.txt",
        "--out",
        tmp_path / "i",
        "--model",
        tiny_model_dir,
        "--max-length",
        "120",
        "--fp32",
        "--compact",
        "int8",
        "--exact-threshold",
        "2",
    )
    assert out.code == 0, out.err[-2000:]
    assert (
        "plan: 4 documents -> int8 vectors, an HNSW graph (approximate search: 4 documents >= --exact-threshold 2); vectors ~0 MiB"
        in out.out
    )
    assert "indexed 4 documents (int8, HNSW graph: approximate search, as 4 documents >= --exact-threshold 2" in out.out
    from searchr3.commands.index import _plan

    assert "warning: that is over half the memory available now" in _plan(10**12, 576, "none", 20_000)
    assert "--compact int8 needs a quarter" in _plan(10**12, 576, "none", 20_000)
    assert "2 of 4 documents were cut at --max-length 120 tokens" in out.out
    assert Index.load(tmp_path / "i").meta.truncated == 2
