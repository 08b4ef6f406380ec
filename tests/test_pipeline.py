"""The main job end to end on a tiny model: every stage runs, writes its report, and a re-run resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from searchr3.pipeline import Pipeline, PipelineConfig, run_pipeline
from tests.conftest import TINY_PROMPTS as PROMPTS, write_beir

TOPICS = [
    "cat mat",
    "paris france",
    "protein fold",
    "search engine",
    "heart blood",
    "embedding vector",
    "rain clouds",
    "capital city",
]


@pytest.fixture()
def data(tmp_path) -> Path:
    docs = {f"d{i}": f"The {t} is here. This passage is about {t}." for i, t in enumerate(TOPICS)}
    queries = {f"q{i}": f"what about {t}" for i, t in enumerate(TOPICS)}
    qrels = [(f"q{i}", f"d{i}", 1) for i in range(len(TOPICS))]
    write_beir(tmp_path / "data" / "scifact-2k", docs, queries, qrels)
    write_beir(tmp_path / "data" / "train" / "nq", docs, queries, qrels)
    write_beir(tmp_path / "data" / "train" / "squad", docs, {q: t + " please" for q, t in queries.items()}, qrels)
    write_beir(tmp_path / "data" / "train" / "wikiqa", docs, {q: t + " now" for q, t in queries.items()}, qrels)
    write_beir(tmp_path / "data" / "msmarco-mini", docs, queries, qrels, split="test")
    write_beir(tmp_path / "data" / "wikiqa-dev", dict(list(docs.items())[:6]), queries, qrels[:6], split="test")
    return tmp_path / "data"


def test_pipeline_runs_every_stage_and_resumes(tmp_path, data, tiny_model_dir):
    cfg = PipelineConfig(
        out=str(tmp_path / "run"),
        data=str(data),
        model=str(tiny_model_dir),
        examples=2,
        eval_max_length=0,  # the tiny prompts are long
        sft=dict(
            prompts=PROMPTS,
            cloze=2,
            wordnet=0,
            eval_queries=0,
            batch_size=4,
            max_steps=2,
            save_every=1,
            reasoning_tokens=4,
            query_tokens=16,
            doc_tokens=24,
            bf16=False,
            show_progress=False,
        ),
        rl=dict(
            steps=1,
            queries_per_step=2,
            group=2,
            max_new_tokens=3,
            doc_max_length=64,
            bf16=False,
            show_progress_bar=False,
            env={"k": 4, "candidates": 4},
        ),
    )
    summary = run_pipeline(cfg)
    names = [(r["dataset"].split("[")[0], r["system"], r["reasoning"]) for r in summary["rows"]]
    systems = [("BM25", False), ("all-MiniLM-L6-v2", False), ("searchr3 zero-shot", False), ("searchr3 zero-shot", True)]
    trained = [(name, mode) for name in ("searchr3 SFT", "searchr3 SFT+RL") for mode in (False, True, "mix")]
    sets = ["msmarco-mini", "wikiqa-dev"]
    assert names == [(d, *s) for d in sets for s in systems] + [(d, *s) for d in sets for s in trained]
    assert {r["num_docs"] for r in summary["rows"] if r["dataset"].startswith("wikiqa-dev")} == {6}
    assert json.loads((tmp_path / "run" / "sft" / "config.json").read_text())["config"]["data"] == [
        str(data / "train" / "nq"),
        str(data / "train" / "squad"),
        str(data / "train" / "wikiqa"),
    ]
    out = tmp_path / "run"
    for f in ("results.md", "results.json", "ndcg.png", "examples.md", "sft/log.jsonl", "rl/reward.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert "| searchr3 SFT+RL | on |" in (out / "results.md").read_text()
    assert "what about cat mat" in (out / "examples.md").read_text()
    assert {e["model"] for e in summary["examples"]} == {"zero-shot", "SFT+RL"}
    # every stage row keeps its per-query scores (the summary only the means); the bootstrap script reads them
    final_rows = json.loads((out / "final" / "results.json").read_text())
    assert all(len(r["per_query"]) == r["num_queries"] for r in final_rows)
    assert not any("per_query" in r for r in summary["rows"])
    boot = tmp_path / "boot.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_bootstrap.py"
    res = subprocess.run(
        [sys.executable, str(script), "--results", str(out / "final" / "results.json"), "--reasoning", "mix", "--against", "off"]
        + ["--resamples", "200", "--out", str(boot)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    by_mode = {(r["dataset"], r["reasoning"]): r["ndcg@10"] for r in final_rows if r["system"] == "searchr3 SFT+RL"}
    compared = json.loads(boot.read_text())["rows"]
    assert [r["dataset"] for r in compared] == list(dict.fromkeys(d for d, _ in by_mode))
    for r in compared:
        assert r["mean_difference"] == pytest.approx(by_mode[r["dataset"], "mix"] - by_mode[r["dataset"], False], abs=1e-9)
    res = subprocess.run(
        [sys.executable, str(script), "--results", str(out / "results.json"), "--reasoning", "mix", "--against", "off"]
        + ["--out", str(boot)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "has no per-query scores" in res.stderr.splitlines()[-1]

    # A re-run skips finished stages; with the last two undone it redoes only those, the RL stage from
    # its checkpoint (no step is trained again), and finds the same numbers.
    done = {s: json.loads((out / s / "done.json").read_text()) for s in ("zero_shot", "sft", "rl", "final")}
    rl_log = (out / "rl" / "log.jsonl").read_text()
    mtimes = {s: (out / s / "done.json").stat().st_mtime_ns for s in ("zero_shot", "sft")}
    for stage in ("rl", "final"):
        (out / stage / "done.json").unlink()
    again = run_pipeline(cfg)
    assert {s: (out / s / "done.json").stat().st_mtime_ns for s in ("zero_shot", "sft")} == mtimes  # skipped
    assert json.loads((out / "sft" / "done.json").read_text()) == done["sft"]
    assert (out / "rl" / "log.jsonl").read_text() == rl_log  # resumed at its last step: nothing retrained
    assert json.loads((out / "rl" / "done.json").read_text())["model"] == done["rl"]["model"] == str(out / "rl" / "final")
    assert [r["ndcg@10"] for r in again["rows"]] == pytest.approx([r["ndcg@10"] for r in summary["rows"]], abs=1e-6)


def test_a_rerun_with_other_settings_is_refused(tmp_path, data, tiny_model_dir):
    from searchr3.pipeline import Pipeline
    from searchr3.runs import RunError

    cfg = PipelineConfig(out=str(tmp_path / "run"), data=str(data), model=str(tiny_model_dir))
    Pipeline(cfg).prepare()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["preset"] == "quick"
    Pipeline(cfg).prepare()  # the same settings: a resume
    with pytest.raises(RunError, match="different settings"):
        Pipeline(PipelineConfig(out=cfg.out, data=str(data), model=str(tiny_model_dir), preset="full")).prepare()
    with pytest.raises(RunError, match="different settings"):
        Pipeline(PipelineConfig(out=cfg.out, data=str(data), model=str(tiny_model_dir), sft={"max_steps": 3})).prepare()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match="not a searchr3 pipeline run folder"):
        Pipeline(PipelineConfig(out=str(tmp_path / "foreign"), data=str(data))).prepare()


def test_presets_choose_the_evaluation_corpus(data, tiny_model_dir):
    assert PipelineConfig(data=str(data)).eval_docs == 500  # quick: a sub-corpus
    assert PipelineConfig(data=str(data), preset="full").eval_docs == 0  # full: the whole corpus
    assert PipelineConfig(data=str(data), eval_docs=50).eval_docs == 50
    assert PipelineConfig(data=str(data)).eval_queries == 40 and PipelineConfig(data=str(data), preset="full").eval_queries == 0
    assert (
        PipelineConfig(data=str(data)).eval_max_length == 256
        and PipelineConfig(data=str(data), preset="full").eval_max_length == 0
    )
    assert Pipeline(PipelineConfig(data=str(data)))._load(str(tiny_model_dir)).max_length == 256  # the models it evaluates
    # stage 2's folder: the preset's unless named
    assert PipelineConfig(data=str(data)).rl_data == str(data / "scifact-2k")
    assert PipelineConfig(data=str(data), preset="full").rl_data == str(data / "train" / "wikiqa")
    assert PipelineConfig(data=str(data), preset="full", rl_data=str(data / "scifact-2k")).rl_data == str(data / "scifact-2k")
    two = [data / "scifact-2k", data / "train" / "wikiqa"]  # several folders: one environment (GRPOConfig.data)
    assert PipelineConfig(data=str(data), rl_data=two).rl_data == [str(p) for p in two]
    assert PipelineConfig(data=str(data), rl_data=two[:1]).rl_data == str(two[0])
    with pytest.raises(ValueError, match="share a name"):  # refused before stage 1, not when stage 2 starts
        PipelineConfig(data=str(data), rl_data=[two[1], two[1]])
    with pytest.raises(FileNotFoundError, match="missing"):
        PipelineConfig(data=str(data), rl_data=[*two, data / "missing"])


def test_the_final_stage_evaluates_the_stage_1_model_only_when_asked(tmp_path, data, tiny_model_dir):
    assert PipelineConfig(data=str(data)).evaluate_sft and not PipelineConfig(data=str(data), preset="full").evaluate_sft
    from dataclasses import replace

    from searchr3 import SearchR3

    m = SearchR3.from_pretrained(str(tiny_model_dir))
    m.prompts = replace(m.prompts, max_reasoning_tokens=3)  # the untrained model reasons to the limit: keep it short
    model = str(m.save_pretrained(tmp_path / "model"))
    cfg = PipelineConfig(
        out=str(tmp_path / "run"), data=str(data), model=model, examples=1, eval_max_length=0, evaluate_sft=False
    )
    final = Pipeline(cfg).final(tmp_path / "final", model, model)
    assert [(r["dataset"].split("[")[0], r["system"], r["reasoning"]) for r in final["rows"]] == [
        (d, "searchr3 SFT+RL", mode) for d in ("msmarco-mini", "wikiqa-dev") for mode in (False, True, "mix")
    ]


def test_pipeline_config_errors(tmp_path, data):
    with pytest.raises(ValueError, match="unknown preset"):
        PipelineConfig(preset="huge", data=str(data))
    with pytest.raises(ValueError, match="eval_max_length"):
        PipelineConfig(data=str(data), eval_max_length=8)
    with pytest.raises(ValueError, match="eval_docs must be >= 0"):
        PipelineConfig(data=str(data), eval_docs=-1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PipelineConfig(data=str(tmp_path / "nowhere"))
