"""The model core: token handling, prompts, direct and reasoning encoding, saving and loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from searchr3 import PromptConfig, SearchR3
from searchr3.backbone import ModelLoadError
from searchr3.prompts import PromptTemplate
from tests.conftest import build_tiny_model

TEXTS = ["the cat sat on the mat", "paris", "a search engine ranks documents for a query about proteins", "rain"]


def full_forward_hidden(m: SearchR3, ids: list[int]) -> torch.Tensor:
    """Reference: the last position's final hidden state from a plain forward of the whole sequence."""
    with torch.no_grad():
        out = m.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[-1][0, -1]


def test_embed_token_added_once(tiny, tiny_model_dir):
    tok = tiny.tokenizer
    assert tok.convert_ids_to_tokens(tiny.embed_token_id) == "<|embed_token|>"
    assert tiny.model.get_input_embeddings().weight.shape[0] == len(tok)
    # the new row is the mean of the others: deterministic across loads
    again = SearchR3.from_pretrained(tiny_model_dir, bf16=False)
    assert torch.equal(again.model.get_input_embeddings().weight, tiny.model.get_input_embeddings().weight)


def test_existing_embed_token_kept(tmp_path):
    path = build_tiny_model(tmp_path / "m", with_embed_token=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    row = AutoModelForCausalLM.from_pretrained(path).get_input_embeddings().weight[tok.convert_tokens_to_ids("<|embed_token|>")]
    m = SearchR3.from_pretrained(path, bf16=False)
    assert m.embed_token_id == tok.convert_tokens_to_ids("<|embed_token|>")
    assert len(m.tokenizer) == len(tok)
    assert torch.equal(m.model.get_input_embeddings().weight[m.embed_token_id], row)


def test_direct_embedding_is_hidden_state_at_token(tiny):
    ids = tiny.prompt_ids(["paris"], "document")[0]
    assert ids[-1] == tiny.embed_token_id
    got = tiny.encode_document("paris", normalize_embeddings=False, convert_to_tensor=True)
    assert torch.allclose(got, full_forward_hidden(tiny, ids), atol=1e-5)


def test_shared_prompt_prefix_is_run_once_and_changes_nothing(tiny):
    """Texts of one kind share the prompt's head: it is run once per call (its keys and values reused by
    every batch), and each text's embedding is still its own full forward's hidden state at the token."""
    from searchr3.model import MIN_SHARED_PREFIX, shared_prefix

    ids = tiny.prompt_ids(TEXTS, "document")
    assert shared_prefix(ids) >= MIN_SHARED_PREFIX  # the path under test is taken
    seen = []
    hook = tiny.decoder_and_head()[0].register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        got = tiny.encode_document(TEXTS, batch_size=3, normalize_embeddings=False, convert_to_tensor=True)
    finally:
        hook.remove()
    prefix = shared_prefix(ids)
    assert seen[0] == (1, prefix) and all(
        shape[1] == max(len(ids[i]) for i in rows) - prefix for shape, rows in zip(seen[1:], ([2, 0, 1], [3]))
    )
    for row, x in zip(got, ids):
        assert torch.allclose(row, full_forward_hidden(tiny, x), atol=1e-5)
    assert shared_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 1  # every row keeps one token of its own
    assert shared_prefix([[5, 6], [7, 6]]) == 0 and shared_prefix([]) == 0


def test_batching_and_sorting_do_not_change_embeddings(tiny):
    one = tiny.encode_document(TEXTS, batch_size=1)
    many = tiny.encode_document(TEXTS, batch_size=3)
    assert one.shape == (4, tiny.hidden_size)
    np.testing.assert_allclose(one, many, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)


def test_query_and_document_prompts_differ(tiny):
    q = tiny.encode_query(TEXTS[:2])
    d = tiny.encode_document(TEXTS[:2])
    assert not np.allclose(q, d)


def test_single_string_output_and_tensor(tiny):
    v = tiny.encode_query("paris")
    assert v.shape == (tiny.hidden_size,)
    t = tiny.encode(["paris"], convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and t.shape == (1, tiny.hidden_size)
    assert tiny.encode([]).shape == (0, tiny.hidden_size)


def test_truncation_keeps_template_tail(tiny):
    long = "proteins fold into shapes " * 500
    ids = tiny.prompt_ids([long], "document")[0]
    tail = tiny.template("document").tail
    assert len(ids) == tiny.max_length
    assert ids[-len(tail) :] == tail and ids[-1] == tiny.embed_token_id
    assert np.isfinite(tiny.encode_document(long)).all()


def test_empty_and_whitespace_texts_have_defined_embeddings(tiny):
    e = tiny.encode_document(["", "   ", "\n"])
    assert np.isfinite(e).all()
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e[0], tiny.encode_document(""), atol=1e-6)


def test_bad_text_types_are_rejected(tiny):
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tiny.encode_document(["ok", None])
    with pytest.raises(ValueError, match="batch_size"):
        tiny.encode_document(["ok"], batch_size=0)
    with pytest.raises(TypeError, match="reasoning=True"):
        tiny.encode_query(["ok"], max_new_tokens=3)


def test_max_length_too_small_is_a_clear_error(tiny_model_dir):
    m = SearchR3.from_pretrained(tiny_model_dir, bf16=False, max_length=5)
    with pytest.raises(ValueError, match="no room for text"):
        m.encode_document(["paris"])


def test_prompt_config_validation():
    with pytest.raises(ValueError, match="must end with"):
        PromptConfig(direct_answer="no token here")
    with pytest.raises(ValueError, match="unknown prompt settings"):
        PromptConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="only defined for queries"):
        PromptConfig().system("document", reasoning=True)


