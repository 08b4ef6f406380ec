"""Both trainers under ``accelerate launch --multi_gpu --num_processes 2`` (gloo CPU processes) on a tiny random model.

Two processes with a global batch of 2b (b per rank) must train like one process with batch 2b:
the same loss curve and final weights within ``TOL`` (measured: SFT 2e-6 on the losses and 8e-6 on
the weights after 6 steps; GRPO identical rewards, losses and weights to 1e-6), and a 2-process run
killed with ``kill -9`` must resume to the uninterrupted 2-process run's weights.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from searchr3.distributed import Dist
from searchr3.runs import RunError, read_rows
from tests.conftest import REPO, build_tiny_model, write_beir, write_topic_beir

TOL = 1e-4  # absolute on every logged loss term and every trained weight, relative on the gradient norm

TOPICS = ["cat mat", "paris france", "protein fold", "search engine", "heart blood", "embedding vector", "rain clouds", "the sky"]
WORDS = "cat mat paris france protein fold search engine heart blood rain cloud vector text".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_dist") / "model")


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    return write_topic_beir(tmp_path_factory.mktemp("sft_beir"), TOPICS)


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory) -> Path:
    rng = random.Random(0)
    docs = {f"d{i}": " ".join(rng.choices(WORDS, k=8)) for i in range(30)}
    queries = {f"q{i}": docs[f"d{i}"][:20] for i in range(6)}
    return write_beir(tmp_path_factory.mktemp("rl_beir"), docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(6)])


def sft_args(out: Path, model_dir: Path, data: Path, *extra) -> list[str]:
    return [
        "train", "sft", "--out", str(out), "--data", str(data), "--model", str(model_dir), "--steps", "6", "--batch-size", "4",
        "--eval-queries", "0", "--eval-every", "0", "--save-every", "1", "--query-tokens", "16", "--doc-tokens", "24",
        "--reasoning-share", "0.5", "--reasoning-tokens", "4", "--lora-r", "4", "--lr", "5e-3", "--fp32", *extra,
    ]  # fmt: skip


def launch(args: list[str], *, wait: bool = True) -> subprocess.Popen:
    """``accelerate launch --multi_gpu --num_processes 2 -m searchr3.cli ARGS`` in its own process group: on a
    machine without CUDA, two gloo CPU processes (``--cpu`` would start one: accelerate 1.x runs several CPU
    processes only through mpirun)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "searchr3.cli", *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    if wait:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-3000:]
    return proc


def rows(run: Path) -> list[dict]:
    return read_rows(run / "log.jsonl")  # [] before the file exists; a torn last line is skipped


def trainable(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint" / "state.pt", weights_only=False)["trainable"]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def sft_two(tmp_path_factory, model_dir, sft_data) -> Path:
    """The uninterrupted 2-process SFT run (global batch 4: 2 examples per rank)."""
    out = tmp_path_factory.mktemp("sft_two") / "run"
    launch(sft_args(out, model_dir, sft_data))
    return out


def test_two_processes_train_sft_like_one_with_the_global_batch(tmp_path, model_dir, sft_data, sft_two, cli):
    res = cli(*sft_args(tmp_path / "one", model_dir, sft_data))
    assert res.code == 0, res.err[-3000:]
    one, two = rows(tmp_path / "one"), rows(sft_two)
    assert [r["processes"] for r in one] == [1] * 6 and [r["processes"] for r in two] == [2] * 6
    for a, b in zip(one, two, strict=True):
        for k in ("loss", "lm", "kl", "nce", "triplet"):
            assert abs(a[k] - b[k]) <= TOL, (a["step"], k, a[k], b[k])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=TOL)
    assert one[-1]["kl"] > 0 and one[-1]["loss"] != one[0]["loss"]  # it trained
    assert max_diff(trainable(tmp_path / "one"), trainable(sft_two)) <= TOL
    # rank 0 alone wrote the run folder: one log row per step, the final model and the plot
    assert (sft_two / "final" / "searchr3.json").is_file() and (sft_two / "curves.png").is_file()


def test_two_process_sft_killed_with_sigkill_resumes_to_the_same_end(tmp_path, model_dir, sft_data, sft_two):
    out = tmp_path / "killed"
    proc = launch(sft_args(out, model_dir, sft_data), wait=False)
    deadline = time.time() + 300
    while not any(r["step"] >= 2 for r in rows(out)):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks at once, like a lost machine
    proc.wait()
    step = torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"]
    assert 1 <= step < 6 and not (out / "final").exists(), "the kill should land mid-run"  # step 2's row precedes its checkpoint
    launch(sft_args(out, model_dir, sft_data, "--resume"))
    assert [r["step"] for r in rows(out)] == list(range(1, 7))  # no duplicated rows after the resume
    assert max_diff(trainable(out), trainable(sft_two)) <= 1e-6
    assert [round(r["loss"], 5) for r in rows(out)] == [round(r["loss"], 5) for r in rows(sft_two)]


def test_two_processes_run_grpo_like_one(tmp_path, model_dir, rl_data, cli):
    args = ["train", "rl", "--init", str(model_dir), "--data", str(rl_data), "--steps", "3", "--queries-per-step", "2", "--group", "2",
            "--max-new-tokens", "4", "--doc-max-length", "200", "--lr", "1e-3", "--save-every", "3", "--fp32"]  # fmt: skip
    res = cli(*args, "--out", tmp_path / "one")
    assert res.code == 0, res.err[-3000:]
    launch([*args, "--out", str(tmp_path / "two")])
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["processes"] for r in two] == [2] * 3
    for a, b in zip(one, two, strict=True):
        for k in ("reward", "mean_rank", "emitted", "completion_tokens", "encoded"):
            assert a[k] == b[k], (a["step"], k, a[k], b[k])  # the same rollouts, scored by the same index
        for k in ("loss", "pg", "kl", "nce"):
            assert abs(a[k] - b[k]) <= TOL, (a["step"], k, a[k], b[k])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=TOL)
    assert one[-1]["kl"] > 0 and len({r["reward"] for r in one}) > 1  # it trained and the rewards moved
    wa, wb = (load_file(tmp_path / r / "final" / "adapter_model.safetensors") for r in ("one", "two"))
    assert max_diff(wa, wb) <= TOL


def test_shards_and_per_text_seeds(tiny):
    d = Dist()
    assert (d.world, d.rank, d.shard([1, 2, 3])) == (1, 0, [1, 2, 3])  # no accelerate launch: one process
    d.world, d.rank = 2, 1  # the arithmetic of rank 1 of 2
    assert d.shard([1, 2, 3, 4]) == [3, 4]
    with pytest.raises(RunError, match="batch_size=3 does not split over 2 processes"):
        d.per_rank(3, "batch_size")
    # a text's rollout depends on its own seed only, not on the other texts of the batch
    both = tiny.reason(["cats on mats", "paris in france"], max_new_tokens=6, do_sample=True, seed=[11, 12])
    alone = tiny.reason(["paris in france"], max_new_tokens=6, do_sample=True, seed=[12])
    assert both.completion_ids[1] == alone.completion_ids[0]
    torch.testing.assert_close(both.embeddings[1], alone.embeddings[0], atol=1e-5, rtol=1e-5)
    other = tiny.reason(["paris in france"], max_new_tokens=6, do_sample=True, seed=[13])
    assert other.completion_ids[0] != alone.completion_ids[0]
    with pytest.raises(ValueError, match="2 seeds for 1 texts"):
        tiny.reason(["x"], do_sample=True, seed=[1, 2])
