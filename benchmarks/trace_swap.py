"""Did stage 2 change the trace or the embedding read after it? Each model's greedy traces, read by each model.

    python benchmarks/trace_swap.py runs/full15/rl/final runs/full16/rl/final \
        --out benchmarks/results/trace_swap_full15_full16.json

Model A writes its greedy analysis for every judged query (as ``encode_query(reasoning="on")`` does); model B
writes its own; each model then embeds both sets of traces (prompt + trace + ``<|embed_token|>``, the
rollout's own token ids), and every (writer, reader) pair is scored (nDCG@10, reasoning on, and the mix
at ``MIX_WEIGHT`` with the reader's direct embedding) against the reader's own corpus embeddings (shared cache).
If B reading A's traces scores like B reading its own, what changed between them is the reader, not the writer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_a")
    ap.add_argument("model_b")
    ap.add_argument("--data", action="append", default=None, help="BEIR folder (split test), repeatable")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from benchmarks.devsets import dev_folders
    from searchr3 import SearchR3
    from searchr3.data.beir import load_beir
    from searchr3.evaluation import compute_metrics, encode_corpus
    from searchr3.io import atomic_write_json
    from searchr3.model import MIX_WEIGHT, mix_embeddings
    from searchr3.retrieval import default_corpus_cache, dense_retrieve

    models = {"A": SearchR3.from_pretrained(args.model_a), "B": SearchR3.from_pretrained(args.model_b)}
    if models["A"].tokenizer.get_vocab() != models["B"].tokenizer.get_vocab():
        ap.error("the two models do not share a tokenizer: one cannot read the other's token ids")
    folders = dev_folders(args.data)
    out: dict = {"A": args.model_a, "B": args.model_b, "mix_weight": MIX_WEIGHT, "sets": {}}
    for folder in folders:
        ds = load_beir(folder, "test")
        qids = ds.judged_query_ids()
        texts = [ds.queries[q] for q in qids]
        traces = {w: m.reason(texts, batch_size=args.batch_size) for w, m in models.items()}
        rows = {}
        for reader, m in models.items():
            corpus = encode_corpus(
                m, ds.corpus, batch_size=args.batch_size, show_progress_bar=True, cache_dir=default_corpus_cache()
            )
            direct = torch.from_numpy(m.encode_query(texts, batch_size=args.batch_size))

            def ndcg(q: torch.Tensor) -> float:
                run = dense_retrieve(q.numpy(), corpus.embeddings, corpus.doc_ids, qids, 100)
                return compute_metrics(ds.qrels, run)["ndcg@10"]

            rows[f"{reader} reads none (off)"] = ndcg(direct)
            for writer, ro in traces.items():
                emb = m.encode_after_trace(texts, ro.completion_ids, batch_size=args.batch_size, convert_to_tensor=True)
                rows[f"{reader} reads {writer} (on)"] = ndcg(emb)
                rows[f"{reader} reads {writer} (mix)"] = ndcg(mix_embeddings(direct, emb, MIX_WEIGHT))
            print(Path(folder).name, {k: round(v, 4) for k, v in rows.items()}, flush=True)
        out["sets"][Path(folder).name] = {
            "queries": len(qids),
            "rows": rows,
            "examples": {w: ro.texts[:4] for w, ro in traces.items()},
        }
        atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
