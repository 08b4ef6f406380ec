"""Shared fixtures: tiny random chat models built in the test, and the shared data folder."""
from __future__ import annotations

import os
from pathlib import Path

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

_CORPUS = [
    "the cat sat on the mat", "paris is the capital of france", "proteins fold into shapes",
    "a search engine ranks documents for a query", "the heart pumps blood through the body",
    "embedding vectors represent text meaning", "rain falls from clouds in the sky",
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
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is not present")
    return SHARED_DATA