def test_template_splits_chat_around_text(tiny):
    tpl: PromptTemplate = tiny.template("query", reasoning=True)
    text = tiny.tokenizer.decode(tpl.head + tpl.tail)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert tiny.prompts.reasoning_system in text


# ---------------------------------------------------------------- reasoning path
def test_reasoning_with_no_budget_equals_full_forward(tiny):
    """max_new_tokens=0: the token is appended at once; the cached path must match a full forward."""
    r = tiny.reason(TEXTS, max_new_tokens=0, normalize_embeddings=False, batch_size=4)
    for i, prompt in enumerate(r.prompt_ids):
        assert r.completion_ids[i] == [tiny.embed_token_id]
        assert torch.allclose(r.embeddings[i], full_forward_hidden(tiny, prompt + [tiny.embed_token_id]), atol=1e-4)
    assert r.emitted == [False] * 4


def test_reasoning_cache_matches_reencoding_the_whole_text(tiny):
    """Left-padded batch of different prompt lengths, sampled completions: embeddings from the cache
    equal a full forward over prompt + completion."""
    r = tiny.reason(TEXTS, max_new_tokens=6, do_sample=True, seed=3, normalize_embeddings=False, batch_size=4)
    for i, prompt in enumerate(r.prompt_ids):
        comp = r.completion_ids[i]
        assert comp[-1] == tiny.embed_token_id and 1 <= len(comp) <= 7
        assert tiny.embed_token_id not in comp[:-1]
        assert torch.allclose(r.embeddings[i], full_forward_hidden(tiny, prompt + comp), atol=1e-4)


def test_reasoning_runs_the_shared_prompt_head_once_and_changes_nothing(tiny, monkeypatch):
    """The reasoning prompts' common head is run once per call and its keys and values reused by every
    batch (the remainders left-padded after it): same greedy text and embeddings as without it."""
    import searchr3.model as model_module

    prompts = tiny.prompt_ids(TEXTS, "query", reasoning=True)
    head = model_module.shared_prefix(prompts)
    assert head >= model_module.MIN_SHARED_PREFIX  # the path under test is taken
    seen = []
    hook = tiny.decoder_and_head()[0].register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        shared = tiny.reason(TEXTS, max_new_tokens=6, normalize_embeddings=False, batch_size=3)
    finally:
        hook.remove()
    assert seen[0] == (1, head)  # the head, once
    assert seen[1] == (3, max(map(len, prompts)) - head)  # the first batch (the longest prompts): only what follows the head
    monkeypatch.setattr(model_module, "MIN_SHARED_PREFIX", 10**6)  # every batch runs its whole prompts
    plain = tiny.reason(TEXTS, max_new_tokens=6, normalize_embeddings=False, batch_size=3)
    assert shared.completion_ids == plain.completion_ids and shared.emitted == plain.emitted
    assert torch.allclose(shared.embeddings, plain.embeddings, atol=1e-5)


