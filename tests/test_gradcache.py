"""Stage 1 with gradient caching (``grad_cache_chunk``): the same gradients and logged losses as the
plain step, in one process and in two, on a tiny random model (float32, bf16 off)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from searchr3 import SearchR3
from searchr3.sft import SFTConfig, SFTTrainer, build_data, make_traces, prepare_model, replayed_trunk, train_sft
from tests.conftest import build_tiny_model, write_topic_beir
from tests.test_distributed import TOL, launch, max_diff, rows, sft_args
from tests.test_distributed import trainable as trained_weights
from tests.test_sft import TOPICS, tiny_cfg


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory) -> Path:
    return write_topic_beir(
        tmp_path_factory.mktemp("beir"), TOPICS, "The {t} is here. This passage is about {t}. More {t} text follows here."
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_gc") / "model")


def trainer_for(tmp_path: Path, model_dir: Path, beir_dir: Path, **kw) -> SFTTrainer:
    cfg = tiny_cfg(tmp_path / "run", model_dir, beir_dir, **kw)
    m = SearchR3.from_pretrained(model_dir, prompts=cfg.prompts, bf16=False)
    data = build_data(cfg)
    traces = make_traces(m, cfg, data, tmp_path)
    ref = prepare_model(m, cfg)
    trainer = SFTTrainer(cfg, m, data, traces, ref)
    # Random trainable weights: LoRA's B starts at 0 (then A gets no gradient and the KL term is 0).
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in trainer.params:
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return trainer


def grads_and_losses(trainer: SFTTrainer, exs, chunk: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    trainer.cfg.grad_cache_chunk = chunk
    for p in trainer.params:
        p.grad = None
    trainer.m.model.train()
    if chunk:
        parts = trainer.loss_and_backward(exs, 1, 0)
    else:
        parts = trainer.loss(exs, 1, 0)
        parts["loss"].backward()
    names = [n for n, p in trainer.m.model.named_parameters() if p.requires_grad]
    return dict(zip(names, (p.grad.clone() for p in trainer.params))), {k: float(v) for k, v in parts.items()}


@pytest.mark.parametrize(
    "setting, chunk",
    [
        ({"lora_layers": 1}, 3),
        ({"lora_layers": 1}, 1),
        ({"lora_layers": 0}, 2),
        ({"full_finetune": True, "lr": 1e-3}, 5),
        ({"lora_layers": 1, "trace_embedding": "own"}, 3),
    ],
    ids=["top-layer-lora-chunk3", "top-layer-lora-chunk1", "all-layer-lora-chunk2", "full-finetune-chunk5", "own-trace-chunk3"],
)
def test_grad_cache_gives_the_plain_steps_gradients_and_losses(tmp_path, model_dir, beir_dir, setting, chunk):
    """A batch with reasoning rows, hard negatives, the trained mix and every loss term: each trainable
    parameter's gradient and each logged loss equal the plain step's (top-layer LoRA also replays the
    frozen lower layer from pass 1 instead of recomputing it)."""
    trainer = trainer_for(
        tmp_path,
        model_dir,
        beir_dir,
        reasoning_share=0.6,
        hard_negatives=1,
        trace_mix_weight=0.4,
        batch_size=5,
        w_kl=0.5,
        **setting,
    )
    exs = trainer.batch(0)
    n_reason = sum(ex.query in trainer.traces for ex in exs)
    assert 0 < n_reason < len(exs) and all(ex.negatives for ex in exs)
    assert trainer._trunk_layers() == (1 if setting.get("lora_layers") == 1 else 0)
    plain, plain_loss = grads_and_losses(trainer, exs, 0)
    cached, cached_loss = grads_and_losses(trainer, exs, chunk)
    assert plain.keys() == cached.keys() and len(plain) > 1
    for name in plain:
        assert plain[name].abs().max() > 0, name  # every parameter gets a gradient (none is trivially equal)
        torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)
    assert plain_loss["kl"] > 0 and plain_loss["nce"] > 0
    assert cached_loss == pytest.approx(plain_loss, abs=1e-6, rel=1e-6)


def test_own_trace_rows_carry_the_embedding_and_taught_rows_the_lm_terms(tmp_path, model_dir, beir_dir):
    """trace_embedding="own": each reasoning query gets a taught row (LM span over the keyword trace, left
    out of the contrastive terms) and a row with the model's greedy trace, exactly what it writes at
    query time (no LM span, in the contrastive terms)."""
    trainer = trainer_for(tmp_path, model_dir, beir_dir, reasoning_share=0.6, batch_size=5, lora_layers=1, trace_embedding="own")
    exs = trainer.batch(0)
    seqs, spans, owner, embedded = trainer._query_rows(exs, torch.zeros(1), 1, 0)
    r = [i for i, ex in enumerate(exs) if ex.query in trainer.traces]
    n, k = len(exs), len(r)
    assert len(seqs) == n + 2 * k and owner == list(range(n)) + r + r
    assert embedded == list(range(n)) + list(range(n + k, n + 2 * k))
    assert all(a < b for a, b in spans[n : n + k]) and all(a == b for a, b in spans[n + k :])
    ro = trainer.m.reason([exs[i].query for i in r], max_new_tokens=trainer.cfg.reasoning_tokens)
    heads = trainer._prompt([exs[i].query for i in r], "query", trainer.cfg.query_tokens, reasoning=True)
    assert [s[len(h) :] for s, h in zip(seqs[n + k :], heads)] == ro.completion_ids
    assert all(s[-1] == trainer.m.embed_token_id for s in seqs[n:])
    with pytest.raises(ValueError, match="trace_embedding"):
        SFTConfig(trace_embedding="mine")
    with pytest.raises(ValueError, match="needs taught traces"):
        SFTConfig(trace_embedding="own", traces="self")


def test_replayed_trunk_skips_the_lower_layers_and_restores_them(tmp_path, model_dir, beir_dir):
    trainer = trainer_for(tmp_path, model_dir, beir_dir, lora_layers=1)
    layers = trainer.m.decoder_and_head()[0].layers
    before = list(layers)
    ran = []
    hook = layers[0].register_forward_hook(lambda mod, args, out: ran.append(1))
    seqs = trainer._prompt(["what about rain clouds", "cat mat"], "query", 16)
    emb, outs = trainer._encode_chunks(seqs, 2, 1)
    assert len(ran) == 1
    b = trainer.m.collate(seqs)
    with torch.no_grad(), replayed_trunk(layers, 1, outs[0]):
        again = trainer.m.hidden_at(b["input_ids"], b["attention_mask"], b["embed_index"])
    assert len(ran) == 1 and list(layers) == before  # layer 0 did not run, and is back
    torch.testing.assert_close(again, emb, atol=0, rtol=0)
    hook.remove()


def test_training_with_grad_cache_and_accumulation_matches_the_plain_run(tmp_path, model_dir, beir_dir):
    """Two optimizer steps of two accumulated micro-batches each, traces="keywords" with the mix: the
    same log and trained weights with and without gradient caching."""
    kw = dict(max_steps=2, grad_accum=2, batch_size=3, reasoning_share=0.5, trace_mix_weight=0.3, lora_layers=1, eval_queries=0)
    train_sft(tiny_cfg(tmp_path / "plain", model_dir, beir_dir, grad_cache_chunk=0, **kw))
    train_sft(tiny_cfg(tmp_path / "cached", model_dir, beir_dir, grad_cache_chunk=2, **kw))
    rows = {r: [json.loads(x) for x in (tmp_path / r / "log.jsonl").read_text().splitlines()] for r in ("plain", "cached")}
    for a, b in zip(rows["plain"], rows["cached"], strict=True):
        for k in ("loss", "lm", "kl", "nce", "triplet", "grad_norm"):
            assert b[k] == pytest.approx(a[k], abs=1e-5, rel=1e-5), (a["step"], k)
    wa, wb = (torch.load(tmp_path / r / "checkpoint" / "state.pt", weights_only=False)["trainable"] for r in ("plain", "cached"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_grad_cache_with_self_traces_trains(tmp_path, model_dir, beir_dir):
    """traces="self" chooses its traces from pass 1's document embeddings: a short run goes through."""
    cfg = tiny_cfg(tmp_path / "run", model_dir, beir_dir, traces="self", trace_samples=2, reasoning_share=1.0, max_steps=2,
                   grad_cache_chunk=3, trace_mix_weight=0.5, eval_queries=0)  # fmt: skip
    train_sft(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)
    assert {json.loads(x)["step"] for x in (tmp_path / "run" / "bank.jsonl").read_text().splitlines()} == {1, 2}


