"""The stage-1 training mix: weighted sampling, the false-negative rule, the sliced LM/KL terms,
keyword traces and the reasoning query modes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from searchr3 import PromptConfig, SearchR3
from searchr3.data.mix import MixSchedule, false_negative_mask, source_weights
from searchr3.data.sources import Example
from searchr3.losses import info_nce, kl_to_reference, lm_loss
from searchr3.sft import SFTConfig, SFTError, SFTTrainer, build_data, default_training_folders, prepare_model, sliced_lm_kl
from searchr3.traces import KeywordTracer, keyword_traces, predictable_keyword_traces, term_logprobs
from tests.conftest import TINY_PROMPTS as PROMPTS, write_beir


def test_schedule_is_a_pure_function_of_the_seed_and_follows_the_weights():
    p = source_weights([100, 10, 50], [1.0, 1.0, 0.0], alpha=0.5)
    assert p[2] == 0 and p[0] == pytest.approx(1 / 2) and p[1] == pytest.approx(1 / 2)
    a, b = MixSchedule([100, 10, 50], p, seed=3), MixSchedule([100, 10, 50], p, seed=3)
    late = b.batch(40, 16)  # asked out of order: the same draws
    assert [a.batch(s, 16) for s in range(41)][40] == late
    assert a.batch(2, 16) != MixSchedule([100, 10, 50], p, seed=4).batch(2, 16)
    draws = [pair for s in range(100) for pair in a.batch(s, 16)]
    counts = Counter(s for s, _ in draws)
    assert counts[2] == 0 and abs(counts[0] - counts[1]) < 0.15 * len(draws)
    # Each pass over a source shows every example once before any repeats.
    small = [i for s, i in draws if s == 1]
    for k in range(0, len(small) - 10, 10):
        assert sorted(small[k : k + 10]) == list(range(10))


def test_default_weights_are_size_to_the_half():
    p = source_weights([400, 100])
    assert p.tolist() == pytest.approx([20 / 30, 10 / 30])
    with pytest.raises(ValueError, match="at least one example"):
        source_weights([5, 0])
    with pytest.raises(ValueError, match="not all 0"):
        source_weights([5, 5], [0, 0])


def test_shared_passages_are_never_in_batch_negatives():
    # SQuAD-style: two questions judged on the same paragraph p1; a third on p2.
    exs = [
        Example(
            "q a", "para one", positive_ids=frozenset({"p1"}), positive_id="p1", negatives=("para two",), negative_ids=("p2",)
        ),
        Example("q b", "para one", positive_ids=frozenset({"p1"}), positive_id="p1"),
        Example("q c", "para two", positive_ids=frozenset({"p2"}), positive_id="p2"),
    ]
    docs = [("p1", "para one"), ("p1", "para one"), ("p2", "para two"), ("p2", "para two")]
    mask = false_negative_mask(exs, [0, 1, 2], docs)
    assert mask.tolist() == [
        [False, True, False, False],  # q a: the other copy of p1 is no negative; p2 is one
        [True, False, False, False],
        [False, False, False, True],  # q c: its own positive mined as q a's hard negative is no negative
    ]
    # InfoNCE with the mask equals cross-entropy over the columns that remain.
    torch.manual_seed(0)
    q, d = torch.randn(3, 8), torch.randn(4, 8)
    pos = torch.tensor([0, 1, 2])
    got = info_nce(q, d, pos, 0.1, exclude=torch.from_numpy(mask))
    sim = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T / 0.1
    keep = [[0, 2, 3], [1, 2, 3], [0, 1, 2]]
    want = torch.stack([F.cross_entropy(sim[i, keep[i]][None], torch.tensor([keep[i].index(i)])) for i in range(3)]).mean()
    assert got.item() == pytest.approx(want.item(), abs=1e-6)


@pytest.fixture()
def two_folders(tmp_path):
    docs = {
        f"d{i}": f"The {w} is described in this passage about {w} and more."
        for i, w in enumerate("cat dog sun moon tree".split())
    }
    qa = write_beir(
        tmp_path / "alpha",
        docs,
        {f"q{i}": f"what is the {w}" for i, w in enumerate("cat dog sun moon tree".split())},
        [(f"q{i}", f"d{i}", 1) for i in range(5)],
    )
    qb = write_beir(
        tmp_path / "beta",
        docs,
        {"x0": "tell me about sun", "x1": "and the moon", "x2": "moon and sun"},
        [("x0", "d2", 1), ("x1", "d3", 1), ("x2", "d3", 1)],
    )
    return qa, qb


def test_build_data_makes_one_source_per_folder(tmp_path, two_folders, tiny_model_dir):
    qa, qb = two_folders
    cfg = SFTConfig(
        out=str(tmp_path / "run"),
        model=str(tiny_model_dir),
        data=[str(qa), str(qb)],
        eval_queries=1,
        eval_docs=3,
        weights={"beta": 3.0},
        max_per_source=3,
        show_progress=False,
        batch_size=2,
    )
    data = build_data(cfg)
    assert [n for n, _ in data.sources] == ["alpha", "beta"] and [len(e) for _, e in data.sources] == [3, 3]
    assert data.probabilities == pytest.approx([1 / 4, 3 / 4])  # equal sizes: the multiplier decides
    assert all(ex.positive_id and len(ex.negative_ids) == 1 for _, exs in data.sources for ex in exs)
    with pytest.raises(SFTError, match="unknown sources"):
        build_data(
            SFTConfig(out=str(tmp_path / "r2"), data=[str(qa)], weights={"gamma": 1.0}, eval_queries=0, show_progress=False)
        )
    assert default_training_folders(tmp_path / "nowhere") == []


def test_sliced_lm_and_kl_equal_the_full_computation(tmp_path, two_folders, tiny_model_dir):
    qa, _ = two_folders
    cfg = SFTConfig(
        out=str(tmp_path / "run"),
        model=str(tiny_model_dir),
        data=[str(qa)],
        eval_queries=0,
        prompts=PROMPTS,
        bf16=False,
        show_progress=False,
        batch_size=3,
        query_tokens=16,
        doc_tokens=24,
        lora_layers=0,
    )
    m = SearchR3.from_pretrained(tiny_model_dir, prompts=PROMPTS, bf16=False)
    prepare_model(m, cfg)
    with torch.no_grad():  # move the adapter away from zero so that the KL is not trivially 0
        for n, p in m.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    tr = SFTTrainer(cfg, m, build_data(cfg), {})
    trace = m.tokenizer("cat dog sun", add_special_tokens=False)["input_ids"] + [m.embed_token_id]
    heads = tr._prompt(["what is the cat", "what is the sun"], "query", 16, reasoning=True)
    seqs = [h + trace for h in heads] + tr._prompt(["moon"], "query", 16)
    spans = [(len(heads[0]), len(seqs[0])), (len(heads[1]), len(seqs[1])), (len(seqs[2]) - tr.answer_len, len(seqs[2]))]
    qb = m.collate(seqs)
    rows, cols, targets = tr._lm_positions(seqs, spans)
    _, logits = tr._logits_at(m.model, qb, rows, cols)
    with torch.no_grad(), m.model.disable_adapter():
        _, ref_logits = tr._logits_at(m.model, qb, rows, cols)
        full_ref = m.model(input_ids=qb["input_ids"], attention_mask=qb["attention_mask"]).logits
    lm, kl = sliced_lm_kl(logits, ref_logits, targets, m.embed_token_id)
    full = m.model(input_ids=qb["input_ids"], attention_mask=qb["attention_mask"]).logits
    labels = torch.full_like(qb["input_ids"], -100)
    for i, (a, b) in enumerate(spans):
        labels[i, a:b] = qb["input_ids"][i, a:b]
    kl_labels = labels.masked_fill(labels == m.embed_token_id, -100)
    assert lm.item() == pytest.approx(lm_loss(full, labels).item(), abs=1e-5)
    assert kl.item() == pytest.approx(kl_to_reference(full, full_ref, kl_labels).item(), abs=1e-5)
    assert kl.item() > 1e-4
    # Weighted: all-ones weights give the same mean; weighting the emission positions shifts it toward their loss.
    ones = torch.ones(len(targets))
    assert sliced_lm_kl(logits, None, targets, m.embed_token_id, ones)[0].item() == pytest.approx(lm.item(), abs=1e-5)
    emit = (targets == m.embed_token_id).float()
    ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    weighted = sliced_lm_kl(logits, None, targets, m.embed_token_id, 1 + 4 * emit)[0]
    assert weighted.item() == pytest.approx(((1 + 4 * emit) * ce).sum().item() / (1 + 4 * emit).sum().item(), abs=1e-5)


def test_keyword_traces_name_the_answer_terms_and_end_with_the_token(tiny):
    docs = ["Mitochondria produce ATP through oxidative phosphorylation in the cell.", "Paris is the capital of France."]
    tracer = KeywordTracer(docs, max_terms=3)
    terms = tracer.terms("what do mitochondria make", docs[0])
    assert len(terms) == 3 and "Mitochondria" not in terms and not {"the", "in", "through"} & set(terms)
    traces = keyword_traces(tiny, [("what do mitochondria make", docs[0]), ("the the the", "the the")], docs, max_tokens=80)
    first = traces["what do mitochondria make"]
    assert first[-1] == tiny.embed_token_id and 1 < len(first) <= 81
    assert tiny.tokenizer.decode(first[:-1]).startswith("Key terms:")
    assert traces["the the the"] == [tiny.embed_token_id]  # nothing to add: the empty trace


def test_term_logprobs_equal_the_full_forward_of_each_candidate(tiny):
    from searchr3.grpo import sequence_logprobs

    head = tiny.prompt_ids(["what do mitochondria make"], "query", reasoning=True)[0]
    words = [tiny.tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in ["ATP", "oxidative phosphorylation", "a"]]
    assert len({len(w) for w in words}) > 1  # candidates of different lengths share one padded batch
    with torch.no_grad():
        logp, _, mask = sequence_logprobs(tiny, [head] * len(words), words)
    assert term_logprobs(tiny, head, words) == pytest.approx((logp * mask).sum(1).tolist(), abs=1e-4)
    with pytest.raises(ValueError, match="at least one token"):
        term_logprobs(tiny, head, [[]])


def test_predictable_traces_keep_the_terms_the_model_finds_likely_in_tfidf_order(tiny):
    docs = [
        "Mitochondria produce ATP through oxidative phosphorylation, glycolysis and respiration in cells.",
        "Paris is in France.",
    ]
    query = "what do mitochondria make"
    terms = KeywordTracer(docs, max_terms=20).terms(query, docs[0])
    head = (
        tiny.prompt_ids([query], "query", reasoning=True)[0] + tiny.tokenizer("Key terms:", add_special_tokens=False)["input_ids"]
    )
    score = term_logprobs(tiny, head, [tiny.tokenizer(" " + t, add_special_tokens=False)["input_ids"] for t in terms])
    likely = sorted(sorted(range(len(terms)), key=lambda i: -score[i])[:2])  # the two most likely, in tf-idf order
    traces = predictable_keyword_traces(tiny, [(query, docs[0]), ("the the", "the the")], docs, max_tokens=80, keep=2)
    assert len(terms) > 2  # so the model's choice matters
    assert tiny.tokenizer.decode(traces[query][:-1]) == f"Key terms: {terms[likely[0]]}, {terms[likely[1]]}."
    assert traces["the the"] == [tiny.embed_token_id]  # nothing to add: the empty trace
    with pytest.raises(ValueError, match="keep"):
        predictable_keyword_traces(tiny, [(query, docs[0])], docs, max_tokens=80, candidates=3, keep=4)


def test_encode_after_trace_reads_what_reasoning_reads(tiny):
    qs = ["paris france", "heart blood"]
    ro = tiny.reason(qs, max_new_tokens=4)
    after = tiny.encode_after_trace(qs, ro.completion_ids, convert_to_tensor=True)
    assert torch.allclose(after, F.normalize(ro.embeddings.float(), dim=-1), atol=1e-5)  # the embedding reasoning gives
    text = tiny.encode_after_trace(qs, ["Key terms: capital.", "Key terms: heart."])
    ids = [tiny.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ["Key terms: capital.", "Key terms: heart."]]
    assert np.allclose(text, tiny.encode_after_trace(qs, [i + [tiny.embed_token_id] for i in ids]), atol=1e-6)
    assert not np.allclose(text[0], tiny.encode_after_trace(qs[:1], ["Key terms: mitochondria."])[0], atol=1e-4)
    with pytest.raises(ValueError, match="2 queries but 1 traces"):
        tiny.encode_after_trace(qs, ["x"])
    with pytest.raises(ValueError, match="before its end"):
        tiny.encode_after_trace(qs[:1], [[tiny.embed_token_id, 5]])


def test_mix_mode_is_the_weighted_sum_of_direct_and_reasoning(tiny):
    qs = ["paris france", "heart blood"]
    direct = tiny.encode_query(qs, convert_to_tensor=True)
    on, stats = tiny.encode_query_with_stats(qs, reasoning=True, max_new_tokens=4)
    mixed = tiny.encode_query(qs, reasoning="mix", mix_weight=0.7, max_new_tokens=4, convert_to_tensor=True)
    want = F.normalize(0.7 * direct + 0.3 * torch.from_numpy(on), dim=-1)
    assert torch.allclose(mixed, want, atol=1e-5)
    assert 0.0 <= stats["emit_rate"] <= 1.0 and 1 <= stats["mean_new_tokens"] <= 5
    sampled = tiny.encode_query(qs, reasoning="mix", samples=3, seed=0, max_new_tokens=4)
    assert sampled.shape == (2, tiny.hidden_size) and np.allclose(np.linalg.norm(sampled, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="reasoning must be"):
        tiny.encode_query(qs, reasoning="maybe")
    with pytest.raises(ValueError, match="mix_weight"):
        tiny.encode_query(qs, reasoning="mix", mix_weight=1.5)


def test_query_modes_together_equal_one_by_one_and_generate_once(tiny, tmp_path, monkeypatch):
    from searchr3.evaluation import run_evaluation

    qs = ["paris france", "heart blood", "cat mat"]
    alone = {
        m: tiny.encode_query_with_stats(qs, reasoning=m, **({} if m == "off" else {"max_new_tokens": 4}))[0]
        for m in ("off", "on", "mix")
    }
    calls = []
    reason = type(tiny).reason
    monkeypatch.setattr(type(tiny), "reason", lambda self, texts, **kw: calls.append(len(texts)) or reason(self, texts, **kw))
    together = tiny.encode_query_modes(qs, [False, True, "mix"], max_new_tokens=4)
    assert calls == [3] and list(together) == ["off", "on", "mix"]  # one set of rollouts for "on" and "mix"
    for m, (emb, stats) in together.items():
        assert np.allclose(emb, alone[m], atol=1e-5), m
        assert stats["seconds"] > 0 and ("emit_rate" in stats) == (m != "off")
    assert together["mix"][1]["seconds"] == pytest.approx(together["on"][1]["seconds"] + together["off"][1]["seconds"])
    # The evaluation encodes an encoder's modes together too, and reports each mode's own cost.
    docs = {f"d{i}": f"The {q} is here." for i, q in enumerate(qs)}
    write_beir(
        tmp_path / "set", docs, {f"q{i}": q for i, q in enumerate(qs)}, [(f"q{i}", f"d{i}", 1) for i in range(3)], split="test"
    )
    calls.clear()
    direct_passes = []
    encode_ids = type(tiny)._encode_ids
    monkeypatch.setattr(type(tiny), "_encode_ids", lambda self, ids, *a: direct_passes.append(a[-1]) or encode_ids(self, ids, *a))
    rows = run_evaluation(
        tmp_path / "set",
        "test",
        [("m", tiny, mode, {"max_new_tokens": 4}) for mode in (False, True, "mix")],
    )
    assert calls == [3] and [r["reasoning"] for r in rows] == [False, True, "mix"]
    assert direct_passes.count("encode queries") == 1  # "off" and "mix" share the direct pass
    assert rows[2]["seconds_per_query"] > rows[1]["seconds_per_query"] and rows[1]["generation"] == {"max_new_tokens": 4}
    assert "seconds" not in rows[0] and "generation" not in rows[0] and rows[1]["emit_rate"] == rows[2]["emit_rate"]


def test_reasoning_prefix_starts_the_turn_and_the_repetition_penalty_is_checked(tiny_model_dir):
    m = SearchR3.from_pretrained(tiny_model_dir, prompts=PROMPTS, bf16=False)
    plain_tail = m.template("query", True).tail
    m.prompts = PromptConfig(
        **{**PROMPTS, "reasoning_prefix": "Key terms:", "repetition_penalty": 1.5}
    )  # drops the old templates
    prefix_ids = m.tokenizer("Key terms:", add_special_tokens=False)["input_ids"]
    assert m.template("query", True).tail == plain_tail + prefix_ids
    assert m.template("query", True).tail[-len(prefix_ids) :] == prefix_ids
    ro = m.reason(["paris france"], max_new_tokens=3)
    assert ro.texts[0].startswith("Key terms:")
    # The keyword traces then hold only the continuation of the prefix.
    trace = keyword_traces(m, [("paris", "Mitochondria produce ATP.")], ["Mitochondria produce ATP."], max_tokens=80)["paris"]
    assert not m.tokenizer.decode(trace[:-1]).strip().startswith("Key terms")
    plain = m.reason(["paris france"], max_new_tokens=8, repetition_penalty=1.0).completion_ids
    assert plain == m.reason(["paris france"], max_new_tokens=8, repetition_penalty=1.0).completion_ids
    for bad in (0.5, float("nan")):
        with pytest.raises(ValueError, match="repetition_penalty"):
            m.reason(["paris"], repetition_penalty=bad)


def test_direct_answer_span_ignores_the_reasoning_prefix(tmp_path, two_folders, tiny_model_dir):
    """The LM positions of a direct query row are its fixed answer, with or without a reasoning prefix."""
    qa, _ = two_folders
    spans = []
    for prefix in ("", "Key terms:"):
        cfg = SFTConfig(
            out=str(tmp_path / f"run{len(prefix)}"),
            model=str(tiny_model_dir),
            data=[str(qa)],
            eval_queries=0,
            prompts={**PROMPTS, "reasoning_prefix": prefix},
            bf16=False,
            show_progress=False,
            batch_size=3,
        )
        m = SearchR3.from_pretrained(tiny_model_dir, prompts=cfg.prompts, bf16=False)
        spans.append(SFTTrainer(cfg, m, build_data(cfg), {}).answer_len)
    assert (
        spans[0]
        == spans[1]
        == len(
            SearchR3.from_pretrained(tiny_model_dir, prompts=PROMPTS).tokenizer("E <|embed_token|>", add_special_tokens=False)[
                "input_ids"
            ]
        )
    )
