"""GRPO: advantages, the clipped loss, teacher-forced log-probs, a tiny run with resume, the CLI."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from searchr3 import SearchR3
from searchr3.grpo import (
    data_digest,
    load_training_data,
    GRPOConfig,
    GRPOTrainer,
    batch_queries,
    group_advantages,
    grpo_loss,
    nce_query_embeddings,
    rollout_query_embeddings,
    sequence_logprobs,
    train_rl,
)
from searchr3.losses import info_nce
from searchr3.model import mix_embeddings
from searchr3.runs import RunError
from tests.conftest import build_tiny_model, write_beir

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
    # pg_coef scales the surrogate's gradient (0: the ablation without the reward); pg is reported unweighted
    for coef in (0.0, 0.5):
        lp = logp.detach().clone().requires_grad_(True)
        loss, pg, _ = grpo_loss(lp, lp.detach(), lp.detach(), adv, mask, 0.2, 0.1, pg_coef=coef)
        loss.backward()
        assert torch.allclose(lp.grad, coef * torch.tensor([[-0.25, -0.25], [1.0, 0.0]]))
        assert pg.item() == pytest.approx(0.5)
    # a positive advantage whose ratio is already above 1 + eps gets no gradient
    new = torch.tensor([[0.0]], requires_grad=True)
    loss, _, _ = grpo_loss(new, torch.tensor([[-1.0]]), new.detach(), torch.tensor([1.0]), torch.tensor([[True]]), 0.2, 0.0)
    loss.backward()
    assert new.grad.item() == 0.0
    # k3 KL is positive when the reference differs
    _, _, kl = grpo_loss(
        torch.tensor([[-1.0]]),
        torch.tensor([[-1.0]]),
        torch.tensor([[-2.0]]),
        torch.tensor([0.0]),
        torch.tensor([[True]]),
        0.2,
        1.0,
    )
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


TINY_RL = [
    "--queries-per-step",
    "2",
    "--group",
    "2",
    "--max-new-tokens",
    "4",
    "--doc-max-length",
    "200",
    "--lr",
    "1e-3",
    "--save-every",
    "1",
    "--fp32",
]


def _args(out, model_dir, beir_dir, steps, *extra):
    return ["train", "rl", "--init", model_dir, "--data", beir_dir, "--out", out, "--steps", steps, *TINY_RL, *extra]


def _train(cli, out, model_dir, beir_dir, steps, *extra):
    res = cli(*_args(out, model_dir, beir_dir, steps, *extra))
    assert res.code == 0, res.err[-3000:]
    return res


def tiny_rl_config(out, model_dir, beir_dir, **kw) -> GRPOConfig:
    base = dict(
        out=str(out),
        init=str(model_dir),
        data=str(beir_dir),
        steps=1,
        queries_per_step=2,
        group=2,
        max_new_tokens=4,
        doc_max_length=200,
        lr=1e-3,
        save_every=1,
        bf16=False,
        show_progress_bar=False,
    )
    return GRPOConfig(**{**base, **kw})


def test_tiny_run_checkpoints_and_resumes_exactly(tiny_model_dir, beir_dir, tmp_path, cli):
    from safetensors.torch import load_file

    res = _train(cli, tmp_path / "a", tiny_model_dir, beir_dir, 2)
    assert "reward curve" in res.out
    rows = [json.loads(r) for r in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    # lazy refresh: step 1 reads the initial model's own index (nothing to re-encode), step 2 re-encodes what it reads
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["encoded"] == 0 and rows[1]["encoded"] > 0
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 5e-4])  # the linear schedule: lr, then lr * (1 - 1/2)
    assert 0 < rows[1]["refresh_share"] < 1 and rows[1]["doc_drift"] > 0 and (tmp_path / "a" / "env.png").is_file()
    assert (tmp_path / "a" / "reward.png").stat().st_size > 0 and (tmp_path / "a" / "final" / "searchr3.json").exists()
    assert json.loads((tmp_path / "a" / "config.json").read_text())["kind"] == "RL"
    assert len(list((tmp_path / "a" / "corpus-embeddings").glob("*.npz"))) == 1  # the initial encode is cached
    straight = load_file(tmp_path / "a" / "final" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in straight.items() if "lora_B" in k)  # it trained

    _train(cli, tmp_path / "b", tiny_model_dir, beir_dir, 1)
    _train(cli, tmp_path / "b", tiny_model_dir, beir_dir, 2, "--resume")
    resumed = load_file(tmp_path / "b" / "final" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys()
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, atol=1e-6, rtol=1e-5)
    assert [json.loads(r)["step"] for r in (tmp_path / "b" / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert SearchR3.from_pretrained(tmp_path / "b" / "final").encode_query("cats").shape == (32,)


def test_run_folder_is_not_overwritten_without_resume(tiny_model_dir, beir_dir, tmp_path, cli):
    _train(cli, tmp_path / "r", tiny_model_dir, beir_dir, 1)
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    cli(*_args(tmp_path / "r", tiny_model_dir, beir_dir, 1)).assert_bad_input("already holds a run", "--resume")
    assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == before
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    cli(*_args(tmp_path / "foreign", tiny_model_dir, beir_dir, 1)).assert_bad_input("not a searchr3 RL run folder")
    assert [p.name for p in (tmp_path / "foreign").iterdir()] == ["notes.txt"]
    cli(*_args(tmp_path / "new", tiny_model_dir, beir_dir, 1, "--resume")).assert_bad_input("no run to resume")


def test_resume_with_other_settings_or_data_is_refused(tiny_model_dir, beir_dir, tmp_path, cli):
    _train(cli, tmp_path / "r", tiny_model_dir, beir_dir, 1)
    cli(*_args(tmp_path / "r", tiny_model_dir, beir_dir, 2, "--resume", "--kl-coef", "0.5")).assert_bad_input(
        "different settings", "kl_coef"
    )
    other = tmp_path / "other-data"
    shutil.copytree(beir_dir, other)
    with (other / "corpus.jsonl").open("a") as fh:  # the same ids, one more document: other data
        fh.write(json.dumps({"_id": "extra", "title": "", "text": "an extra document"}) + "\n")
    cli(*_args(tmp_path / "r", tiny_model_dir, other, 2, "--resume")).assert_bad_input("data_digest")
    other_model = build_tiny_model(tmp_path / "other-model", seed=1)
    cli(*_args(tmp_path / "r", other_model, beir_dir, 2, "--resume")).assert_bad_input("different settings")
    # settings that do not change the steps taken may differ: more steps (and another precision) continue the run
    _train(cli, tmp_path / "r", tiny_model_dir, beir_dir, 2, "--resume", "--bf16")
    rows = [json.loads(r) for r in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["bf16"] is False and rows[1]["bf16"] is True  # each step's precision is logged (TINY_RL: --fp32)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_dir, beir_dir, tmp_path):
    cfg = tiny_rl_config(tmp_path / "r", tiny_model_dir, beir_dir, steps=1)
    train_rl(cfg)
    ckpt = tmp_path / "r" / "checkpoint"
    good = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    log = (tmp_path / "r" / "log.jsonl").read_text()
    trainer = GRPOTrainer(tiny_rl_config(tmp_path / "r", tiny_model_dir, beir_dir, steps=3), resume=True)
    assert trainer.step == 1
    trainer.env.config.refresh = "none"  # no re-encode on read: the damaged rows reach the loss
    trainer.env.emb[:] = np.nan  # damaged corpus vectors: the contrastive term of the next step is NaN
    with pytest.raises(RunError, match="step 2: loss is nan"):
        trainer.train()
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == good  # the last good checkpoint, untouched
    assert (tmp_path / "r" / "log.jsonl").read_text() == log  # no row for the failed step
    lora = [p for n, p in trainer.model.model.named_parameters() if "lora_" in n]
    assert lora and all(torch.isfinite(p).all() for p in lora)  # the optimizer never stepped on it


def test_cli_evaluates_the_init_and_rl_models(tiny_model_dir, beir_dir, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("SEARCHR3_CACHE", str(tmp_path / "cache"))
    ev = tmp_path / "eval"
    shutil.copytree(beir_dir, ev)
    (ev / "qrels" / "train.tsv").rename(ev / "qrels" / "test.tsv")
    _train(cli, tmp_path / "r", tiny_model_dir, beir_dir, 1, "--eval", ev, "--eval-docs", "10")
    rows = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert [(r["system"].split(" ")[0], r["reasoning"]) for r in rows] == [
        ("init", False),
        ("init", True),
        ("rl", False),
        ("rl", True),
    ]
    assert {(r["dataset"], r["num_docs"], r["num_queries"]) for r in rows} == {("eval[:10]", 10, 6)}
    assert len(list((tmp_path / "cache" / "corpus-embeddings").glob("*.npz"))) == 2  # one corpus encode per model


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="group must be >= 2"):
        GRPOConfig(group=1)
    with pytest.raises(ValueError, match="sampling_temperature > 0"):
        GRPOConfig(sampling_temperature=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        GRPOConfig(steps=0)
    with pytest.raises(ValueError, match="pg_coef >= 0"):
        GRPOConfig(pg_coef=-1)
    with pytest.raises(ValueError, match="lr_schedule"):
        GRPOConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match="lora_layers must be >= 0"):
        GRPOConfig(lora_layers=-1)
    with pytest.raises(ValueError, match="reward must be"):
        GRPOConfig(reward="dcg")
    for bad in (dict(mix_weight=1.0), dict(mix_weight=-0.1), dict(hard_below=1.5)):
        with pytest.raises(ValueError, match="mix_weight < 1 and 0 <= hard_below"):
            GRPOConfig(**bad)


def test_cli_rejects_a_bad_contrastive_negatives_choice(tiny_model_dir, beir_dir, tmp_path, cli):
    cli(*_args(tmp_path / "r", tiny_model_dir, beir_dir, 1, "--nce-negatives", "stale")).assert_bad_input(
        "nce_negatives must be 'all' or 'fresh'"
    )
    assert not (tmp_path / "r").exists()  # refused before the run folder is written


def test_cli_help(cli):
    res = cli("train", "rl", "--help")
    assert res.code == 0 and "--refresh" in res.out and "GRPO" in res.out


def test_gain_advantages_push_a_whole_group_down_when_reasoning_loses():
    """Gain rewards against baseline 0 (the direct embedding): a group that all loses to it is all pushed
    down, one that all beats it all pushed up; against the group mean half of each goes down."""
    rewards = torch.tensor([-0.2, -0.1, 0.3, 0.5])
    adv = group_advantages(rewards, group=2, baseline=0.0)
    assert (adv[:2] < 0).all() and (adv[2:] > 0).all()
    spread = torch.tensor([-0.2, -0.1, 0.0]).std(unbiased=False).item()
    assert adv[0].item() == pytest.approx(-0.2 / (spread + 1e-4), rel=1e-5)
    same = group_advantages(torch.tensor([0.3, 0.3]), group=2, baseline=0.0)  # equal gains: bounded, not gain / eps
    assert same.tolist() == pytest.approx([0.3 / (torch.tensor([0.3, 0.3, 0.0]).std(unbiased=False).item() + 1e-4)] * 2, rel=1e-5)
    plain = group_advantages(rewards, group=2)
    assert plain[1] > 0 and plain[2] < 0


def test_plot_curves_draws_a_tuple_of_keys_in_one_panel(tmp_path):
    from searchr3.plots import plot_curves

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "a": s, "b": 2 * s, "c": 3 * s}) + "\n" for s in range(1, 5)))
    heights = {}
    for name, keys in {"three": ["a", "b", "c"], "two": ["a", ("b", "c", "absent")]}.items():
        png = plot_curves(log, tmp_path / f"{name}.png", keys).read_bytes()
        assert png[:4] == b"\x89PNG"
        heights[name] = int.from_bytes(png[20:24], "big")  # the IHDR height: 2.2 inches at 100 dpi per panel
    assert heights == {"three": 660, "two": 440}


def test_top_layer_adapter_refreshes_through_the_cached_trunk(tiny_model_dir, beir_dir, tmp_path):
    """With ``lora_layers`` = 1 of 2, only the top layer trains, the documents' states entering it are
    cached, and every row the environment re-encodes equals the full forward of the current weights."""
    from searchr3.env import model_encoder

    cfg = tiny_rl_config(tmp_path / "r", tiny_model_dir, beir_dir, steps=2, lora_layers=1)
    trainer = GRPOTrainer(cfg)
    assert trainer.first_adapted == 1 and trainer.trunk is not None and len(trainer.trunk.states) == len(trainer.doc_ids)
    assert list((tmp_path / "r" / "corpus-embeddings").glob("trunk-*.safetensors")) and list(
        (tmp_path / "r" / "corpus-embeddings").glob("*.npz")
    )
    names = [n for n, p in trainer.model.model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)  # the adapter is on the top layer only
    trainer.train()
    assert [json.loads(r)["encoded"] for r in (tmp_path / "r" / "log.jsonl").read_text().splitlines()][1] > 0
    full = model_encoder(trainer.model, trainer.doc_texts, max_length=cfg.doc_max_length)
    every = list(range(trainer.env.size))
    now = full(every)
    np.testing.assert_allclose(trainer.env.encode(every), now, atol=1e-5)  # the trained weights, through the trunk
    with trainer.model.model.disable_adapter():
        assert np.abs(now - full(every)).max() > 1e-4  # training moved the documents: the check above has teeth
    again = GRPOTrainer(
        tiny_rl_config(tmp_path / "r2", tiny_model_dir, beir_dir, lora_layers=1),
        corpus_cache=tmp_path / "r" / "corpus-embeddings",
    )
    assert all(torch.equal(a, b) for a, b in zip(again.trunk.states, trainer.trunk.states))  # read back from the cache


def test_fresh_nce_negatives_leave_the_stale_rows_out(tiny_model_dir, beir_dir, tmp_path):
    """``nce_negatives="fresh"``: the contrastive term sees only rows re-encoded with the current weights.
    Step 1 reads the initial model's own index (every row is fresh: the same set as "all"); step 2's
    candidates are partly stale, and fewer rows reach the term."""
    rows = {}
    for kind in ("all", "fresh"):
        train_rl(tiny_rl_config(tmp_path / kind, tiny_model_dir, beir_dir, steps=2, nce_negatives=kind))
        rows[kind] = [json.loads(r) for r in (tmp_path / kind / "log.jsonl").read_text().splitlines()]
    assert rows["fresh"][0]["nce_docs"] == rows["all"][0]["nce_docs"]
    assert rows["fresh"][0]["nce"] == pytest.approx(rows["all"][0]["nce"])
    assert 0 < rows["fresh"][1]["nce_docs"] < rows["all"][1]["nce_docs"]
    with pytest.raises(ValueError, match="nce_negatives"):
        GRPOConfig(nce_negatives="stale")


def test_mix_reward_scores_the_mix_of_direct_and_rollout():
    """reward="mix": the environment scores w * direct + (1 - w) * rollout (each unit first), the mix mode's
    embedding, so the gain is what the trace adds to the direct embedding; "gain" scores the rollout alone."""
    direct = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    rollouts = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    mixed = rollout_query_embeddings(GRPOConfig(reward="mix", mix_weight=0.75), rollouts, direct)
    np.testing.assert_allclose(mixed, [[0.75, 0.25, 0.0], [0.0, 0.75, 0.25]], atol=1e-6)
    assert rollout_query_embeddings(GRPOConfig(reward="gain"), rollouts, direct) is rollouts


def test_mix_contrastive_term_trains_what_the_trace_adds():
    """nce_on="mix": the contrastive term reads the mix mode's embedding of each rollout, whose direct half is a
    constant: the gradient reaches the rollout embedding only. A rollout that points away from the positive
    costs less when the direct embedding already points at it (the term asks the trace to add, not to replace)."""
    docs = torch.eye(3)
    direct = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)  # at the positive, document 0
    rollout = torch.tensor([[0.0, 2.0, 0.0]], requires_grad=True)  # at a negative
    cfg = GRPOConfig(nce_on="mix", mix_weight=0.75)
    read = nce_query_embeddings(cfg, rollout, direct)
    torch.testing.assert_close(read, mix_embeddings(direct, rollout, 0.75))
    positive = torch.tensor([0])
    mixed = info_nce(read, docs, positive, 0.05)
    mixed.backward()
    assert direct.grad is None and rollout.grad is not None and rollout.grad.abs().sum() > 0
    assert mixed < info_nce(rollout, docs, positive, 0.05)
    with pytest.raises(ValueError, match="nce_on must be 'trace' or 'mix'"):
        GRPOConfig(nce_on="both")


def test_mix_contrastive_term_in_a_run(tiny_model_dir, beir_dir, tmp_path, cli):
    """The same first step (same seed, same rollouts) with nce_on trace and mix differs only in what the contrastive
    term reads; with reward="ndcg" the direct embedding the mix needs does not turn the reward into a gain."""
    first = {}
    for on in ("trace", "mix"):
        train_rl(tiny_rl_config(tmp_path / on, tiny_model_dir, beir_dir, reward="ndcg", nce_on=on))
        first[on] = next(json.loads(r) for r in (tmp_path / on / "log.jsonl").read_text().splitlines() if '"reward"' in r)
    assert first["mix"]["reward"] == pytest.approx(first["trace"]["reward"])
    assert first["mix"]["ndcg"] == pytest.approx(first["trace"]["ndcg"])
    assert "direct_ndcg" not in first["mix"] and math.isfinite(first["mix"]["nce"])
    assert first["mix"]["nce"] != pytest.approx(first["trace"]["nce"])
    cli(*_args(tmp_path / "bad", tiny_model_dir, beir_dir, 1, "--nce-on", "both")).assert_bad_input(
        "nce_on must be 'trace' or 'mix'"
    )


def test_hard_below_keeps_the_queries_the_direct_embedding_misses(tiny_model_dir, beir_dir, tmp_path):
    """hard_below: training queries are those whose direct embedding (initial model) scores nDCG@k below
    the threshold in the initial environment; a run on them logs how many there are, and its rewards are
    the mix's nDCG minus the direct one's minus the penalties."""
    every = GRPOTrainer(tiny_rl_config(tmp_path / "all", tiny_model_dir, beir_dir))
    qids = list(every.queries)
    scores = every.env.score(
        qids, every.model.encode_query([every.queries[q] for q in qids], convert_to_numpy=True), [every.qrels[q] for q in qids]
    )
    cut = float(np.sort(scores)[-1])  # the best-scored query(s) are left out
    want = {q for q, s in zip(qids, scores) if s < cut}
    assert 2 <= len(want) < len(qids)
    cfg = tiny_rl_config(tmp_path / "hard", tiny_model_dir, beir_dir, steps=2, hard_below=cut, reward="mix")
    trainer = GRPOTrainer(cfg)
    assert set(trainer.queries) == want
    trainer.train()
    rows = [json.loads(r) for r in (tmp_path / "hard" / "log.jsonl").read_text().splitlines() if '"reward"' in r]
    assert rows and all(r["queries"] == len(want) for r in rows)
    env = cfg.env
    for r in rows:
        penalty = env.limit_penalty * r["hit_limit"] + env.format_penalty * (1 - r["emitted"] - r["hit_limit"])
        assert r["reward"] == pytest.approx(r["ndcg"] - r["direct_ndcg"] - penalty, abs=1e-5)
    with pytest.raises(ValueError, match="training queries score nDCG"):
        GRPOTrainer(tiny_rl_config(tmp_path / "few", tiny_model_dir, beir_dir, hard_below=cut, queries_per_step=len(want) + 1))


def test_several_training_folders_make_one_environment(tmp_path):
    """data=[a, b]: both corpora side by side, every id prefixed with its folder's name (the two folders
    share ids); max_queries keeps each folder's first N judged queries and corpus_limit documents in all,
    theirs first; one folder in a list is that folder (same config, same digest: resumes still match)."""
    docs = {f"d{i}": f"passage number {i}" for i in range(6)}
    queries = {f"q{i}": f"query {i}" for i in range(4)}
    qrels = [(f"q{i}", f"d{5 - i}", 1) for i in range(4)]  # relevant documents sit late in the file
    a, b = write_beir(tmp_path / "a", docs, queries, qrels), write_beir(tmp_path / "b", docs, queries, qrels)
    q, r, ids, texts = load_training_data(GRPOConfig(data=[str(a), str(b)]))
    assert len(q) == 8 and q["a/q1"] == q["b/q1"] == "query 1" and r["b/q1"] == {"b/d4": 1}
    assert ids == [f"{n}/d{i}" for n in "ab" for i in range(6)] and texts[7] == "passage number 1"
    q, r, ids, _ = load_training_data(GRPOConfig(data=[str(a), str(b)], max_queries=2, corpus_limit=3))
    assert sorted(q) == ["a/q0", "a/q1", "b/q0", "b/q1"]
    assert ids == ["a/d0", "a/d4", "a/d5", "b/d0", "b/d4", "b/d5"]  # the kept queries' documents, then the first others
    one = GRPOConfig(data=[str(a)])
    assert one.data == str(a) and data_digest(*load_training_data(one)) == data_digest(
        *load_training_data(GRPOConfig(data=str(a)))
    )
    with pytest.raises(ValueError, match="share a name"):
        GRPOConfig(data=[str(a), str(tmp_path / "x" / "a")])
    with pytest.raises(ValueError, match="no training folder"):
        GRPOConfig(data=[])
    with pytest.raises(ValueError, match="max_queries >= 0"):
        GRPOConfig(max_queries=-1)


def test_cli_trains_on_two_folders(tiny_model_dir, beir_dir, tmp_path, cli):
    other = shutil.copytree(beir_dir, tmp_path / "other")
    _train(cli, tmp_path / "r", tiny_model_dir, beir_dir, 1, "--data", other, "--max-queries", "3", "--corpus-limit", "10")
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert saved["data"] == [str(beir_dir), str(other)] and saved["max_queries"] == 3
    row = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[0])
    assert row["queries"] == 6  # three from each folder
    cli(*_args(tmp_path / "bad", tiny_model_dir, beir_dir, 1, "--data", tmp_path / "missing")).assert_bad_input("missing")
