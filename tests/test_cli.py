"""The command line end to end, always through the real entry point :func:`searchr3.cli.main`."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import subprocess
import sys
from enum import Enum
from pathlib import Path

import typer

from searchr3.cli import app
from tests.conftest import write_beir as _write_beir


def write_beir(folder, n_docs=12):
    words = ["cat", "mat", "paris", "france", "protein", "heart", "rain", "cloud", "query", "engine", "blood", "sky"]
    docs = {f"d{i}": f"the {words[i % 12]} and the {words[(i + 3) % 12]}" for i in range(n_docs)}
    queries = {**{f"q{i}": words[i] for i in range(4)}, "q_unjudged": "nothing"}
    return _write_beir(folder, docs, queries, [(f"q{i}", f"d{i}", 1 + i % 2) for i in range(4)], split="test")


def test_eval_command_writes_rows(tmp_path, tiny_model_dir, cli, monkeypatch):
    monkeypatch.setenv("SEARCHR3_CACHE", str(tmp_path / "cache"))
    data = write_beir(tmp_path / "beir")
    out = tmp_path / "res.json"
    res = cli(
        "eval",
        "--data",
        data,
        "--model",
        tiny_model_dir,
        "--reasoning",
        "both",
        "--baselines",
        "--out",
        out,
        "--max-length",
        "400",
    )
    assert res.code == 0, res.err[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["system"].split(" ")[0], r["reasoning"]) for r in rows] == [
        ("BM25", False),
        ("all-MiniLM-L6-v2", False),
        ("searchr3", False),
        ("searchr3", True),
    ]
    assert all(r["num_queries"] == 4 and 0.0 <= r["ndcg@10"] <= 1.0 for r in rows)
    assert all(len(r["per_query"]) == 4 for r in rows)  # each query's metrics, for paired comparisons
    assert "nDCG@10" in res.out


def test_eval_mix_of_sampled_rollouts(tmp_path, tiny_model_dir, cli, monkeypatch):
    """--reasoning mix --samples 3: the row records its settings and what reasoning did."""
    monkeypatch.setenv("SEARCHR3_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "res.json"
    res = cli(
        "eval",
        "--data",
        write_beir(tmp_path / "beir"),
        "--model",
        tiny_model_dir,
        "--reasoning",
        "mix",
        "--samples",
        "3",
        "--temperature",
        "0.7",
        "--mix-weight",
        "0.5",
        "--out",
        out,
    )
    assert res.code == 0, res.err[-3000:]
    (row,) = json.loads(out.read_text())
    assert row["reasoning"] == "mix" and row["generation"] == {"mix_weight": 0.5, "samples": 3, "temperature": 0.7}
    assert 0.0 <= row["emit_rate"] <= 1.0 and row["mean_new_tokens"] >= 1
    assert "mix ×3" in res.out


def _bad_inputs(tmp: Path, beir: Path, model: Path) -> list[tuple[list, str]]:
    """(arguments, text of the error line) of every command's bad input."""
    missing, corpus = tmp / "missing", tmp / "corpus.txt"
    return [
        (["bogus"], "No such command 'bogus'"),
        (["eval"], "Missing option '--data'"),
        (["eval", "--data", missing, "--model", "none"], "does not exist"),
        (["eval", "--data", beir, "--max-docs", "-1"], "--max-docs"),
        (["eval", "--data", beir, "--batch-size", "0"], "--batch-size"),
        (["eval", "--data", beir, "--reasoning", "maybe"], "--reasoning"),
        (["eval", "--data", beir, "--samples", "0"], "--samples must be >= 1"),
        (["eval", "--data", beir, "--mix-weight", "1.5"], "--mix-weight in [0, 1]"),
        (["eval", "--data", beir, "--model", missing], "missing"),
        (["eval", "--data", beir, "--unknown-option"], "No such option"),
        (["pipeline", "--data", missing], "does not exist"),
        (["pipeline", "--preset", "huge"], "--preset"),
        (["train"], None),  # no subcommand: the help, exit 0 (checked below)
        (["train", "sft", "--data", missing, "--out", tmp / "o1"], "does not exist"),
        (["train", "sft", "--batch-size", "0", "--out", tmp / "o0"], "batch_size must be >= 1"),
        (["train", "sft", "--reasoning-share", "2", "--out", tmp / "o2"], "reasoning_share"),
        (["train", "rl", "--data", missing, "--out", tmp / "o3"], "does not exist"),
        (["train", "rl", "--data", beir, "--refresh", "sometimes", "--out", tmp / "o4"], "refresh must be one of"),
        (["train", "rl", "--data", beir, "--group", "1", "--out", tmp / "o5"], "--group"),
        (
            ["train", "rl", "--data", beir, "--split", "test", "--resume", "--out", tmp / "o6", "--init", model],
            "no run to resume",
        ),
        (["train", "rl", "--data", beir, "--out", tmp / "o7", "--init", model], "no qrels for split 'train'"),
        (["index", "build", "--corpus", missing, "--out", tmp / "i1", "--model", model], "does not exist"),
        (["index", "build", "--corpus", corpus, "--out", tmp, "--model", model], "already exists"),
        (["index", "build", "--corpus", corpus, "--out", tmp / "i2", "--batch-size", "0"], "--batch-size"),
        (["index", "build", "--out", tmp / "i3"], "Missing option '--corpus'"),
        (["index", "add", missing, "--corpus", corpus], "does not exist"),
        (["search", tmp / "idx"], "Missing argument"),
        (["search", missing, "a query"], "does not exist"),
        (["search", missing, "a query", "-k", "0"], "-k"),
        (["search", missing, "  "], "empty"),
        (["serve", missing], "does not exist"),
        (["serve", "--port", "-5"], "--port"),
    ]