def test_sampling_is_reproducible_with_seed(tiny):
    a = tiny.reason(TEXTS, max_new_tokens=5, do_sample=True, seed=7)
    b = tiny.reason(TEXTS, max_new_tokens=5, do_sample=True, seed=7)
    assert a.completion_ids == b.completion_ids
    assert torch.allclose(a.embeddings, b.embeddings)


def _bias_towards(m: SearchR3, token_id: int) -> None:
    """Give the output layer a strong bias for one token, so greedy decoding always emits it."""
    head = m.model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[token_id] = 1e4
    m.model.set_output_embeddings(biased)


def test_model_that_emits_the_token(tiny):
    _bias_towards(tiny, tiny.embed_token_id)
    r = tiny.reason(TEXTS[:2], max_new_tokens=8)
    assert r.emitted == [True, True]
    assert all(c == [tiny.embed_token_id] for c in r.completion_ids)


def test_min_new_tokens_masks_the_token_and_end_of_turn_until_then(tiny):
    _bias_towards(tiny, tiny.embed_token_id)  # left alone, every rollout would stop at once
    r = tiny.reason(TEXTS[:2], max_new_tokens=8, min_new_tokens=3)
    for c in r.completion_ids:
        assert len(c) == 4 and c[-1] == tiny.embed_token_id  # three written tokens, then it stops by itself
        assert tiny.embed_token_id not in c[:3] and not set(c[:3]) & set(tiny.stop_token_ids())
    assert r.emitted == [True, True]
    with pytest.raises(ValueError, match="min_new_tokens must be in"):
        tiny.reason(TEXTS[:1], max_new_tokens=2, min_new_tokens=3)


def test_model_that_ends_its_turn_without_the_token(tiny):
    eos = tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")
    _bias_towards(tiny, eos)
    r = tiny.reason(TEXTS[:2], max_new_tokens=8, normalize_embeddings=False)
    assert r.emitted == [False, False]
    # the end-of-turn is replaced by the embedding token, which still yields an embedding
    assert all(c == [tiny.embed_token_id] for c in r.completion_ids)
    assert torch.allclose(r.embeddings[0], full_forward_hidden(tiny, r.prompt_ids[0] + [tiny.embed_token_id]), atol=1e-4)


def test_length_limit_appends_the_token(tiny):
    other = tiny.tokenizer.convert_tokens_to_ids("Ġcat") if "Ġcat" in tiny.tokenizer.get_vocab() else 50
    _bias_towards(tiny, other)
    r = tiny.reason(["paris"], max_new_tokens=4)
    assert r.completion_ids[0] == [other] * 4 + [tiny.embed_token_id]
    assert r.emitted == [False]
    assert isinstance(r.texts[0], str) and r.texts[0]
    q = tiny.encode_query(["paris"], reasoning=True, max_new_tokens=4)
    np.testing.assert_allclose(q[0], r.embeddings[0].numpy(), atol=1e-5)


# ---------------------------------------------------------------- saving and loading
def test_save_and_reload_full_model(tiny, tmp_path):
    prompts = PromptConfig(query_system="Q sys <|embed_token|>", max_reasoning_tokens=5)
    tiny.prompts = prompts
    before = tiny.encode_query(TEXTS)
    tiny.save_pretrained(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "searchr3.json").read_text())
    assert meta["adapter"] is False and meta["prompts"]["query_system"] == "Q sys <|embed_token|>"
    back = SearchR3.from_pretrained(tmp_path / "saved", bf16=False)
    assert back.prompts == prompts and back.max_length == tiny.max_length
    np.testing.assert_allclose(back.encode_query(TEXTS), before, atol=1e-6)


