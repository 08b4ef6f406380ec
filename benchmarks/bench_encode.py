"""Encoding throughput: `encode_document` against a plain `model(**batch)` forward of the same backbone.

Same texts, same prompts (token ids), same batch size. Variants:
  plain_fp32      : model(**batch) in input order, fp32 (what a user gets by calling the HF model)
  plain_bf16      : the same under bf16 autocast
  encode_document : searchr3's path (length-sorted batches, the model's default precision: bf16 autocast where
                    the CPU computes bf16 natively, else fp32; only the final hidden state, the prompt's shared
                    head run once per call)
  encode_document_no_prefix : the same with the shared head run in every row (as before the prefix pass)

Usage: python benchmarks/bench_encode.py [--n 256] [--batch-size 16] [--data ../shared/data/msmarco-mini]
Writes benchmarks/results/encode_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from searchr3 import SearchR3
from searchr3.backbone import cpu_features
from searchr3.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def load_texts(data: Path, n: int) -> list[str]:
    texts = []
    with open(data / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            texts.append(((doc.get("title") or "") + " " + doc["text"]).strip())
            if len(texts) == n:
                break
    return texts


def plain_forward(m: SearchR3, ids: list[list[int]], batch_size: int, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(ids), batch_size):
            batch = m.collate(ids[s : s + batch_size])
            m.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "msmarco-mini")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "encode_throughput.json")
    args = ap.parse_args()

    m = SearchR3.from_pretrained(args.model)
    texts = load_texts(args.data, args.n)
    ids = m.prompt_ids(texts, "document")
    m.encode_document(texts[:32], batch_size=args.batch_size)  # warm-up
    results = {}
    for name, fn in [
        ("plain_fp32", lambda: plain_forward(m, ids, args.batch_size, bf16=False)),
        ("plain_bf16", lambda: plain_forward(m, ids, args.batch_size, bf16=True)),
        ("encode_document", lambda: _timed(lambda: m.encode_document(texts, batch_size=args.batch_size))),
        ("encode_document_no_prefix", lambda: _without_prefix_pass(lambda: m.encode_document(texts, batch_size=args.batch_size))),
    ]:
        secs = fn()
        results[name] = {"seconds": round(secs, 2), "docs_per_s": round(len(texts) / secs, 2)}
        print(f"{name:26s} {results[name]['docs_per_s']:7.2f} docs/s  ({secs:.1f} s)")
    out = {
        "model": args.model or "smollm2 (built-in)",
        "n_docs": len(texts),
        "batch_size": args.batch_size,
        "mean_prompt_tokens": round(sum(map(len, ids)) / len(ids), 1),
        "max_length": m.max_length,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_features": cpu_features(),
        "encode_document_precision": "bf16" if m.bf16 else "fp32",
        "results": results,
        "speedup_vs_plain_fp32": round(results["plain_fp32"]["seconds"] / results["encode_document"]["seconds"], 2),
    }
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


def _without_prefix_pass(fn) -> float:
    import searchr3.model as model_module

    saved = model_module.MIN_SHARED_PREFIX
    model_module.MIN_SHARED_PREFIX = 10**9
    try:
        return _timed(fn)
    finally:
        model_module.MIN_SHARED_PREFIX = saved


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
