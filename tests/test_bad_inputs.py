"""Bad input to the command line: one `error:` line on stderr, exit code 2, no traceback (through `searchr3.cli.main`)."""

import json
import shutil

import numpy as np
import pytest

from tests.conftest import write_beir


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model_dir):
    from searchr3 import SearchR3
    from searchr3.index import Doc, build_index

    m = SearchR3.from_pretrained(tiny_model_dir, bf16=False, max_length=400)
    path = tmp_path_factory.mktemp("bad") / "idx"
    build_index(
        m,
        [Doc(f"d{i}", t) for i, t in enumerate(["the cat", "paris france", "proteins fold"])],
        path,
        model_name=str(tiny_model_dir),
        show_progress_bar=False,
    )
    return path


def damaged(index_dir, tmp_path, damage):
    copy = tmp_path / "idx"
    shutil.copytree(index_dir, copy)
    damage(copy)
    return copy


def _meta(**fields):
    def damage(p):
        meta = json.loads((p / "meta.json").read_text())
        meta.update(fields)
        (p / "meta.json").write_text(json.dumps(meta))

    return damage


def _nan(p):
    v = np.load(p / "vectors.npy")
    v[1] = np.nan
    np.save(p / "vectors.npy", v)


INDEX_DAMAGE = [
    ("NaN vectors", _nan, "vectors contain NaN or inf"),
    ("max_length 0", _meta(max_length=0), "max_length is 0, expected an integer >= 16"),
    ("docs.jsonl non-UTF-8", lambda p: (p / "docs.jsonl").write_bytes(b'{"id": "d0", "text": "\xff"}\n' * 3), "not UTF-8"),
    ("vectors.npy empty", lambda p: (p / "vectors.npy").write_bytes(b""), "vectors.npy is corrupted"),
    ("vectors.npy strings", lambda p: np.save(p / "vectors.npy", np.array([["a"] * 32] * 3)), "expected float32 vectors"),
]


@pytest.mark.parametrize("damage,msg", [d[1:] for d in INDEX_DAMAGE], ids=[d[0] for d in INDEX_DAMAGE])
def test_search_a_broken_index(cli, index_dir, tmp_path, damage, msg):
    idx = damaged(index_dir, tmp_path, damage)
    cli("search", idx, "cat", "--fp32").assert_bad_input(msg)


def test_search_a_corrupted_hnsw_header(cli, tiny_model_dir, tmp_path):
    """Used to be a segmentation fault inside hnswlib."""
    (tmp_path / "c.txt").write_text("the cat\nparis france\nproteins fold\n")
    out = cli(
        "index",
        "build",
        "--corpus",
        tmp_path / "c.txt",
        "--out",
        tmp_path / "h",
        "--model",
        tiny_model_dir,
        "--max-length",
        "400",
        "--fp32",
        "--exact-threshold",
        "0",
    )
    assert (tmp_path / "h" / "index.bin").is_file(), out.err
    raw = bytearray((tmp_path / "h" / "index.bin").read_bytes())
    raw[:96] = b"\x7f" * 96
    (tmp_path / "h" / "index.bin").write_bytes(bytes(raw))
    cli("search", tmp_path / "h", "cat", "--fp32").assert_bad_input("index.bin is corrupted")


def test_build_with_bad_corpus_or_model(cli, tiny_model_dir, tmp_path):
    (tmp_path / "c.jsonl").write_bytes(b'{"_id": "a", "text": "na\xefve"}\n')
    out = cli("index", "build", "--corpus", tmp_path / "c.jsonl", "--out", tmp_path / "i", "--model", tiny_model_dir)
    out.assert_bad_input("c.jsonl:1: not UTF-8 text (byte 0xef")
    notok = tmp_path / "notok"
    shutil.copytree(tiny_model_dir, notok)
    for f in notok.glob("tokenizer*"):
        f.unlink()
    (tmp_path / "ok.txt").write_text("fine\n")
    out = cli("index", "build", "--corpus", tmp_path / "ok.txt", "--out", tmp_path / "i", "--model", notok)
    out.assert_bad_input("cannot load a tokenizer from")


def test_eval_with_no_judged_query_left(cli, tmp_path):
    data = write_beir(tmp_path / "b", {"d0": "cat", "d1": "dog"}, {"q": "dog"}, [("q", "d1", 1)], split="test")
    out = cli("eval", "--data", data, "--model", "none", "--baselines", "--max-docs", "1")
    out.assert_bad_input("no query has a relevant judgment among the first 1 documents (raise --max-docs)")


def test_eval_out_a_folder(cli, tmp_path):
    data = write_beir(tmp_path / "b", {"d0": "cat", "d1": "dog"}, {"q": "dog"}, [("q", "d1", 1)], split="test")
    (tmp_path / "out").mkdir()
    out = cli("eval", "--data", data, "--model", "none", "--baselines", "--out", tmp_path / "out")
    out.assert_bad_input("out is a folder, not a regular file: refusing to replace it")