def test_two_processes_with_grad_cache_train_like_one_without(tmp_path, model_dir, beir_dir, cli):
    """Under ``accelerate launch`` with 2 processes the documents are gathered over the ranks: the cached
    gradient of a rank's documents includes the other rank's loss (the gather's backward), so the run
    matches one process without gradient caching."""
    args = ("--lora-layers", "1", "--trace-mix-weight", "0.4")
    res = cli(*sft_args(tmp_path / "one", model_dir, beir_dir, *args, "--grad-cache-chunk", "0"))
    assert res.code == 0, res.err[-3000:]
    launch(sft_args(tmp_path / "two", model_dir, beir_dir, *args, "--grad-cache-chunk", "1"))
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["processes"] for r in two] == [2] * 6
    for a, b in zip(one, two, strict=True):
        for k in ("loss", "lm", "kl", "nce", "triplet"):
            assert abs(a[k] - b[k]) <= TOL, (a["step"], k, a[k], b[k])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=TOL)
    assert max_diff(trained_weights(tmp_path / "one"), trained_weights(tmp_path / "two")) <= TOL


def test_grad_cache_chunk_setting_and_option(tmp_path, cli):
    with pytest.raises(ValueError, match="grad_cache_chunk must be >= 0"):
        SFTConfig(grad_cache_chunk=-1)
    assert SFTConfig().grad_cache_chunk == 8  # the default: the step fits in 4 GB
    assert "--grad-cache-chunk" in cli("train", "sft", "--help").out
    cli("train", "sft", "--grad-cache-chunk", "-2", "--out", tmp_path / "r").assert_bad_input()
