"""The command line end to end on a tiny model and a tiny BEIR folder."""
from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from searchr3.cli import app
from tests import beir_files


def write_beir(folder, n_docs=12):
    words = ["cat", "mat", "paris", "france", "protein", "heart", "rain", "cloud", "query", "engine", "blood", "sky"]
    docs = {f"d{i}": f"the {words[i % 12]} and the {words[(i + 3) % 12]}" for i in range(n_docs)}
    queries = {**{f"q{i}": words[i] for i in range(4)}, "q_unjudged": "nothing"}
    return beir_files.write_beir(folder, docs, queries, [(f"q{i}", f"d{i}", 1 + i % 2) for i in range(4)], split="test")


def test_eval_command_writes_rows(tmp_path, tiny_model_dir):
    data = write_beir(tmp_path / "beir")
    out = tmp_path / "res.json"
    res = CliRunner().invoke(app, ["eval", "--data", str(data), "--model", str(tiny_model_dir), "--reasoning", "both", "--baselines", "--out", str(out), "--max-length", "400"])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [(r["system"].split(" ")[0], r["reasoning"]) for r in rows] == [("BM25", False), ("all-MiniLM-L6-v2", False), ("searchr3", False), ("searchr3", True)]
    assert all(r["num_queries"] == 4 and 0.0 <= r["ndcg@10"] <= 1.0 for r in rows)
    assert "nDCG@10" in res.output


def test_cli_bad_input_is_one_clear_line(tmp_path):
    bad = tmp_path / "nodata"
    proc = subprocess.run([sys.executable, "-m", "searchr3.cli", "eval", "--data", str(bad), "--model", "none"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "searchr3.cli", "eval", "--data", str(tmp_path), "--model", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
