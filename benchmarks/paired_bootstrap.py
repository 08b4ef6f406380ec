"""How sure is a difference in nDCG@10? A searchr3 model against BM25 (or one of its query modes against another),
query by query, with a paired bootstrap.

    python benchmarks/paired_bootstrap.py runs/full15/rl/final \
        --data ../shared/data/msmarco-mini --data ../shared/data/wikiqa-dev \
        --out benchmarks/results/bootstrap_full15.json
    python benchmarks/paired_bootstrap.py runs/full16/rl/final --reasoning mix --against off ...

For each set: both systems' nDCG@10 on every judged query, the mean difference (model - the other), its 95 %
percentile interval over 10,000 resamples of the queries (scipy's bootstrap), the share of resamples in which
the model is ahead, and the queries each system wins. Corpus embeddings come from the shared cache, so a model
the pipeline evaluated does not encode its corpora again. (Files written before ``--against`` name the other
system ``bm25`` in their keys.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

from searchr3 import SearchR3
from searchr3.data.beir import load_beir
from searchr3.evaluation import encode_corpus, encode_queries, evaluate_bm25, evaluate_encoder
from searchr3.io import atomic_write_json
from searchr3.model import QUERY_MODES
from searchr3.retrieval import default_corpus_cache


def compare(model: SearchR3, folder: str, reasoning: str, against: str, resamples: int, seed: int) -> dict:
    ds = load_beir(folder, "test")
    corpus = encode_corpus(model, ds.corpus, batch_size=16, show_progress_bar=True, cache_dir=default_corpus_cache())
    modes = [reasoning] + ([] if against == "bm25" else [against])
    # both of the model's modes in one pass (the library shares the direct pass and the rollouts between them)
    encoded = encode_queries(model, [ds.queries[q] for q in ds.judged_query_ids()], modes, batch_size=16)

    def per_query(mode: str) -> dict:
        return evaluate_encoder(model, ds, reasoning=mode, corpus_embeddings=corpus, per_query=True, queries=encoded[mode])[
            "per_query"
        ]

    ours = per_query(reasoning)
    other = evaluate_bm25(ds, per_query=True)["per_query"] if against == "bm25" else per_query(against)
    qids = sorted(ours)
    a = np.array([ours[q]["ndcg@10"] for q in qids])
    b = np.array([other[q]["ndcg@10"] for q in qids])
    diff = a - b
    res = bootstrap((diff,), np.mean, n_resamples=resamples, method="percentile", random_state=np.random.default_rng(seed))
    means = res.bootstrap_distribution  # the resampled mean differences
    return {
        "dataset": Path(folder).name,
        "num_docs": len(ds.corpus),
        "num_queries": len(qids),
        "model_ndcg@10": float(a.mean()),
        "against_ndcg@10": float(b.mean()),
        "mean_difference": float(diff.mean()),
        "ci95": [float(res.confidence_interval.low), float(res.confidence_interval.high)],
        "share_of_resamples_model_ahead": float((means > 0).mean()),
        "queries_model_wins": int((diff > 1e-9).sum()),
        "queries_against_wins": int((diff < -1e-9).sum()),
        "queries_tied": int((np.abs(diff) <= 1e-9).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a searchr3 model folder")
    ap.add_argument("--data", action="append", required=True, help="BEIR folder (split test); repeatable")
    ap.add_argument("--reasoning", default="off", choices=QUERY_MODES)
    ap.add_argument(
        "--against", default="bm25", choices=["bm25", *QUERY_MODES], help="BM25, or another query mode of the same model"
    )
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    model = SearchR3.from_pretrained(args.model)
    if args.against == args.reasoning:
        ap.error("--against names the same query mode as --reasoning")
    rows = [compare(model, d, args.reasoning, args.against, args.resamples, args.seed) for d in args.data]
    atomic_write_json(
        args.out,
        {"model": args.model, "reasoning": args.reasoning, "against": args.against, "resamples": args.resamples, "rows": rows},
    )
    for r in rows:
        print(
            f"{r['dataset']}: model {r['model_ndcg@10']:.4f} vs {args.against} {r['against_ndcg@10']:.4f}, difference {r['mean_difference']:+.4f} "
            f"(95 % CI {r['ci95'][0]:+.4f} .. {r['ci95'][1]:+.4f}; model ahead in {r['share_of_resamples_model_ahead']:.1%} of resamples; "
            f"wins {r['queries_model_wins']} / {r['queries_against_wins']}, ties {r['queries_tied']})"
        )


if __name__ == "__main__":
    main()
