"""Query-side probe of the reasoning modes: which rollouts and which mix weight help a trained model.

The corpus is encoded once per development set (and cached, as ``searchr3 eval`` does); for each
rollout setting (greedy or sampled, how many samples, a minimum of written tokens before the model
may emit ``<|embed_token|>``) the reasoning embeddings are computed once, and the mix
``w * direct + (1 - w) * reasoning`` is scored for every ``w`` in the grid from those vectors (w = 1 is
reasoning off, w = 0 reasoning on) -- the same arithmetic as ``encode_query(reasoning="mix")``
(:func:`searchr3.model.mix_embeddings`). nDCG@10 per set, the spread across queries, emit rate,
tokens and seconds per query of each rollout setting.

``oracle-keywords`` is an upper bound, not a query mode: instead of generating, each query gets the
keyword trace stage 1 teaches (:func:`searchr3.traces.keyword_traces`) built from its own best-judged
passage -- the trace a perfect writer would produce. It separates "the embedding cannot use a trace"
from "the model cannot write the right one".

``oracle-predictable`` is the same upper bound restricted to what the model could learn to write: of the
judged passage's top-20 tf-idf terms (the query's own left out), the 6 the model itself finds most likely
after ``Key terms:`` (log-probability of the whole word, teacher-forced). If it keeps most of the oracle's
gain, a trace target of predictable answer terms is worth training; if not, the gain is in terms a 135M
model cannot know.

``prf-keywords`` and ``prf-vector`` judge nothing (pseudo-relevance feedback): the keyword trace of the
passage the direct embedding ranks first, or (Rocchio on the dense vectors) the mean embedding of the
direct embedding's top 3 passages. They ask whether the missing terms can come from the corpus instead of
the model's own knowledge, and whether a written trace adds anything to plain vector feedback.

    python benchmarks/mix_probe.py runs/sft-r/final --out benchmarks/results/mix_probe_sft_r.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> reasoning settings (as encode_query takes them)
SETTINGS = {
    "greedy": dict(samples=1),
    "greedy-rp1.3": dict(samples=1, repetition_penalty=1.3),
    "greedy-min16": dict(samples=1, min_new_tokens=16),
    "sample4-t0.7": dict(samples=4, temperature=0.7),
    "sample4-t0.7-min16": dict(samples=4, temperature=0.7, min_new_tokens=16),
    "oracle-keywords": dict(samples=1, oracle=True),
    "oracle-predictable": dict(samples=1, oracle="predictable"),
    "prf-keywords": dict(samples=1, prf="keywords"),
    "prf-vector": dict(samples=1, prf="vector"),
}


def oracle_rollouts(m, ds, qids, texts, batch_size, best=None, predictable=False):
    """Each query embedded after the keyword trace of one passage: its best-judged one (the upper bound
    above), or the one named in ``best`` (pseudo-relevance feedback); ``predictable``: the trace of the
    terms the model finds likely (:func:`searchr3.traces.predictable_keyword_traces`)."""
    from searchr3.data.beir import doc_text
    from searchr3.model import Rollouts
    from searchr3.traces import keyword_traces, predictable_keyword_traces

    best = best or [max(ds.qrels[q], key=lambda d: (ds.qrels[q][d], d)) for q in qids]
    pairs = [(t, doc_text(ds.corpus[d])) for t, d in zip(texts, best)]
    heads = m.prompt_ids(texts, "query", reasoning=True)
    make = predictable_keyword_traces if predictable else keyword_traces
    traces = make(m, pairs, map(doc_text, ds.corpus.values()), m.prompts.max_reasoning_tokens)
    comps = [traces[t] for t in texts]
    emb = m.encode_after_trace(texts, comps, batch_size=batch_size, convert_to_tensor=True)
    return Rollouts(emb, [m.tokenizer.decode(c[:-1]) for c in comps], heads, comps, [True] * len(texts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", action="append", default=None, help="BEIR folder (split test), repeatable")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {sorted(SETTINGS)}")
    ap.add_argument("--weights", default="0,0.2,0.4,0.5,0.6,0.7,0.8,0.9,1", help="mix weights of the direct embedding")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mix_probe.json")
    args = ap.parse_args()
    names = [s for s in args.settings.split(",") if s]
    if set(names) - set(SETTINGS):
        ap.error(f"unknown settings: {sorted(set(names) - set(SETTINGS))}")
    weights = [float(w) for w in args.weights.split(",")]

    import torch

    from benchmarks.devsets import dev_folders, judged_set
    from searchr3 import SearchR3
    from searchr3.evaluation import compute_metrics
    from searchr3.io import atomic_write_json
    from searchr3.model import Rollouts, mix_embeddings
    from searchr3.retrieval import dense_retrieve, exact_top_k

    m = SearchR3.from_pretrained(args.model)
    out: dict = {"model": args.model, "settings": {n: SETTINGS[n] for n in names}, "weights": weights, "sets": {}}
    for folder in dev_folders(args.data):
        name, ds, corpus, qids, texts = judged_set(m, folder, args.batch_size)
        t0 = time.perf_counter()
        direct = torch.from_numpy(m.encode_query(texts, batch_size=args.batch_size))
        direct_s = (time.perf_counter() - t0) / len(qids)

        def score(q: torch.Tensor) -> dict:
            run = dense_retrieve(q.numpy(), corpus.embeddings, corpus.doc_ids, qids, 100)
            r = compute_metrics(ds.qrels, run, per_query=True)
            return {"ndcg@10": r["ndcg@10"], "per_query": {k: v["ndcg@10"] for k, v in r["per_query"].items()}}

        base = score(direct)
        rows = {"off": {"ndcg@10": base["ndcg@10"], "seconds_per_query": direct_s}}
        print(f"{name}: off {base['ndcg@10']:.4f}", flush=True)
        for setting in names:
            gen = dict(SETTINGS[setting])
            samples = gen.pop("samples")
            if samples > 1:
                gen["do_sample"] = True
                gen["seed"] = 0
            t0 = time.perf_counter()
            prf = gen.pop("prf", None)
            oracle = gen.pop("oracle", False)
            if oracle:
                ro = oracle_rollouts(m, ds, qids, texts, args.batch_size, predictable=oracle == "predictable")
            elif prf:
                _, top = exact_top_k(direct.numpy(), corpus.embeddings, 3)  # corpus rows, best first
                if prf == "keywords":
                    ro = oracle_rollouts(m, ds, qids, texts, args.batch_size, best=[corpus.doc_ids[i] for i in top[:, 0]])
                else:
                    fb = torch.from_numpy(np.asarray(corpus.embeddings)[top].mean(1)).float()
                    ro = Rollouts(
                        torch.nn.functional.normalize(fb, dim=-1), [""] * len(qids), [], [[]] * len(qids), [True] * len(qids)
                    )
            else:
                ro = m.reason([t for t in texts for _ in range(samples)], batch_size=args.batch_size, **gen)
            seconds = (time.perf_counter() - t0) / len(qids)
            reasoned = ro.embeddings.view(len(qids), samples, -1).mean(1)
            mixes = {}
            for w in weights:
                q = mix_embeddings(direct, reasoned, w)  # ranks as encode_query(reasoning="mix") does
                s = score(q)
                diff = np.array([s["per_query"][k] - base["per_query"][k] for k in base["per_query"]])
                mixes[str(w)] = {
                    "ndcg@10": s["ndcg@10"],
                    "gain": float(diff.mean()),
                    "gain_stderr": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                    "queries_better": int((diff > 1e-9).sum()),
                    "queries_worse": int((diff < -1e-9).sum()),
                }
            rows[setting] = {
                "emit_rate": float(np.mean(ro.emitted)),
                "mean_new_tokens": float(np.mean([len(c) for c in ro.completion_ids])),
                "seconds_per_query": seconds + direct_s,
                "mix": mixes,
                "examples": ro.texts[: 6 * samples : samples],
            }
            best = max(mixes, key=lambda k: mixes[k]["ndcg@10"])
            print(
                f"{name}: {setting} emit {rows[setting]['emit_rate']:.2f} tokens {rows[setting]['mean_new_tokens']:.1f} "
                + " ".join(f"w{w}={v['ndcg@10']:.4f}" for w, v in mixes.items())
                + f" best w{best}",
                flush=True,
            )
        out["sets"][name] = {"queries": len(qids), "docs": len(ds.corpus), "rows": rows}
        atomic_write_json(args.out, out)
    print(
        json.dumps(
            {
                k: {
                    s: {w: round(v["ndcg@10"], 4) for w, v in r.get("mix", {}).items()} or round(r["ndcg@10"], 4)
                    for s, r in d["rows"].items()
                }
                for k, d in out["sets"].items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
