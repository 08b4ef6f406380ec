"""Shared test helpers: tiny random chat models, small BEIR folders, the shared data folder, and
``cli``, which runs the real entry point (:func:`searchr3.cli.main`) in-process."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Short prompts for the tiny model: its tokenizer spells the default system prompts out in ~200 tokens.
TINY_PROMPTS = {
    "query_system": "Query.",
    "document_system": "Passage.",
    "reasoning_system": "Think.",
    "direct_answer": "E <|embed_token|>",
}

_CORPUS = [
    "the cat sat on the mat",
    "paris is the capital of france",
    "proteins fold into shapes",
    "a search engine ranks documents for a query",
    "the heart pumps blood through the body",
    "embedding vectors represent text meaning",
    "rain falls from clouds in the sky",
]


def build_tiny_model(path: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32, with_embed_token: bool = False) -> Path:
    """A 2-layer random Llama with a small byte-level BPE tokenizer and a ChatML template."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + (["<|embed_token|>"] if with_embed_token else [])
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_CORPUS * 5, vocab_size=400, min_frequency=1, special_tokens=specials, show_progress=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def tiny(tiny_model_dir):
    """A fresh SearchR3 over the tiny model, fp32 (bf16 off) so that exactness checks are tight."""
    from searchr3 import SearchR3

    return SearchR3.from_pretrained(tiny_model_dir, bf16=False, max_length=400)


def shared_dataset(name: str) -> Path:
    """A dataset of ``../shared/data``. Its absence fails the test: CI must never go green without it."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.fail(f"shared dataset not found at {folder} (expected ../shared/data next to the repo)", pytrace=False)
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder {SHARED_DATA} is not present", pytrace=False)
    return SHARED_DATA


def write_beir(
    folder: Path,
    docs: Mapping[str, str | Mapping[str, str]],
    queries: Mapping[str, str],
    qrels: Iterable[tuple[str, str, int]],
    split: str = "train",
) -> Path:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv). ``docs`` maps ids to text (or to
    ``{"title", "text"}``); ``qrels`` are (query, doc, grade) rows."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    rows = [{"_id": d, **(t if isinstance(t, Mapping) else {"title": "", "text": t})} for d, t in docs.items()]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels)
    )
    return folder


def write_topic_beir(folder: Path, topics: Sequence[str], passage: str = "The {t} is here. This passage is about {t}.") -> Path:
    """A BEIR folder (split train) with one passage ``d<i>`` per topic and one query ``q<i>`` ("what about
    <topic>") judged relevant to it."""
    docs = {f"d{i}": passage.format(t=t) for i, t in enumerate(topics)}
    queries = {f"q{i}": f"what about {t}" for i, t in enumerate(topics)}
    return write_beir(folder, docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(len(topics))])


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def assert_bad_input(self, *fragments: str) -> None:
        """Exit code 2, stderr ending with exactly one ``error:`` line (containing ``fragments``), no traceback."""
        lines = self.err.strip().splitlines()
        assert self.code == 2, (self.code, self.out[-500:], self.err[-2000:])
        assert "Traceback" not in self.err, self.err[-2000:]
        assert lines and lines[-1].startswith("error: "), self.err[-2000:]
        assert sum(line.startswith("error:") for line in lines) == 1, self.err[-2000:]
        for f in fragments:
            assert f in lines[-1], (f, lines[-1])


@pytest.fixture()
def cli(capsys):
    """``cli(*args)`` runs ``searchr3 *args`` through :func:`searchr3.cli.main` and returns a :class:`CliResult`."""
    from searchr3.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a thread; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
