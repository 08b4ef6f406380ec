"""How sure is a difference in nDCG@10? A searchr3 model against BM25 (or one of its query modes against another),
query by query, with a paired bootstrap.

    python benchmarks/paired_bootstrap.py runs/full15/rl/final \
        --data ../shared/data/msmarco-mini --data ../shared/data/wikiqa-dev \
        --out benchmarks/results/bootstrap_full15.json
    python benchmarks/paired_bootstrap.py runs/full16/rl/final --reasoning mix --against off ...
    python benchmarks/paired_bootstrap.py --pool seed0.json seed1.json --out pooled.json   # one setting, several seeds
    python benchmarks/paired_bootstrap.py --results runs/full30/final/results.json --reasoning mix --against off ...

For each set: both systems' nDCG@10 on every judged query, the mean difference (model - the other), its 95 %
percentile interval over 10,000 resamples of the queries (scipy's bootstrap), the share of resamples in which
the model is ahead, the queries each system wins, and both systems' nDCG@10 on every query (``per_query``:
query id -> [model, other]; files written before session 24 lack it). Corpus embeddings come from the shared cache, so a model
the pipeline evaluated does not encode its corpora again. ``--results`` reads both systems' per-query scores from evaluation rows instead
(a pipeline stage's ``results.json``, written since session 25; BM25 rows are in ``zero_shot/``), so nothing is encoded. (Files written before ``--against`` name the other
system ``bm25`` in their keys.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

from searchr3 import SearchR3
from searchr3.data.beir import load_beir
from searchr3.evaluation import encode_corpus, encode_queries, evaluate_bm25, evaluate_encoder, mode_label
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
    return paired(Path(folder).name, len(ds.corpus), ours, other, resamples, seed)


def paired(dataset: str, num_docs: int, ours: dict, other: dict, resamples: int, seed: int) -> dict:
    """One set's row: the bootstrap of two systems' per-query scores ({qid: {metric: value}}, the same queries)."""
    if set(ours) != set(other):
        raise ValueError(f"the two systems are judged on different queries of {dataset}")
    qids = sorted(ours)
    a, b = [ours[q]["ndcg@10"] for q in qids], [other[q]["ndcg@10"] for q in qids]
    return {"dataset": dataset, "num_docs": num_docs} | summarize(qids, a, b, resamples, seed)


def summarize(qids: list[str], model: list[float], other: list[float], resamples: int, seed: int) -> dict:
    """The paired bootstrap of per-query nDCG@10 (model, other) over the queries."""
    a, b = np.asarray(model, dtype=float), np.asarray(other, dtype=float)
    diff = a - b
    res = bootstrap((diff,), np.mean, n_resamples=resamples, method="percentile", random_state=np.random.default_rng(seed))
    means = res.bootstrap_distribution  # the resampled mean differences
    return {
        "num_queries": len(qids),
        "model_ndcg@10": float(a.mean()),
        "against_ndcg@10": float(b.mean()),
        "mean_difference": float(diff.mean()),
        "ci95": [float(res.confidence_interval.low), float(res.confidence_interval.high)],
        "share_of_resamples_model_ahead": float((means > 0).mean()),
        "queries_model_wins": int((diff > 1e-9).sum()),
        "queries_against_wins": int((diff < -1e-9).sum()),
        "queries_tied": int((np.abs(diff) <= 1e-9).sum()),
        # both systems' nDCG@10 per query, so runs of several seeds can be pooled query by query later
        "per_query": {q: [float(x), float(y)] for q, x, y in zip(qids, a, b)},
    }


def from_results(files: list[Path], system: str, reasoning: str, against: str, resamples: int, seed: int) -> list[dict]:
    """The comparison of :func:`compare`, from evaluation rows that hold per-query scores: ``system`` in mode
    ``reasoning`` against the same system in mode ``against`` (or the BM25 row), on every set that has both."""
    loaded = [json.loads(f.read_text()) for f in files]
    rows = [r for d in loaded for r in (d["rows"] if isinstance(d, dict) else d)]  # a list of rows, or a summary's
    other_system, other_mode = ("BM25", "off") if against == "bm25" else (system, against)
    out = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        ours, other = _row(rows, name, system, reasoning), _row(rows, name, other_system, other_mode)
        if ours is not None and other is not None:  # a set without both rows is not compared
            out.append(paired(name, ours["num_docs"], ours["per_query"], other["per_query"], resamples, seed))
    if not out:
        raise ValueError(f"no set has rows of {system!r} in modes {reasoning} and {against}")
    return out


def _row(rows: list[dict], dataset: str, system: str, mode: str) -> dict | None:
    """The one row of ``system`` in query mode ``mode`` on ``dataset`` (None if there is none)."""
    hits = [r for r in rows if r["dataset"] == dataset and r["system"] == system and mode_label(r["reasoning"]) == mode]
    if len(hits) > 1:
        raise ValueError(f"{len(hits)} rows of {system!r} ({mode}) on {dataset}")
    if hits and "per_query" not in hits[0]:
        raise ValueError(f"the row of {system!r} ({mode}) on {dataset} has no per-query scores")
    return hits[0] if hits else None


def pool(files: list[Path], resamples: int, seed: int) -> tuple[dict, list[dict]]:
    """Several runs' comparisons (e.g. one setting's seeds) as one: per query, each system's nDCG@10 averaged
    over the runs, then the same bootstrap over the queries -- the seed-averaged difference and its interval."""
    loaded = [json.loads(f.read_text()) for f in files]
    for f, d in zip(files, loaded):
        if any("per_query" not in r for r in d["rows"]):
            raise ValueError(f"{f} has no per-query scores (written before session 24); run it again")
    kinds = {(d["reasoning"], d["against"]) for d in loaded}
    if len(kinds) != 1:
        raise ValueError(f"the files compare different things: {sorted(kinds)}")
    rows = []
    for name in [r["dataset"] for r in loaded[0]["rows"]]:
        runs = [next((r for r in d["rows"] if r["dataset"] == name), None) for d in loaded]
        if any(r is None for r in runs):
            continue  # a set not in every file is not pooled
        qids = sorted(set.intersection(*(set(r["per_query"]) for r in runs)))
        if any(len(r["per_query"]) != len(qids) for r in runs):
            raise ValueError(f"the files judge different queries of {name}")
        a = [np.mean([r["per_query"][q][0] for r in runs]) for q in qids]
        b = [np.mean([r["per_query"][q][1] for r in runs]) for q in qids]
        rows.append(
            {"dataset": name, "num_docs": runs[0]["num_docs"], "runs": len(runs)} | summarize(qids, a, b, resamples, seed)
        )
    reasoning, against = kinds.pop()
    return {"pooled": [str(f) for f in files], "reasoning": reasoning, "against": against, "resamples": resamples}, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="a searchr3 model folder")
    ap.add_argument("--data", action="append", help="BEIR folder (split test); repeatable")
    ap.add_argument(
        "--pool",
        type=Path,
        nargs="+",
        help="instead of a model: files this script wrote (one setting's seeds), pooled query by query",
    )
    ap.add_argument(
        "--results",
        type=Path,
        nargs="+",
        help="instead of a model: evaluation rows with per-query scores (a pipeline stage's results.json)",
    )
    ap.add_argument("--system", default="searchr3 SFT+RL", help="--results: the system whose two rows are compared")
    ap.add_argument("--reasoning", default="off", choices=QUERY_MODES)
    ap.add_argument(
        "--against", default="bm25", choices=["bm25", *QUERY_MODES], help="BM25, or another query mode of the same model"
    )
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.against == args.reasoning:
        ap.error("--against names the same query mode as --reasoning")
    if args.pool and args.results:
        ap.error("--pool and --results are two different inputs; give one")
    if args.results:
        if args.model or args.data:
            ap.error("--results takes files, not a model or --data")
        try:
            rows = from_results(args.results, args.system, args.reasoning, args.against, args.resamples, args.seed)
        except (OSError, ValueError, KeyError, TypeError) as e:  # a missing, corrupt or foreign file
            ap.error(str(e))
        head = {"results": [str(f) for f in args.results], "system": args.system, "reasoning": args.reasoning}
        head |= {"against": args.against, "resamples": args.resamples}
    elif args.pool:
        if args.model or args.data:
            ap.error("--pool takes files, not a model or --data")
        try:
            head, rows = pool(args.pool, args.resamples, args.seed)
        except (OSError, ValueError, KeyError) as e:  # a missing, corrupt or foreign file
            ap.error(str(e))
    else:
        if not args.model or not args.data:
            ap.error("a model and at least one --data are needed (or --pool FILE ... or --results FILE ...)")
        model = SearchR3.from_pretrained(args.model)
        rows = [compare(model, d, args.reasoning, args.against, args.resamples, args.seed) for d in args.data]
        head = {"model": args.model, "reasoning": args.reasoning, "against": args.against, "resamples": args.resamples}
    atomic_write_json(args.out, head | {"rows": rows})
    for r in rows:
        print(
            f"{r['dataset']}: model {r['model_ndcg@10']:.4f} vs {head['against']} {r['against_ndcg@10']:.4f}, difference {r['mean_difference']:+.4f} "
            f"(95 % CI {r['ci95'][0]:+.4f} .. {r['ci95'][1]:+.4f}; model ahead in {r['share_of_resamples_model_ahead']:.1%} of resamples; "
            f"wins {r['queries_model_wins']} / {r['queries_against_wins']}, ties {r['queries_tied']})"
        )


if __name__ == "__main__":
    main()
