"""bf16 autocast vs fp32 on this CPU: encoding and reasoning speed, and how far the embeddings move.

    python benchmarks/bench_dtype.py --docs 160 --queries 40 --reasoning-queries 8 \
        --out benchmarks/results/dtype_<cpu>.json

One process, one model (the built-in SmolLM2 or --model), the two precisions alternated on the same
inputs (msmarco-mini's first documents and judged queries), each timed after one warm-up batch. Writes
the CPU's features as torch sees them (AVX-512 bf16, AMX), docs/s, queries/s and reasoning s/query
per precision, and the cosine between each text's bf16 and fp32 embeddings (min, mean).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    from searchr3 import SearchR3
    from searchr3.backbone import cpu_features
    from searchr3.data.beir import doc_text, load_beir
    from searchr3.io import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "msmarco-mini"))
    ap.add_argument("--docs", type=int, default=160)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--reasoning-queries", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    ds = load_beir(args.data, "test")
    docs = [doc_text(ds.corpus[d]) for d in list(ds.corpus)[: args.docs]]
    queries = [ds.queries[q] for q in ds.judged_query_ids()[: args.queries]]
    m = SearchR3.from_pretrained(args.model, bf16=True)
    result: dict = {
        "command": "python benchmarks/bench_dtype.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "torch_threads": torch.get_num_threads(),
        "docs": len(docs),
        "queries": len(queries),
        "reasoning_queries": args.reasoning_queries,
        "precisions": {},
    }
    emb = {}
    for bf16 in (True, False):
        m.bf16 = bf16
        m.encode_document(docs[: args.batch_size], batch_size=args.batch_size)  # warm-up
        d, d_s = timed(lambda: m.encode_document(docs, batch_size=args.batch_size))
        q, q_s = timed(lambda: m.encode_query(queries, batch_size=args.batch_size))
        r, r_s = timed(lambda: m.encode_query(queries[: args.reasoning_queries], reasoning=True, batch_size=args.batch_size))
        name = "bf16" if bf16 else "fp32"
        emb[name] = (np.asarray(d), np.asarray(q), np.asarray(r))
        result["precisions"][name] = {
            "docs_per_s": len(docs) / d_s,
            "queries_per_s": len(queries) / q_s,
            "reasoning_s_per_query": r_s / args.reasoning_queries,
        }
        print(name, result["precisions"][name], flush=True)
    for part, i in (("documents", 0), ("queries", 1), ("reasoning_queries", 2)):
        cos = np.sum(emb["bf16"][i] * emb["fp32"][i], axis=1)
        result[f"cosine_bf16_fp32_{part}"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    p = result["precisions"]
    result["fp32_speedup"] = {
        "documents": p["fp32"]["docs_per_s"] / p["bf16"]["docs_per_s"],
        "queries": p["fp32"]["queries_per_s"] / p["bf16"]["queries_per_s"],
        "reasoning": p["bf16"]["reasoning_s_per_query"] / p["fp32"]["reasoning_s_per_query"],
    }
    atomic_write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
