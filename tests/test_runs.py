"""The run-folder layer both trainers share (searchr3/runs.py), without a model."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from searchr3.runs import RunError, RunFolder, differing_settings, holds_run, read_rows


def folder(path, **config) -> RunFolder:
    return RunFolder(path, "RL", {"lr": 0.1, "steps": 4, **config}, {"data_digest": "abc"}, resumable={"steps"})


def test_config_is_written_first_and_compared_on_resume(tmp_path):
    run = tmp_path / "run"
    assert folder(run).open(resume=False) is False
    assert holds_run(run) and json.loads((run / "config.json").read_text()) == {
        "kind": "RL", "config": {"lr": 0.1, "steps": 4}, "data_digest": "abc",
    }  # fmt: skip
    with pytest.raises(RunError, match="already holds a run: pass --resume"):
        folder(run).open(resume=False)
    with pytest.raises(RunError, match=r"different settings.*'lr': \(0.1, 0.2\)"):
        folder(run, lr=0.2).open(resume=True)
    with pytest.raises(RunError, match="data_digest"):
        RunFolder(run, "RL", {"lr": 0.1, "steps": 4}, {"data_digest": "other"}).open(resume=True)
    with pytest.raises(RunError, match="not a searchr3 SFT run folder"):
        RunFolder(run, "SFT", {"lr": 0.1, "steps": 4}).open(resume=True)
    assert folder(run, steps=8).open(resume=True) is False  # a resumable setting may change; no checkpoint yet


def test_foreign_or_missing_folders(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match="not a searchr3 RL run folder"):
        folder(tmp_path / "foreign").open(resume=False)
    with pytest.raises(RunError, match="no run to resume"):
        folder(tmp_path / "nothing").open(resume=True)
    assert not (tmp_path / "nothing").exists() and sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["notes.txt"]


def test_checkpoint_restores_step_state_and_rng(tmp_path):
    run = folder(tmp_path / "run")
    run.open(resume=False)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    run.save_checkpoint(3, {"weights": torch.arange(3)}, lambda tmp: (tmp / "extra.txt").write_text("x"))
    want = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    state = run.load_checkpoint()
    assert state["step"] == 3 and torch.equal(state["weights"], torch.arange(3))
    assert (run.checkpoint / "extra.txt").read_text() == "x" and not list(run.path.glob(".checkpoint*"))
    got = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]
    assert folder(tmp_path / "run").open(resume=True) is True


def test_log_is_cut_back_to_the_checkpoint(tmp_path):
    run = folder(tmp_path / "run")
    run.open(resume=False)
    for step in (1, 2, 3):
        run.log({"step": step, "loss": 1.0 / step})
    run.reset_log(2)
    assert [r["step"] for r in read_rows(run.log_path)] == [1, 2]
    run.reset_log(0)
    assert read_rows(run.log_path) == []


def test_only_a_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_rows(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"step": oops}\n{"step": 3}\n')
    with pytest.raises(RunError, match="log.jsonl:2: corrupted line"):
        read_rows(path)


def test_non_finite_values_stop_the_run(tmp_path):
    run = folder(tmp_path / "run")
    run.check_finite(1, "loss", torch.tensor(0.5, requires_grad=True))
    with pytest.raises(RunError, match=r"step 2: loss is nan \({'lm': 1.0}\).*last good checkpoint"):
        run.check_finite(2, "loss", torch.tensor(float("nan")), lm=torch.tensor(1.0))
    with pytest.raises(RunError, match="gradient norm is inf"):
        run.check_finite(2, "gradient norm", float("inf"))


def test_a_setting_added_since_resumes_at_its_default(tmp_path):
    """An older run's config lacks a setting added since: resuming with that setting at its default works
    (nested settings too), with another value it is refused."""
    from dataclasses import asdict

    from searchr3.grpo import GRPOConfig
    from searchr3.runs import dataclass_defaults

    run = tmp_path / "run"
    new = asdict(GRPOConfig())
    old = json.loads(json.dumps(new))
    del old["reward"], old["env"]["limit_penalty"]
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": "RL", "config": old}))
    defaults = dataclass_defaults(GRPOConfig)
    assert RunFolder(run, "RL", new, defaults=defaults).open(resume=True) is False
    (run / "config.json").write_text(json.dumps({"kind": "RL", "config": old}))
    other = {**new, "env": {**new["env"], "limit_penalty": 0.9}}
    with pytest.raises(RunError, match="limit_penalty"):
        RunFolder(run, "RL", other, defaults=defaults).open(resume=True)
    with pytest.raises(RunError, match="reward"):
        RunFolder(run, "RL", {**new, "reward": "ndcg"}, defaults=defaults).open(resume=True)


def test_differing_settings():
    a = {"out": "runs/a", "lr": 1e-4, "data": ["x"], "env": {"refresh": "lazy"}}
    b = {"out": "runs/b", "lr": 2e-4, "data": ["x"], "env": {"refresh": "lazy"}, "pg_coef": 0.0}
    assert differing_settings([a, b]) == ["lr", "pg_coef"]  # a setting one lacks differs; "out" is ignored
    assert differing_settings([a, b], ignore=("out", "lr")) == ["pg_coef"]
    assert differing_settings([a, dict(a, out="runs/c")]) == []
    assert differing_settings([a, dict(a, out="runs/c", env={"refresh": "full"})], ignore=()) == ["env", "out"]
