"""Training-example sources: BEIR pairs, inverse cloze, WordNet, BM25 hard negatives."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchr3.data.beir import DataError
from searchr3.data.sources import (
    Example,
    add_bm25_negatives,
    beir_examples,
    cloze_examples,
    load_training_folder,
    parse_wordnet_line,
    split_sentences,
    wordnet_examples,
)
from tests.conftest import write_beir as _write_beir

DOCS = {
    "d0": "Cats sleep most of the day. They hunt mice at night. A cat purrs when it is content.",
    "d1": "Paris is the capital of France. The Seine flows through the city. Millions visit the Louvre.",
    "d2": "Proteins fold into shapes. Their shape sets their function. Misfolded proteins cause disease.",
    "d3": "The heart pumps blood. Arteries carry blood away from the heart. Veins bring it back again.",
}
QUERIES = {"q0": "why do cats purr", "q1": "capital city of france", "q2": "protein misfolding disease", "q3": "what pumps blood"}


def write_beir(folder: Path, qrels: list[tuple[str, str, int]], docs=DOCS, queries=QUERIES) -> Path:
    return _write_beir(folder, docs, queries, qrels)


def test_beir_examples_pairs_each_judged_positive(tmp_path):
    ds = load_training_folder(write_beir(tmp_path, [("q0", "d0", 1), ("q1", "d1", 1), ("q1", "d2", 1), ("q3", "d3", 0)]))
    exs = beir_examples(ds)
    assert [(e.query, e.positive) for e in exs] == [
        (QUERIES["q0"], DOCS["d0"]),
        (QUERIES["q1"], DOCS["d1"]),
        (QUERIES["q1"], DOCS["d2"]),
    ]
    assert exs[1].positive_ids == {"d1", "d2"}  # both positives of q1 are off-limits as its negatives
    assert [e.query for e in beir_examples(ds, ["q1"])] == [QUERIES["q1"]] * 2


def test_training_folder_without_usable_pairs_is_an_error(tmp_path):
    ds = load_training_folder(write_beir(tmp_path, [("q0", "d0", 0), ("q1", "d1", 0)]))
    with pytest.raises(DataError, match="no usable"):
        beir_examples(ds)


def test_positive_missing_from_corpus_is_an_error(tmp_path):
    folder = write_beir(tmp_path, [("q0", "d0", 1), ("q1", "nope", 1)])
    with pytest.raises(DataError, match="missing from the corpus"):
        load_training_folder(folder)


def test_cloze_query_is_a_sentence_removed_from_its_passage():
    corpus = {d: {"title": "", "text": t} for d, t in DOCS.items()}
    exs = cloze_examples(corpus, 3, seed=1, min_words=3)
    assert len(exs) == 3
    for ex in exs:
        (did,) = ex.positive_ids
        assert ex.query in split_sentences(DOCS[did])
        assert ex.query not in ex.positive and ex.positive in DOCS[did].replace(ex.query + " ", "").replace(" " + ex.query, "")
    assert cloze_examples(corpus, 3, seed=1, min_words=3) == exs  # seeded
    titled = cloze_examples({"x": {"title": "Cats", "text": "They purr."}}, 5)
    assert [(e.query, e.positive) for e in titled] == [("Cats", "They purr.")]


def test_parse_wordnet_line():
    line = '02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 | a member of the genus Canis; "the dog barked all night"  \n'
    assert parse_wordnet_line(line) == ("02084071", ["dog", "domestic dog", "Canis familiaris"], "a member of the genus Canis")
    assert parse_wordnet_line("  1 This software and database is being provided\n") is None


def test_wordnet_examples_from_data_files(tmp_path):
    lines = [
        "  1 licence header line\n",
        "00000001 05 n 02 dog 0 domestic_dog 0 000 | a domesticated carnivorous mammal that barks  \n",
        "00000002 05 n 01 cat 0 000 | a small domesticated feline mammal  \n",
        "00000003 05 n 01 x 0 000 | too short  \n",  # definitions under 3 words are skipped
    ]
    (tmp_path / "data.noun").write_text("".join(lines))
    for name in ("data.verb", "data.adj", "data.adv"):
        (tmp_path / name).write_text("00000009 29 v 01 run(a) 0 000 | move fast by using your legs  \n")
    exs = wordnet_examples(100, wordnet_dir=tmp_path)
    pairs = {(e.query, e.positive) for e in exs}
    assert ("a domesticated carnivorous mammal that barks", "dog, domestic dog") in pairs
    assert ("move fast by using your legs", "run") in pairs
    assert len(exs) == 5 and all(e.source == "wordnet" for e in exs)
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        wordnet_examples(1, wordnet_dir=tmp_path / "absent")


def test_bm25_negatives_are_hard_and_never_known_positives():
    pool = dict(DOCS)
    exs = [
        Example("capital city of france paris", DOCS["d1"], positive_ids=frozenset({"d1"})),
        Example("heart blood arteries veins", DOCS["d3"], positive_ids=frozenset({"d3", "d1"})),
    ]
    out = add_bm25_negatives(exs, pool, n=2, seed=0)
    for ex, orig in zip(out, exs):
        assert len(ex.negatives) == 2 and len(set(ex.negatives)) == 2
        assert all(pool[d] not in ex.negatives for d in orig.positive_ids)
    assert DOCS["d1"] not in out[1].negatives
    with pytest.raises(ValueError, match="pool"):
        add_bm25_negatives(exs, {"d0": DOCS["d0"]}, n=1)


def test_bm25_ranks_the_lexical_match_first():
    exs = [Example("misfolded proteins disease", "unrelated positive text", positive_ids=frozenset({"zz"}))]
    assert add_bm25_negatives(exs, DOCS, n=1)[0].negatives == (DOCS["d2"],)


def test_real_scifact_training_pairs(shared_data):
    ds = load_training_folder(shared_data / "scifact-2k")
    exs = beir_examples(ds)
    assert len(exs) == 142 and len({e.query for e in exs}) == 137
    with pytest.raises(DataError):  # msmarco-mini has no training split: it is never a training source
        load_training_folder(shared_data / "msmarco-mini")
