"""Index storage and embedding dimensions: memory and retrieval quality in one run.

On a BEIR split (default: msmarco-mini, test), with one model's document and (direct) query embeddings:

* storage: float32 exact, float32 HNSW (hnswlib), int8 exact and int8 HNSW (FAISS scalar quantizer,
  `searchr3 index build --compact int8`), each built through searchr3.index.Index: bytes per document as
  held for search (vectors + graph, as serialised), MB per million documents, folder size on disk,
  nDCG@10 / Recall@100 / MRR@10, and search time per query;
* memory at scale: `--scale-docs` random unit vectors of the model's width in each storage, saved, then
  loaded by `Index.load` in a fresh process: its resident-memory growth per document, × 10⁶;
* dimensions: nDCG@10 with the leading d dimensions re-normalised (what `/v1/embeddings` serves for
  `dimensions=d`), exact search, float32.

Corpus embeddings come from the shared cache (`~/.cache/searchr3/corpus-embeddings`) when the model
has encoded this corpus before. Usage:

    python benchmarks/bench_index.py [--data ../shared/data/msmarco-mini] [--model PATH] [--max-docs 0]

Writes benchmarks/results/index_compact.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from searchr3 import SearchR3
from searchr3.data.beir import load_beir
from searchr3.evaluation import compute_metrics, default_corpus_cache, encode_corpus
from searchr3.index import Doc, Index
from searchr3.io import atomic_write_json
from searchr3.service import shorten

ROOT = Path(__file__).resolve().parents[1]


def metrics(index: Index, qids: list[str], q: np.ndarray, qrels) -> tuple[dict, float]:
    start = time.perf_counter()
    hits = index.search(q, k=100)
    per_query = (time.perf_counter() - start) / len(qids)
    run = {qid: {h.id: h.score for h in row} for qid, row in zip(qids, hits)}
    return compute_metrics(qrels, run), per_query


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.name != "docs.jsonl")


LOAD_RSS = """
import json, sys
from pathlib import Path
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
from searchr3.index import Index
import numpy as np, hnswlib, faiss  # imported before the first reading: only the index itself is counted
before = rss()
index = Index.load(sys.argv[1])
index.search(np.ones((1, index.meta.dim), np.float32), k=10)
print(json.dumps({"rss_growth": rss() - before}))
"""


def memory_at_scale(model, n: int, dim: int, work: Path) -> list[dict]:
    """Resident memory a fresh process gains loading each storage of ``n`` random unit vectors."""
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    docs = [Doc(str(i), "") for i in range(n)]
    rows = []
    for name, compact, threshold in [
        ("float32 exact", "none", 10**9),
        ("float32 HNSW (hnswlib)", "none", 0),
        ("int8 exact (FAISS SQ8)", "int8", 10**9),
        ("int8 HNSW (FAISS HNSWSQ8)", "int8", 0),
    ]:
        index = Index.new(model, None, exact_threshold=threshold, store_text=False, compact=compact)
        start = time.perf_counter()
        index.add(docs, vecs)
        build_s = time.perf_counter() - start
        path = work / f"scale-{compact}-{threshold}"
        index.save(path)
        out = subprocess.run([sys.executable, "-c", LOAD_RSS, str(path)], capture_output=True, text=True, check=True)
        growth = json.loads(out.stdout.strip().splitlines()[-1])["rss_growth"]
        rows.append(
            {
                "storage": name,
                "documents": n,
                "build_s": round(build_s, 1),
                "load_rss_bytes_per_doc": round(growth / n, 1),
                "load_rss_mib_per_million_docs": round(growth / n * 1e6 / 2**20),
                "serialised_bytes_per_doc": round(index.memory_bytes() / n, 1),
            }
        )
        print(rows[-1])
        shutil.rmtree(path)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "msmarco-mini")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default=None, help="model folder (default: built-in SmolLM2)")
    ap.add_argument("--max-docs", type=int, default=0)
    ap.add_argument("--dims", default="32,64,128,192,256,384,576")
    ap.add_argument("--scale-docs", type=int, default=50_000, help="random vectors for the memory-at-scale rows (0: skip)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "index_compact.json")
    args = ap.parse_args()

    ds = load_beir(args.data, args.split).subset(args.max_docs)
    model = SearchR3.from_pretrained(args.model)
    corpus = encode_corpus(model, ds.corpus, batch_size=16, show_progress_bar=True, cache_dir=default_corpus_cache())
    qids = ds.judged_query_ids()
    q = model.encode_query([ds.queries[i] for i in qids], batch_size=16)
    docs = [Doc(d, "") for d in corpus.doc_ids]
    n, dim = len(docs), corpus.embeddings.shape[1]
    print(
        f"{ds.name}: {n} documents, {len(qids)} judged queries, dim {dim}; corpus encoded in {corpus.seconds:.0f} s (or cached)"
    )

    storage = []
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        for name, compact, threshold in [
            ("float32 exact", "none", 10**9),
            ("float32 HNSW (hnswlib)", "none", 0),
            ("int8 exact (FAISS SQ8)", "int8", 10**9),
            ("int8 HNSW (FAISS HNSWSQ8)", "int8", 0),
        ]:
            index = Index.new(model, args.model, exact_threshold=threshold, store_text=False, compact=compact)
            start = time.perf_counter()
            index.add(docs, corpus.embeddings)
            build_s = time.perf_counter() - start
            path = work / name.split()[0] / str(threshold)
            index.save(path)
            loaded = Index.load(path)
            m, per_query = metrics(loaded, qids, q, ds.qrels)
            per_doc = loaded.memory_bytes() / n
            row = {
                "storage": name,
                "compact": compact,
                "backend": loaded.meta.backend,
                "bytes_per_doc": round(per_doc, 1),
                "mib_per_million_docs": round(per_doc * 1e6 / 2**20),
                "disk_bytes": folder_bytes(path),
                "build_s": round(build_s, 3),
                "search_ms_per_query": round(per_query * 1000, 3),
                **{k: round(v, 4) for k, v in m.items() if k != "num_queries"},
            }
            storage.append(row)
            print(row)
        scale = memory_at_scale(model, args.scale_docs, dim, work) if args.scale_docs > 0 else []
    finally:
        shutil.rmtree(work, ignore_errors=True)

    dims = []
    for d in [int(x) for x in args.dims.split(",") if int(x) <= dim]:
        sims = shorten(q, d) @ shorten(corpus.embeddings, d).T
        top = np.argsort(-sims, axis=1)[:, :100]
        run = {qid: {corpus.doc_ids[j]: float(sims[i, j]) for j in top[i]} for i, qid in enumerate(qids)}
        m = compute_metrics(ds.qrels, run)
        dims.append(
            {"dimensions": d, "bytes_per_doc_float32": 4 * d, **{k: round(v, 4) for k, v in m.items() if k != "num_queries"}}
        )
        print(dims[-1])

    result = {
        "benchmark": "index storage (float32 vs int8, exact vs HNSW) and embedding dimensions",
        "command": "python benchmarks/bench_index.py"
        + (f" --model {args.model}" if args.model else "")
        + (f" --max-docs {args.max_docs}" if args.max_docs else "")
        + (f" --scale-docs {args.scale_docs}" if args.scale_docs != 50_000 else ""),
        "dataset": ds.name,
        "split": args.split,
        "documents": n,
        "judged_queries": len(qids),
        "dim": dim,
        "model": args.model or "smollm2 (built-in, zero-shot)",
        "queries": "direct (reasoning off)",
        "note": "bytes_per_doc: vectors + graph as serialised (what search holds in memory besides texts); dimensions: leading d dims re-normalised, exact search; the model was not trained for shortened embeddings (no Matryoshka loss)",
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "storage": storage,
        "memory_at_scale": scale,
        "dimensions": dims,
    }
    atomic_write_json(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
