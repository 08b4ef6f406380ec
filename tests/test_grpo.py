"""GRPO: advantages, the clipped loss, teacher-forced log-probs, a tiny run with resume, the CLI."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from tests.beir_files import write_beir

from searchr3 import SearchR3
from searchr3.commands.rl import rl
from searchr3.grpo import GRPOConfig, batch_queries, group_advantages, grpo_loss, sequence_logprobs

WORDS = "cat mat paris france protein fold search engine heart blood rain cloud vector text".split()


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory) -> Path:
    """A 30-document BEIR folder with 6 judged training queries."""
    root = tmp_path_factory.mktemp("beir")
    rng = random.Random(0)
    docs = {f"d{i}": " ".join(rng.choices(WORDS, k=8)) for i in range(30)}
    return write_beir(root, docs, {f"q{i}": docs[f"d{i}"][:20] for i in range(6)}, [(f"q{i}", f"d{i}", 1) for i in range(6)])


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), group=2)
    assert torch.allclose(adv, torch.tensor([1.0, -1.0, 0.0, 0.0]), atol=1e-3)
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), group=3)


def test_grpo_loss_gradient_and_clipping():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -2.0])
    loss, pg, kl = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, clip_eps=0.2, kl_coef=0.1)
    loss.backward()
    # ratio 1, no KL: d loss / d logp = -A / tokens / batch on unmasked tokens
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25], [1.0, 0.0]]))
    assert kl.item() == 0.0 and pg.item() == pytest.approx(0.5)
    # a positive advantage whose ratio is already above 1 + eps gets no gradient
    new = torch.tensor([[0.0]], requires_grad=True)
    loss, _, _ = grpo_loss(new, torch.tensor([[-1.0]]), new.detach(), torch.tensor([1.0]), torch.tensor([[True]]), 0.2, 0.0)
    loss.backward()
    assert new.grad.item() == 0.0
    # k3 KL is positive when the reference differs
    _, _, kl = grpo_loss(torch.tensor([[-1.0]]), torch.tensor([[-1.0]]), torch.tensor([[-2.0]]), torch.tensor([0.0]), torch.tensor([[True]]), 0.2, 1.0)
    assert kl.item() == pytest.approx(math.exp(-1))  # e^d - d - 1 with d = -1


def test_sequence_logprobs_match_a_full_forward(tiny):
    ro = tiny.reason(["cats on mats", "a much longer query about paris in france"], max_new_tokens=5, do_sample=True, seed=3)
    logp, emb, mask = sequence_logprobs(tiny, ro.prompt_ids, ro.completion_ids)
    for i, (p, c) in enumerate(zip(ro.prompt_ids, ro.completion_ids)):
        ids = torch.tensor([p + c])
        with torch.no_grad():
            full = torch.log_softmax(tiny.model(input_ids=ids).logits[0].float(), -1)
        want = full[len(p) - 1 : len(p) + len(c) - 1].gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
        assert mask[i].sum() == len(c)
        torch.testing.assert_close(logp[i, : len(c)], want, atol=1e-4, rtol=1e-4)
        # the embedding is the hidden state at the final embed token, as reasoning encoding computed it
        torch.testing.assert_close(torch.nn.functional.normalize(emb[i], dim=-1), ro.embeddings[i], atol=1e-4, rtol=1e-4)


def test_batches_cover_every_query_once_per_epoch():
    ids = [f"q{i}" for i in range(6)]
    epoch = [q for s in range(3) for q in batch_queries(ids, s, 2, seed=0)]
    assert sorted(epoch) == ids
    assert batch_queries(ids, 1, 2, seed=0) == batch_queries(ids, 1, 2, seed=0)


def _train(out, model_dir, beir_dir, steps, *extra):
    args = ["rl", "--init", str(model_dir), "--data", str(beir_dir), "--out", str(out), "--steps", str(steps),
            "--queries-per-step", "2", "--group", "2", "--max-new-tokens", "4", "--doc-max-length", "200",
            "--lr", "1e-3", "--save-every", "1", "--fp32", *extra]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    return res


def test_tiny_run_checkpoints_and_resumes_exactly(tiny_model_dir, beir_dir, tmp_path):
    from safetensors.torch import load_file

    res = _train(tmp_path / "a", tiny_model_dir, beir_dir, 2)
    assert "reward curve" in res.output
    rows = [json.loads(r) for r in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["encoded"] > 0 for r in rows)
    assert (tmp_path / "a" / "reward.png").stat().st_size > 0 and (tmp_path / "a" / "model" / "searchr3.json").exists()
    assert list((tmp_path / "a").glob("corpus-*.npz"))  # the initial encode is cached
    straight = load_file(tmp_path / "a" / "model" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in straight.items() if "lora_B" in k)  # it trained

    _train(tmp_path / "b", tiny_model_dir, beir_dir, 1)
    _train(tmp_path / "b", tiny_model_dir, beir_dir, 2, "--resume")
    resumed = load_file(tmp_path / "b" / "model" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys()
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, atol=1e-6, rtol=1e-5)
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 2
    assert SearchR3.from_pretrained(tmp_path / "b" / "model").encode_query("cats").shape == (32,)


def test_cli_evaluates_the_init_and_rl_models(tiny_model_dir, beir_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("SEARCHR3_CACHE", str(tmp_path / "cache"))
    ev = tmp_path / "eval"
    shutil.copytree(beir_dir, ev)
    (ev / "qrels" / "train.tsv").rename(ev / "qrels" / "test.tsv")
    _train(tmp_path / "r", tiny_model_dir, beir_dir, 1, "--eval", str(ev), "--eval-docs", "10")
    rows = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert [(r["system"].split(" ")[0], r["reasoning"]) for r in rows] == [("init", False), ("init", True), ("rl", False), ("rl", True)]
    assert {(r["dataset"], r["num_docs"], r["num_queries"]) for r in rows} == {("eval[:10]", 10, 6)}
    assert len(list((tmp_path / "cache" / "corpus-embeddings").glob("*.npz"))) == 2  # one corpus encode per model


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="group must be >= 2"):
        GRPOConfig(group=1)
    with pytest.raises(ValueError, match="temperature > 0"):
        GRPOConfig(temperature=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        GRPOConfig(steps=0)


def _app():
    app = typer.Typer()
    app.command("rl")(rl)
    app.command("other")(lambda: None)
    return app


def test_cli_help_and_errors(tmp_path, beir_dir):
    runner = CliRunner()
    res = runner.invoke(_app(), ["rl", "--help"])
    assert res.exit_code == 0 and "--refresh" in res.output and "GRPO" in res.output
    res = runner.invoke(_app(), ["rl", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "does not exist" in res.output
    res = runner.invoke(_app(), ["rl", "--data", str(beir_dir), "--refresh", "sometimes", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "refresh must be one of" in res.output
    res = runner.invoke(_app(), ["rl", "--data", str(beir_dir), "--resume", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no checkpoint" in res.output
