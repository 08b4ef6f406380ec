"""nDCG@10 per embedding dimension (Matryoshka): what `/v1/embeddings` serves for `dimensions=d`.

For each BEIR folder (split test): the model's document and direct query embeddings (documents from the
shared corpus-embedding cache when this model encoded the corpus before), then exact search with the
leading d dimensions of both, re-normalised (`searchr3.service.shorten`), for each d. If the model comes
from a `searchr3 train sft` run folder, the dimensions it was trained on (`matryoshka_dims`) are recorded.

    python benchmarks/bench_dims.py --model runs/sft/final --data ../shared/data/msmarco-mini \
        --data ../shared/data/wikiqa-dev [--dims 32,64,128,256,576] [--out FILE]

Writes benchmarks/results/matryoshka_dims.json (one row per dataset and dimension).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

from searchr3 import SearchR3
from searchr3.data.beir import load_beir
from searchr3.evaluation import compute_metrics, default_corpus_cache, encode_corpus
from searchr3.io import atomic_write_json
from searchr3.service import shorten

ROOT = Path(__file__).resolve().parents[1]


def trained_dims(model: str | None) -> list[int] | None:
    """The ``matryoshka_dims`` of the SFT run that produced ``model`` (``RUN/final``), if it is one."""
    if model is None:
        return None
    cfg = Path(model).resolve().parent / "config.json"
    try:
        return list(json.loads(cfg.read_text())["config"]["matryoshka_dims"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, action="append", help="BEIR folder (repeatable)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default=None, help="model folder (default: built-in SmolLM2)")
    ap.add_argument("--dims", default="32,64,128,256,384,576")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "matryoshka_dims.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.devsets import dev_folders

    folders = dev_folders(args.data)

    model = SearchR3.from_pretrained(args.model)
    rows = []
    for folder in folders:
        ds = load_beir(folder, args.split)
        corpus = encode_corpus(model, ds.corpus, batch_size=16, show_progress_bar=True, cache_dir=default_corpus_cache())
        qids = ds.judged_query_ids()
        q = model.encode_query([ds.queries[i] for i in qids], batch_size=16)
        for d in [int(x) for x in args.dims.split(",") if int(x) <= q.shape[1]]:
            sims = shorten(q, d) @ shorten(corpus.embeddings, d).T
            top = np.argsort(-sims, axis=1)[:, :100]
            run = {qid: {corpus.doc_ids[j]: float(sims[i, j]) for j in top[i]} for i, qid in enumerate(qids)}
            m = compute_metrics(ds.qrels, run)
            rows.append(
                {
                    "dataset": ds.name,
                    "num_docs": len(corpus.doc_ids),
                    "num_queries": len(qids),
                    "dimensions": d,
                    "bytes_per_doc_float32": 4 * d,
                    **{k: round(v, 4) for k, v in m.items() if k != "num_queries"},
                }
            )
            print(rows[-1])
    result = {
        "benchmark": "nDCG@10 per leading embedding dimension (re-normalised), direct queries, exact search",
        "command": "python benchmarks/bench_dims.py"
        + (f" --model {args.model}" if args.model else "")
        + "".join(f" --data {f}" for f in folders)
        + f" --dims {args.dims}",
        "model": args.model or "smollm2 (built-in, zero-shot)",
        "trained_matryoshka_dims": trained_dims(args.model),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "rows": rows,
    }
    atomic_write_json(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