def test_every_bad_input_is_one_error_line_and_exit_code_2(tmp_path, tiny_model_dir, cli):
    beir = write_beir(tmp_path / "beir")
    (tmp_path / "corpus.txt").write_text("one document\nanother document\n")
    for args, fragment in _bad_inputs(tmp_path, beir, tiny_model_dir):
        res = cli(*args)
        if fragment is None:
            assert res.code == 0 and "sft" in res.out and "rl" in res.out, res
            continue
        try:
            res.assert_bad_input(fragment)
        except AssertionError as e:
            raise AssertionError(f"searchr3 {' '.join(map(str, args))}: {e}") from None


def test_a_subprocess_sees_the_same(tmp_path):
    """The console script's path: ``python -m searchr3.cli`` (no test harness in between)."""
    proc = subprocess.run(
        [sys.executable, "-m", "searchr3.cli", "eval", "--data", str(tmp_path / "nodata"), "--model", "none"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nodata'}: dataset folder does not exist"
    ]
    proc = subprocess.run([sys.executable, "-m", "searchr3.cli", "search", "idx"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: Missing argument")
    assert "Traceback" not in proc.stderr


def _commands(group=None, path=()):
    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def _resolve(target: str, name: str):
    module, attr = target.split(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if dataclasses.is_dataclass(obj):
        f = {f.name: f for f in dataclasses.fields(obj)}[name]
        return f.default_factory() if f.default is dataclasses.MISSING else f.default
    return inspect.signature(obj).parameters[name].default


def _plain(v):
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, list) and len(v) == 1:  # a repeatable option whose default is one value (train rl --data)
        return _plain(v[0])
    return v


def test_option_defaults_are_the_configs_defaults():
    """Every option of every command is either checked against the default of the config dataclass or
    function it feeds, or declared command-line only: a default is written once."""
    seen = 0
    for path, cmd in _commands():
        module = sys.modules[cmd.callback.__module__]
        table, cli_only = module.DEFAULTS, module.CLI_ONLY
        params = {p.name: p for p in cmd.params if p.name != "help"}
        assert set(params) <= set(table) | set(cli_only), (path, set(params) - set(table) - set(cli_only))
        for name, (target, field) in table.items():
            if name not in params:  # a table may serve two commands of one module (index build/add)
                continue
            want = _resolve(target, field)
            assert _plain(params[name].default) == _plain(want), (path, name, params[name].default, want)
            seen += 1
    assert seen > 60