def test_save_and_reload_lora_adapter_and_merged(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    tiny.model = get_peft_model(tiny.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    before = tiny.encode_document(TEXTS)
    tiny.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    back = SearchR3.from_pretrained(tmp_path / "adapter", bf16=False)
    np.testing.assert_allclose(back.encode_document(TEXTS), before, atol=1e-5)
    tiny.save_pretrained(tmp_path / "merged", merge=True)
    merged = SearchR3.from_pretrained(tmp_path / "merged", bf16=False)
    assert not hasattr(merged.model, "peft_config")
    np.testing.assert_allclose(merged.encode_document(TEXTS), before, atol=1e-5)
    assert hasattr(tiny.model, "peft_config")  # merging for the save did not touch the live model


def test_bad_model_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        SearchR3.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        SearchR3.from_pretrained(tmp_path / "empty")
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        SearchR3.from_pretrained(tmp_path / "bert")


def test_corrupted_checkpoints(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "searchr3.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupted"):
        SearchR3.from_pretrained(tmp_path / "m")
    tiny.save_pretrained(tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="cannot load the weights"):
        SearchR3.from_pretrained(tmp_path / "w")
    for bad in ("abc", [1.0, 2.0], [float("nan")] * tiny.hidden_size):
        tiny.save_pretrained(tmp_path / "t")
        meta = json.loads((tmp_path / "t" / "searchr3.json").read_text())
        (tmp_path / "t" / "searchr3.json").write_text(json.dumps({**meta, "token_input": bad}))
        with pytest.raises(ModelLoadError, match="token_input in searchr3.json is not"):
            SearchR3.from_pretrained(tmp_path / "t")


def test_fingerprint_tracks_weights_and_prompts(tiny):
    a = tiny.fingerprint()
    assert a == tiny.fingerprint()
    tiny.prompts = PromptConfig(max_reasoning_tokens=3)
    b = tiny.fingerprint()
    assert a != b
    with torch.no_grad():
        tiny.model.get_input_embeddings().weight[5, 0] += 1.0
    assert tiny.fingerprint() != b


def test_default_precision_follows_the_cpu(tiny_model_dir, monkeypatch):
    """bf16=None autocasts only where the CPU computes bf16 natively; True/False are kept as given."""
    from searchr3 import backbone

    m = SearchR3.from_pretrained(tiny_model_dir)
    for native in (True, False):
        monkeypatch.setattr(
            backbone, "cpu_features", lambda native=native: {"capability": "X", "avx512_bf16": native, "amx": False}
        )
        assert backbone.native_bf16("cpu") is native and m.bf16 is native
        assert m.autocast().fast_dtype == torch.bfloat16 and m.autocast()._enabled is native
    assert backbone.native_bf16("meta") is False  # a device it knows nothing of: fp32
    m.bf16 = True
    assert m.bf16 is True and SearchR3.from_pretrained(tiny_model_dir, bf16=False).bf16 is False
    in_bf16 = m.embedding_key()
    m.bf16 = False
    # Cached embeddings are kept per precision; indexes check the fingerprint alone.
    assert m.embedding_key() != in_bf16 and m.embedding_key().split("|")[0] == m.fingerprint()


@pytest.mark.slow
def test_real_smollm2_end_to_end():
    """The built-in model: converted once to the cache, the token added, both paths produce embeddings."""
    m = SearchR3.from_pretrained()
    assert m.tokenizer.convert_ids_to_tokens(m.embed_token_id) == "<|embed_token|>"
    assert m.embed_token_id == 49152
    assert len(m.fingerprint()) == 16  # tensors over 2**24 values (the embedding matrix) included
    docs = ["Paris is the capital and largest city of France.", "Mitochondria produce ATP in cells."]
    d = m.encode_document(docs)
    assert d.shape == (2, 576) and np.isfinite(d).all()
    ids = m.prompt_ids(docs[:1], "document")[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = full_forward_hidden(m, ids).float()
    np.testing.assert_allclose(d[0], torch.nn.functional.normalize(ref, dim=0).numpy(), atol=2e-2)
    r = m.reason(["what is the capital of france"], max_new_tokens=16)
    assert r.completion_ids[0][-1] == m.embed_token_id and len(r.completion_ids[0]) <= 17
    assert r.texts[0].strip()
    assert np.isfinite(r.embeddings.numpy()).all()
