"""The quick preset's stages on a tiny random model and a 40-document corpus, for comparing code versions.

    PYTHONPATH=<old checkout> SEARCHR3_CACHE=/tmp/c1 python benchmarks/quick_preset_tiny.py /tmp/old /tmp/in > old.json
    PYTHONPATH=.              SEARCHR3_CACHE=/tmp/c2 python benchmarks/quick_preset_tiny.py /tmp/new /tmp/in > new.json
    diff old.json new.json

Prints every evaluation row, the SFT loss and the RL reward, loss and encode count of every step. The
inputs (model, data) are built once into the second folder and shared; give each run its own cache, so
that no version reads the other's corpus embeddings.
"""

import json
import random
import sys
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.conftest: the tiny model and the BEIR writer
from tests.conftest import TINY_PROMPTS as PROMPTS, build_tiny_model, write_beir  # noqa: E402

import searchr3  # noqa: E402
from searchr3.pipeline import PipelineConfig, run_pipeline  # noqa: E402


def inputs(root: Path) -> Path:
    if not (root / "model").exists():
        build_tiny_model(root / "model")
        rng = random.Random(0)
        words = "cat mat paris france protein fold search engine heart blood rain cloud vector text capital city sky body".split()
        docs = {
            f"d{i}": "The " + " ".join(rng.choices(words, k=6)) + ". More about " + " ".join(rng.choices(words, k=5)) + "."
            for i in range(40)
        }
        queries = {f"q{i}": "what about " + docs[f"d{i}"][4:30] for i in range(20)}
        qrels = [(f"q{i}", f"d{i}", 1) for i in range(20)]
        write_beir(root / "data" / "scifact-2k", docs, queries, qrels)
        write_beir(root / "data" / "msmarco-mini", docs, queries, qrels, split="test")
    return root


def main(out: Path, root: Path) -> None:
    print("code:", searchr3.__file__, file=sys.stderr)
    inputs(root)
    cfg = PipelineConfig(
        out=str(out),
        data=str(root / "data"),
        model=str(root / "model"),
        preset="quick",
        sft=dict(prompts=PROMPTS, cloze=8, wordnet=8, eval_queries=0, show_progress=False),
        rl=dict(show_progress_bar=False),
    )
    summary = run_pipeline(cfg)
    rows = lambda name: [json.loads(r) for r in (out / name / "log.jsonl").read_text().splitlines()]  # noqa: E731
    result = {
        "rows": [{k: r[k] for k in ("system", "reasoning", "ndcg@10", "recall@100", "mrr@10")} for r in summary["rows"]],
        "sft": [(r.get("step"), r.get("loss")) for r in rows("sft")],
        "rl": [(r["step"], r["reward"], r["loss"], r["encoded"]) for r in rows("rl")],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
