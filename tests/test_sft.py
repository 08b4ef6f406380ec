"""Stage-1 trainer on a tiny random model: losses, LoRA + token row, resume after kill -9, bad input, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from searchr3 import SearchR3
from searchr3.plots import plot_curves
from searchr3.sft import SFTConfig, SFTError, SFTTrainer, build_data, prepare_model, train_sft
from tests.conftest import REPO, TINY_PROMPTS as PROMPTS, build_tiny_model, write_topic_beir
from tests.test_sources import write_beir

TOPICS = [
    "cat mat",
    "paris france",
    "protein fold",
    "search engine",
    "heart blood",
    "embedding vector",
    "rain clouds",
    "the sky",
    "capital city",
    "body shapes",
]


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory) -> Path:
    return write_topic_beir(
        tmp_path_factory.mktemp("beir"), TOPICS, "The {t} is here. This passage is about {t}. More {t} text follows here."
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_sft") / "model")


def tiny_cfg(out: Path, model_dir: Path, beir_dir: Path, **kw) -> SFTConfig:
    base = dict(
        prompts=PROMPTS,
        out=str(out),
        model=str(model_dir),
        data=[str(beir_dir)],
        cloze=4,
        wordnet=0,
        eval_queries=2,
        eval_docs=6,
        batch_size=4,
        max_steps=4,
        eval_every=0,
        save_every=1,
        reasoning_tokens=4,
        query_tokens=16,
        doc_tokens=24,
        bf16=False,
        show_progress=False,
        lr=5e-3,
    )
    base.update(kw)
    return SFTConfig(**base)


def trainable(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint" / "state.pt", weights_only=False)["trainable"]


def test_training_lowers_the_loss_and_trains_the_token_row(tmp_path, model_dir, beir_dir):
    cfg = tiny_cfg(tmp_path / "run", model_dir, beir_dir, max_steps=5, eval_every=5, reasoning_share=1.0)
    final = train_sft(cfg)
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 5 and steps[-1]["loss"] < steps[0]["loss"]
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["kl"] > 0  # LoRA starts at the base model
    assert any("eval_ndcg@10" in r and "eval_emit_rate" in r for r in rows)
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "run" / "traces.jsonl").read_text().splitlines()) == len({e.query for e in build_data(cfg).examples})

    base = SearchR3.from_pretrained(model_dir, prompts=PROMPTS, bf16=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = SearchR3.from_pretrained(final, bf16=False)
    # the tied token row is saved twice and loaded once; peft's warning about the second copy is filtered
    assert not [w for w in caught if "unexpected adapter keys" in str(w.message)]
    assert trained.prompts.query_system == "Query."  # prompts travel with the trained model
    # keyword traces fix the reasoning turn's prefix and the penalty that ends a term list
    assert (trained.prompts.reasoning_prefix, trained.prompts.repetition_penalty) == ("Key terms:", 1.3)
    tok = trained.embed_token_id
    w0 = base.model.get_input_embeddings().weight
    w1 = trained.model.get_base_model().get_input_embeddings()(torch.arange(w0.shape[0]))
    assert not torch.allclose(w0[tok], w1[tok])  # the new token's row was trained ...
    assert torch.equal(w0[:tok], w1[:tok])  # ... and no other row
    h = torch.randn(1, 1, w0.shape[1])  # the loaded output row is that trained row (it decides emission)
    logit = trained.model.get_base_model().get_output_embeddings()(h)[0, 0, tok]
    assert torch.allclose(logit, h[0, 0] @ w1[tok], atol=1e-5) and not torch.allclose(logit, h[0, 0] @ w0[tok], atol=1e-5)
    q = ["what about cat mat"]
    assert not torch.allclose(torch.tensor(base.encode_query(q)), torch.tensor(trained.encode_query(q)))


def test_reference_pass_is_the_frozen_base_model(tmp_path, model_dir, beir_dir):
    cfg = tiny_cfg(tmp_path / "run", model_dir, beir_dir, lr=5e-2)
    m = SearchR3.from_pretrained(model_dir, prompts=PROMPTS, bf16=False)
    prepare_model(m, cfg)
    trainer = SFTTrainer(cfg, m, build_data(cfg), {})
    trainer.train_step()
    trainer.train_step()
    base = SearchR3.from_pretrained(model_dir, bf16=False).model
    ids = torch.tensor([m.prompt_ids(["what about rain"], "query")[0]])
    with torch.no_grad(), m.model.disable_adapter():
        ref = m.model(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(ref, base(input_ids=ids).logits, atol=1e-5)
        assert not torch.allclose(m.model(input_ids=ids).logits, ref, atol=1e-3)


def test_full_finetune_with_frozen_reference(tmp_path, model_dir, beir_dir):
    cfg = tiny_cfg(tmp_path / "run", model_dir, beir_dir, full_finetune=True, max_steps=2, lr=1e-3)
    final = train_sft(cfg)
    assert not (final / "adapter_config.json").exists() and (final / "config.json").is_file()
    assert SearchR3.from_pretrained(final, bf16=False).encode_query("rain").shape == (32,)


_CHILD = """
import sys
sys.path.insert(0, {repo!r})
from searchr3.sft import SFTConfig, train_sft
train_sft(SFTConfig(**{cfg!r}), resume={resume!r})
"""


def run_child(cfg: SFTConfig, resume: bool, kill_at_step: int | None = None) -> None:
    code = _CHILD.format(repo=str(REPO), cfg=cfg.to_dict(), resume=resume)
    # Same thread count as this process: float sums, and so the weights, depend on it.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_at_step is None:
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
        return
    log = Path(cfg.out) / "log.jsonl"
    deadline = time.time() + 600  # generous: a loaded 2-core machine starts the child slowly
    while time.time() < deadline:
        rows = log.read_text().splitlines() if log.is_file() else []
        if any(json.loads(r).get("step", 0) >= kill_at_step for r in rows if r.strip()):
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_9_then_resume_gives_the_straight_result(tmp_path, model_dir, beir_dir):
    train_sft(tiny_cfg(tmp_path / "straight", model_dir, beir_dir, max_steps=4, reasoning_share=0.5))
    killed = tiny_cfg(tmp_path / "killed", model_dir, beir_dir, max_steps=4, reasoning_share=0.5)
    run_child(killed, resume=False, kill_at_step=2)
    assert (tmp_path / "killed" / "checkpoint" / "state.pt").is_file(), "the child reached no checkpoint before the deadline"
    state = torch.load(tmp_path / "killed" / "checkpoint" / "state.pt", weights_only=False)
    assert 1 <= state["step"] < 4, "the kill should land mid-run"
    run_child(killed, resume=True)
    a, b = trainable(tmp_path / "straight"), trainable(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    la = [json.loads(r) for r in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(r) for r in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [r["step"] for r in la]  # no duplicated rows after the resume
    assert [round(r["loss"], 5) for r in lb] == [round(r["loss"], 5) for r in la]


def test_resume_refuses_a_run_of_another_model(tmp_path, model_dir, beir_dir):
    cfg = tiny_cfg(tmp_path / "run", model_dir, beir_dir, max_steps=1)
    train_sft(cfg)
    other = build_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(SFTError, match="another model"):
        train_sft(tiny_cfg(tmp_path / "run", other, beir_dir, max_steps=2), resume=True)
    with pytest.raises(SFTError, match="--resume"):
        train_sft(cfg)  # without --resume a finished run is never overwritten
    # the precision may change on resume (bf16's default follows the machine anyway); each step logs its own
    train_sft(tiny_cfg(tmp_path / "run", model_dir, beir_dir, max_steps=2, bf16=True), resume=True)
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["bf16"]) for r in rows] == [(1, False), (2, True)]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    with pytest.raises(SFTError, match="not a searchr3 SFT run"):
        train_sft(tiny_cfg(tmp_path / "foreign", model_dir, beir_dir))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, beir_dir):
    model = build_tiny_model(tmp_path / "model")
    cfg = tiny_cfg(tmp_path / "run", model, beir_dir, max_steps=2)
    train_sft(cfg)
    good = (tmp_path / "run" / "checkpoint" / "state.pt").read_bytes()
    weights = load_file(model / "model.safetensors")
    name = next(k for k in weights if "layers.0.mlp.down_proj" in k)
    weights[name][0, 0] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SFTError, match="loss is nan"):
        train_sft(tiny_cfg(tmp_path / "run", model, beir_dir, max_steps=4), resume=True)
    assert (tmp_path / "run" / "checkpoint" / "state.pt").read_bytes() == good
    # no new final model, not even a half-written one (atomic_directory's temporary folders are ".final.*.tmp")
    assert not list((tmp_path / "run").glob(".final*")) and not list((tmp_path / "run").glob(".checkpoint*"))


def test_bad_settings_and_data(tmp_path, model_dir, beir_dir):
    with pytest.raises(ValueError, match="batch_size"):
        tiny_cfg(tmp_path / "r", model_dir, beir_dir, batch_size=0)
    with pytest.raises(ValueError, match="without negatives"):
        tiny_cfg(tmp_path / "r", model_dir, beir_dir, batch_size=1, hard_negatives=0)
    with pytest.raises(ValueError, match="reasoning_share"):
        tiny_cfg(tmp_path / "r", model_dir, beir_dir, reasoning_share=2.0)
    with pytest.raises(ValueError, match="trace_min_tokens must be >= 0"):
        tiny_cfg(tmp_path / "r", model_dir, beir_dir, trace_min_tokens=-1)
    empty = write_beir(tmp_path / "empty", [("q0", "d0", 0)])
    with pytest.raises(ValueError, match="no usable"):
        train_sft(tiny_cfg(tmp_path / "r", model_dir, empty, eval_queries=0))
    assert not (tmp_path / "r").exists()  # nothing written for bad input


def test_plot_curves(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5, "eval_ndcg@10": 0.3}\n{"step": 3, "lo')  # torn last line
    png = plot_curves(log, tmp_path / "c.png", ["loss", "eval_ndcg@10", "absent"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="none of"):
        plot_curves(log, tmp_path / "d.png", ["absent"])


def test_cli_sft(tmp_path, model_dir, beir_dir, cli):
    args = [
        "train",
        "sft",
        "--out",
        tmp_path / "run",
        "--data",
        beir_dir,
        "--model",
        model_dir,
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--cloze",
        "2",
        "--wordnet",
        "0",
        "--eval-queries",
        "2",
        "--eval-every",
        "0",
        "--query-tokens",
        "16",
        "--doc-tokens",
        "24",
        "--reasoning-tokens",
        "4",
        "--fp32",
        "--lora-r",
        "4",
    ]
    res = cli(*args)
    assert res.code == 0, res.err[-3000:]
    assert "final model" in res.out and (tmp_path / "run" / "final" / "searchr3.json").is_file()
    adapter = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (4, 32)  # --lora-r no longer forces lora_alpha = 2r
    cli(*args).assert_bad_input("--resume")  # the same --out again without --resume
    cli("train", "sft", "--data", tmp_path / "missing", "--out", tmp_path / "r2").assert_bad_input("does not exist")
    cli("train", "sft", "--batch-size", "1", "--hard-negatives", "0", "--out", tmp_path / "r3").assert_bad_input(
        "without negatives"
    )
    assert "--reasoning-share" in cli("train", "sft", "--help").out


def test_top_layer_lora_trains_only_the_top_layers(tmp_path, model_dir, beir_dir):
    """lora_layers=1 on the 2-layer model: adapters on layer 1 only plus the token row, which learns on
    the output side only: nothing below layer 1 is in the autograd graph."""
    cfg = tiny_cfg(tmp_path / "run", model_dir, beir_dir, lora_layers=1)
    m = SearchR3.from_pretrained(model_dir, prompts=cfg.prompts, bf16=False)
    prepare_model(m, cfg)
    names = [n for n, p in m.model.named_parameters() if p.requires_grad]
    token = [n for n in names if "trainable_tokens_delta" in n]
    assert len(token) == 1 and all(".layers.1." in n and "lora_" in n for n in names if n not in token), names
    below = []
    layer0 = m.model.get_base_model().model.layers[0]
    layer0.register_forward_hook(lambda mod, args, out: below.append((out[0] if isinstance(out, tuple) else out).requires_grad))
    trainer = SFTTrainer(cfg, m, build_data(cfg), {})
    first = trainer.train_step()
    delta = dict(m.model.named_parameters())[token[0]]
    assert delta.grad is not None and delta.grad.abs().sum() > 0  # the token's logit is learned
    for _ in range(3):
        last = trainer.train_step()
    assert last["loss"] < first["loss"]
    assert below and not any(below)  # layer 0's outputs never needed a gradient
    # The token's tied row moved (its logit is learned), but the vector the token reads stays the base's:
    # the embedding is read at that position, so a drifting input would move every embedding.
    tok = m.embed_token_id
    base_row = SearchR3.from_pretrained(model_dir, bf16=False).model.get_input_embeddings().weight[tok]
    assert not torch.allclose(delta.detach().reshape(-1), base_row)
    assert torch.equal(m.token_input, base_row.detach())
    ids = torch.tensor([[5, tok, 7]])
    assert torch.equal(m.model.get_base_model().model.embed_tokens(ids)[0, 1], base_row.detach())
    # ... and it travels with the saved model (the hook is re-attached on load, and after a merge).
    q = ["what about cat mat"]
    before = m.encode_query(q)
    back = SearchR3.from_pretrained(m.save_pretrained(tmp_path / "saved"), bf16=False)
    assert torch.equal(back.token_input, m.token_input)
    np.testing.assert_allclose(back.encode_query(q), before, atol=1e-5)
    merged = SearchR3.from_pretrained(m.save_pretrained(tmp_path / "merged", merge=True), bf16=False)
    np.testing.assert_allclose(merged.encode_query(q), before, atol=1e-5)
    back.model = back.model.merge_and_unload()  # replacing the network keeps the pin
    np.testing.assert_allclose(back.encode_query(q), before, atol=1e-5)


@pytest.mark.parametrize("lora_layers", [0, 1])
def test_emission_is_learned_on_a_toy_task(tmp_path, model_dir, beir_dir, lora_layers):
    """Traces that end in the token teach the model to write it: the random base never emits it (greedy),
    the trained model does for the training queries, with LoRA on all layers or on the top one only."""
    cfg = tiny_cfg(
        tmp_path / "run",
        model_dir,
        beir_dir,
        max_steps=20,
        reasoning_share=1.0,
        lora_layers=lora_layers,
        eval_queries=0,
        cloze=0,
        w_nce=0.0,
        w_triplet=0.0,
    )  # the LM term alone: on 2 random layers the contrastive gradients swamp it
    data = build_data(cfg)
    queries = sorted({ex.query for ex in data.examples})
    base = SearchR3.from_pretrained(model_dir, prompts=PROMPTS, bf16=False)
    assert sum(base.reason(queries, max_new_tokens=6).emitted) == 0
    trained = SearchR3.from_pretrained(train_sft(cfg), bf16=False)
    ro = trained.reason(queries, max_new_tokens=6)
    assert sum(ro.emitted) / len(queries) >= 0.9, ro.texts


def test_trace_bank_selection_rule():
    from searchr3.traces import select_trace

    assert select_trace(-1.0, [-2.0, -0.5, -0.7]) == 1  # the best candidate, since it beats direct
    assert select_trace(-0.4, [-2.0, -0.5]) == -1  # none beats direct: the empty trace
    assert select_trace(-0.5, [-0.5]) == -1  # a tie is not a gain
    assert select_trace(-1.0, [-0.9], margin=0.2) == -1
    assert select_trace(0.0, []) == -1
    assert select_trace(-1.0, [-0.5, -0.5]) == 0  # ties between candidates: the first


def test_cut_at_boundary_never_cuts_mid_word(tiny):
    from searchr3.traces import cut_at_boundary

    tok = tiny.tokenizer
    ids = tok("cells, proteins. energy, produc", add_special_tokens=False)["input_ids"]
    assert tok.decode(cut_at_boundary(ids, tok)) == "cells, proteins."
    assert cut_at_boundary(tok("no boundary, here", add_special_tokens=False)["input_ids"], tok) == []


def test_self_traces_bank_is_written_follows_the_rule_and_resumes(tmp_path, model_dir, beir_dir):
    """traces="self": each reasoning query gets sampled candidates scored against the direct embedding;
    the trained trace is the winner or the empty trace, the bank records both, and a resume drops the
    bank rows of steps it redoes (so the bank equals the straight run's)."""
    cfg = tiny_cfg(
        tmp_path / "run",
        model_dir,
        beir_dir,
        traces="self",
        trace_samples=3,
        reasoning_share=1.0,
        max_steps=3,
        reasoning_tokens=6,
    )
    train_sft(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "bank.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {1, 2, 3} and all(len(r["candidates"]) <= 3 for r in rows)
    for r in rows:
        scores = [c["score"] for c in r["candidates"]]
        best = max(scores) if scores else None
        if r["chosen"] >= 0:
            assert scores[r["chosen"]] == best and best > r["direct"]
        else:
            assert best is None or best <= r["direct"]
    # Interrupt after step 2 (the checkpoint of step 2 is kept), resume: the bank ends as in the straight run.
    cfg2 = replace(cfg, out=str(tmp_path / "run2"), max_steps=2)
    train_sft(cfg2)
    with (tmp_path / "run2" / "bank.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 3, "micro": 0, "query": "torn", "direct": 0, "chosen": -1, "candidates": []}) + "\n")
    train_sft(replace(cfg2, max_steps=3), resume=True)
    again = [json.loads(x) for x in (tmp_path / "run2" / "bank.jsonl").read_text().splitlines()]
    assert again == rows


def test_mix_rows_train_the_mix_modes_embedding_with_the_direct_part_detached():
    from searchr3.sft import mix_reasoning_rows

    q = torch.randn(5, 8, requires_grad=True)  # rows 0-2 direct, rows 3-4 reasoning of examples 2 and 0
    out = mix_reasoning_rows(q, [0, 1, 2, 2, 0], 3, 0.6)
    unit = torch.nn.functional.normalize(q.detach(), dim=-1)
    torch.testing.assert_close(out[:3], q.detach()[:3])
    torch.testing.assert_close(out[3], 0.6 * unit[2] + 0.4 * unit[3])
    torch.testing.assert_close(out[4], 0.6 * unit[0] + 0.4 * unit[4])
    out[3:].sum().backward()  # the reasoning rows' loss reaches only the reasoning rows
    assert q.grad[:3].abs().sum() == 0 and q.grad[3:].abs().sum() > 0
    direct_only = q.detach()[:3]
    assert mix_reasoning_rows(direct_only, [0, 1, 2], 3, 0.6) is direct_only  # no reasoning rows: unchanged
    with pytest.raises(ValueError, match="trace_mix_weight"):
        SFTConfig(trace_mix_weight=1.0)


def test_self_traces_score_the_mix_when_asked(tiny, tmp_path):
    from searchr3.traces import SelfTraces

    e = tiny.encode_query(["cats on mats", "the capital of france"], convert_to_tensor=True)
    docs = torch.nn.functional.normalize(torch.randn(4, tiny.hidden_size), dim=-1)
    alone = SelfTraces(tiny, tmp_path / "b.jsonl", 2, 4, 1.0, 0.05, 0)
    scores = alone._scores(e, docs, [1, 3])
    direct = torch.nn.functional.normalize(torch.randn(2, tiny.hidden_size), dim=-1)
    mixed = SelfTraces(tiny, tmp_path / "b.jsonl", 2, 4, 1.0, 0.05, 0, mix_weight=0.6)._scores(e, docs, [1, 3], direct)
    q = torch.nn.functional.normalize(0.6 * direct + 0.4 * e, dim=-1)
    expected = torch.log_softmax(q @ docs.T / 0.05, -1)[[0, 1], [1, 3]]
    np.testing.assert_allclose(mixed, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(mixed, scores)


def test_predictable_traces_cover_exactly_the_queries_the_schedule_draws(tmp_path, model_dir, beir_dir):
    from searchr3.data.mix import MixSchedule
    from searchr3.sft import make_traces

    cfg = tiny_cfg(tmp_path / "run", model_dir, beir_dir, traces="predictable", reasoning_share=1.0, max_steps=1, batch_size=2)
    data = build_data(cfg)
    m = SearchR3.from_pretrained(model_dir, prompts=PROMPTS, bf16=False)
    (tmp_path / "run").mkdir()
    traces = make_traces(m, cfg, data, tmp_path / "run")
    sched = MixSchedule([len(exs) for _, exs in data.sources], data.probabilities, cfg.seed)  # as the trainer draws
    drawn = {data.sources[s][1][i].query for t in range(cfg.max_steps) for s, i in sched.batch(t, cfg.batch_size)}
    assert set(traces) == drawn, set(traces) ^ drawn
    assert len(drawn) < len({ex.query for ex in data.examples})  # only what the run will read
    rows = [json.loads(r) for r in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
    assert {r["source"] for r in rows} == {"predictable"} and all(r["completion_ids"][-1] == m.embed_token_id for r in rows)
    with pytest.raises(ValueError, match="traces must be one of"):
        tiny_cfg(tmp_path / "bad", model_dir, beir_dir, traces="likely")
