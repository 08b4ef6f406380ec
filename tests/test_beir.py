"""BEIR-format loading: the defined behaviour on malformed input, and the shared datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from searchr3.data import (
    DataError,
    UnknownDocumentWarning,
    available_splits,
    doc_text,
    judged_queries,
    load_beir,
)
from tests.conftest import shared_dataset

CORPUS = [
    {"_id": "d1", "title": "Cats", "text": "Cats purr."},
    {"_id": "d2", "text": "Dogs bark."},
    {"_id": 3, "title": "", "text": "Fish swim."},
]
QUERIES = [{"_id": "q1", "text": "purring animal"}, {"_id": "q2", "text": "barking"}]
QRELS = "q1\td1\t2\nq2\td2\t1\n"


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def write_dataset(
    folder: Path,
    corpus: str | bytes = jsonl(CORPUS),
    queries: str | bytes = jsonl(QUERIES),
    qrels: str | bytes = QRELS,
    split: str = "test",
) -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for path, content in [
        (folder / "corpus.jsonl", corpus),
        (folder / "queries.jsonl", queries),
        (folder / "qrels" / f"{split}.tsv", qrels),
    ]:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return folder


def test_loads_a_small_dataset(tmp_path: Path) -> None:
    ds = load_beir(write_dataset(tmp_path / "tiny"))
    assert ds.name == "tiny" and ds.split == "test"
    assert list(ds.corpus) == ["d1", "d2", "3"]  # integer ids become strings
    assert ds.corpus["d2"] == {"title": "", "text": "Dogs bark."}
    assert ds.queries == {"q1": "purring animal", "q2": "barking"}
    assert ds.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}}
    assert ds.judged_query_ids() == ["q1", "q2"]


def test_doc_text_joins_title_and_text() -> None:
    assert doc_text({"title": "Cats", "text": "Cats purr. "}) == "Cats Cats purr."
    assert doc_text({"title": "", "text": "Dogs bark."}) == "Dogs bark."
    assert doc_text({"text": "Fish."}) == "Fish."


@pytest.mark.parametrize("header", ["", "query-id\tcorpus-id\tscore\n", "\nqid\tdocid\tgrade\n"])
def test_qrels_with_or_without_header(tmp_path: Path, header: str) -> None:
    ds = load_beir(write_dataset(tmp_path, qrels=header + QRELS))
    assert ds.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}}


def test_blank_lines_crlf_and_bom_are_accepted(tmp_path: Path) -> None:
    corpus = "\ufeff" + jsonl(CORPUS[:1]) + "\n   \n" + jsonl(CORPUS[1:])
    qrels = "q1\td1\t2\r\n\r\nq2\td2\t1\r\n"
    ds = load_beir(write_dataset(tmp_path, corpus=corpus, qrels=qrels))
    assert len(ds.corpus) == 3
    assert ds.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}}


def test_queries_without_judgments_are_kept_but_not_judged(tmp_path: Path) -> None:
    queries = jsonl([*QUERIES, {"_id": "q3", "text": "unjudged"}, {"_id": "q4", "text": "zero"}])
    ds = load_beir(write_dataset(tmp_path, queries=queries, qrels=QRELS + "q4\t3\t0\n"))
    assert set(ds.queries) == {"q1", "q2", "q3", "q4"}
    assert ds.judged_query_ids() == ["q1", "q2"]  # q4 has only a non-relevant judgment
    assert ds.judged_query_ids(relevance_level=2) == ["q1"]
    assert judged_queries({"a": {"x": 0}, "b": {"y": 1}}) == ["b"]


def assert_data_error(excinfo: pytest.ExceptionInfo[DataError], name: str, line: int | None) -> None:
    err = excinfo.value
    assert err.path is not None and err.path.name == name
    assert err.line == line
    assert name in str(err)


def test_non_utf8_bytes(tmp_path: Path) -> None:
    corpus = jsonl(CORPUS[:1]).encode() + b'{"_id": "d2", "text": "caf\xe9"}\n'
    with pytest.raises(DataError, match="UTF-8") as excinfo:
        load_beir(write_dataset(tmp_path, corpus=corpus))
    assert_data_error(excinfo, "corpus.jsonl", 2)


def test_malformed_json_line(tmp_path: Path) -> None:
    queries = jsonl(QUERIES[:1]) + '{"_id": "q2", "text": "barking"\n'
    with pytest.raises(DataError, match="malformed JSON") as excinfo:
        load_beir(write_dataset(tmp_path, queries=queries))
    assert_data_error(excinfo, "queries.jsonl", 2)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "no id"}, "_id"),
        ({"_id": "", "text": "empty id"}, "_id"),
        ({"_id": ["d9"], "text": "list id"}, "_id"),
        ({"_id": "d9"}, "text"),
        ({"_id": "d9", "title": 5, "text": "x"}, "title"),
        ({"_id": "d1", "text": "again"}, "duplicate id 'd1'"),
    ],
)
def test_bad_corpus_records(tmp_path: Path, record: dict, message: str) -> None:
    with pytest.raises(DataError, match=message) as excinfo:
        load_beir(write_dataset(tmp_path, corpus=jsonl([*CORPUS, record])))
    assert_data_error(excinfo, "corpus.jsonl", 4)


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="JSON object") as excinfo:
        load_beir(write_dataset(tmp_path, corpus=jsonl(CORPUS) + "[1, 2]\n"))
    assert_data_error(excinfo, "corpus.jsonl", 4)


def test_empty_corpus(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="corpus is empty") as excinfo:
        load_beir(write_dataset(tmp_path, corpus="\n\n"))
    assert_data_error(excinfo, "corpus.jsonl", None)


@pytest.mark.parametrize(
    ("qrels", "message", "line"),
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", "not an integer", 2),
        ("q1\td1\t2\nq2\td2\t1.5\n", "not an integer", 2),
        ("q1\td1\t2\nq2\td2\n", "3 tab-separated columns", 2),
        ("q1\t0\td1\t2\n", "3 tab-separated columns", 1),
        ("q1 d1 2\n", "3 tab-separated columns", 1),
        ("q1\td1\t2\nq1\td1\t1\n", "duplicate judgment", 2),
        ("q1\td1\t2\nq9\td1\t1\n", "'q9' is not in queries.jsonl", 2),
        ("q1\t\t2\n", "empty", 1),
    ],
)
def test_bad_qrels(tmp_path: Path, qrels: str, message: str, line: int) -> None:
    with pytest.raises(DataError, match=message) as excinfo:
        load_beir(write_dataset(tmp_path, qrels=qrels))
    assert_data_error(excinfo, "test.tsv", line)


def test_qrels_without_judgments(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no judgments"):
        load_beir(write_dataset(tmp_path, qrels="query-id\tcorpus-id\tscore\n"))


def test_unknown_corpus_id_warns_and_keeps_the_judgment(tmp_path: Path) -> None:
    with pytest.warns(UnknownDocumentWarning, match="not in the corpus"):
        ds = load_beir(write_dataset(tmp_path, qrels=QRELS + "q1\tgone\t1\n"))
    assert ds.qrels["q1"] == {"d1": 2, "gone": 1}


def test_missing_folder_files_and_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_beir(tmp_path / "nowhere")
    folder = write_dataset(tmp_path / "ds", split="train")
    assert available_splits(folder) == ["train"]
    with pytest.raises(DataError, match=r"no qrels for split 'test' \(available: \['train'\]\)"):
        load_beir(folder, "test")
    (folder / "queries.jsonl").unlink()
    with pytest.raises(DataError, match="does not exist") as excinfo:
        load_beir(folder, "train")
    assert_data_error(excinfo, "queries.jsonl", None)
    with pytest.raises(DataError, match="no qrels/ folder"):
        available_splits(tmp_path)


def test_shared_msmarco_mini_loads() -> None:
    ds = load_beir(shared_dataset("msmarco-mini"), "test")
    assert available_splits(shared_dataset("msmarco-mini")) == ["test"]
    assert (len(ds.corpus), len(ds.queries), len(ds.judged_query_ids())) == (5000, 50, 43)
    assert sum(len(j) for j in ds.qrels.values()) == 4102
    assert {s for j in ds.qrels.values() for s in j.values()} == {1, 2, 3}


def test_shared_scifact_2k_loads() -> None:
    ds = load_beir(shared_dataset("scifact-2k"), "train")
    assert (len(ds.corpus), len(ds.queries), len(ds.judged_query_ids())) == (2101, 137, 137)
    assert sum(len(j) for j in ds.qrels.values()) == 142
