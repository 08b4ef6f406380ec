"""Per-query probe: can a query-time signal tell when the reasoning trace will help?

For every judged query of each development set: nDCG@10 of reasoning off, on and the mix at each weight
(greedy reasoning, the default), and signals available at query time without judgments -- the trace's
mean and lowest token log-probability under the model that wrote it (its confidence), the cosine between
the direct and the reasoning embedding (how far the trace moves the query), the direct embedding's top-1
score and its margins over ranks 2 and 10 (how sure direct retrieval is), and the overlap of the two
top-10 lists. Reported per set: Spearman correlation of each signal with the mix's per-query gain over
reasoning off, and the gain of a gate that mixes only the half of the queries on one side of the
signal's median (the other half keeps the direct embedding), for both sides; and the bound of every gate, the
mix on exactly the queries where it helps (judged, so not a query mode).

A signal worth a query mode must point the same way on both sets; one that does on one set only is noise
from 43 queries or a property of that set.

    python benchmarks/gate_probe.py runs/full16/rl/final --out benchmarks/results/gate_probe_full16.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIGNALS = (
    "trace_logp_mean",
    "trace_logp_min",
    "cos_direct_reasoned",
    "direct_top1",
    "direct_margin2",
    "direct_margin10",
    "overlap10",
)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return float(r) if np.isfinite(r) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", action="append", default=None, help="BEIR folder (split test), repeatable")
    ap.add_argument("--weights", default="0,0.4,0.5,0.6,0.7,0.8,0.9", help="mix weights of the direct embedding")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gate_probe.json")
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]

    import torch

    from benchmarks.devsets import dev_folders, judged_set
    from searchr3 import SearchR3
    from searchr3.evaluation import compute_metrics
    from searchr3.grpo import sequence_logprobs
    from searchr3.io import atomic_write_json
    from searchr3.model import mix_embeddings
    from searchr3.retrieval import dense_retrieve, exact_top_k

    m = SearchR3.from_pretrained(args.model)
    out: dict = {"model": args.model, "weights": weights, "signals": list(SIGNALS), "sets": {}}
    for folder in dev_folders(args.data):
        name, ds, corpus, qids, texts = judged_set(m, folder, args.batch_size)
        direct = torch.from_numpy(m.encode_query(texts, batch_size=args.batch_size))
        ro = m.reason(texts, batch_size=args.batch_size)
        reasoned = ro.embeddings

        def ndcg(run: dict) -> np.ndarray:
            r = compute_metrics(ds.qrels, run, per_query=True)["per_query"]
            return np.array([r[k]["ndcg@10"] for k in qids])

        def retrieve(q: torch.Tensor) -> dict:
            return dense_retrieve(q.numpy(), corpus.embeddings, corpus.doc_ids, qids, 100)

        run_off, run_on = retrieve(direct), retrieve(reasoned)

        def rrf(w: float, k: int = 60) -> np.ndarray:
            """Reciprocal-rank fusion of the two top-100 lists, ``w`` on the direct one's."""
            run = {}
            for q in qids:
                fused: dict = {}
                for weight, lst in ((w, run_off[q]), (1 - w, run_on[q])):
                    for rank, d in enumerate(sorted(lst, key=lst.get, reverse=True)):
                        fused[d] = fused.get(d, 0.0) + weight / (k + rank + 1)
                run[q] = fused
            return ndcg(run)

        off = ndcg(run_off)
        rows = {"off": off, "on": ndcg(run_on)}
        for w in weights:
            rows[f"mix{w}"] = ndcg(retrieve(mix_embeddings(direct, reasoned, w)))
            rows[f"rrf{w}"] = rrf(w)

        # the trace's confidence: log-probabilities of the written tokens (the embedding token, emitted or
        # appended at the limit, excluded; an empty trace keeps the token's own)
        logp_mean, logp_min = [], []
        with torch.no_grad():
            for i in range(0, len(qids), args.batch_size):
                heads = ro.prompt_ids[i : i + args.batch_size]
                comps = ro.completion_ids[i : i + args.batch_size]
                lp, _, _ = sequence_logprobs(m, heads, comps)
                for j, c in enumerate(comps):
                    v = lp[j, : max(len(c) - 1, 1)].float().cpu().numpy()
                    logp_mean.append(float(v.mean()))
                    logp_min.append(float(v.min()))
        d_unit = torch.nn.functional.normalize(direct.float(), dim=-1)
        r_unit = torch.nn.functional.normalize(reasoned.float(), dim=-1)
        scores, top = exact_top_k(direct.numpy(), corpus.embeddings, 10)
        _, top_r = exact_top_k(reasoned.numpy(), corpus.embeddings, 10)
        sig = {
            "trace_logp_mean": np.array(logp_mean),
            "trace_logp_min": np.array(logp_min),
            "cos_direct_reasoned": (d_unit * r_unit).sum(-1).numpy(),
            "direct_top1": scores[:, 0],
            "direct_margin2": scores[:, 0] - scores[:, 1],
            "direct_margin10": scores[:, 0] - scores[:, 9],
            "overlap10": np.array([len(set(a) & set(b)) / 10 for a, b in zip(top.tolist(), top_r.tolist())]),
        }
        summary: dict = {"ndcg@10": {k: float(v.mean()) for k, v in rows.items()}, "signals": {}}
        for w in weights:
            gain = rows[f"mix{w}"] - off
            # the bound of any gate: the mix exactly where it helps, direct elsewhere
            summary.setdefault("gate_oracle", {})[str(w)] = float(np.maximum(gain, 0).mean())
            for s in SIGNALS:
                x = sig[s]
                hi = x > np.median(x)
                summary["signals"].setdefault(s, {})[str(w)] = {
                    "spearman_gain": spearman(x, gain),
                    "gate_high": float(np.where(hi, gain, 0).mean()),  # mix where the signal is above its median
                    "gate_low": float(np.where(~hi, gain, 0).mean()),
                }
        out["sets"][name] = {
            "queries": len(qids),
            "docs": len(ds.corpus),
            "summary": summary,
            "per_query": {
                "qid": qids,
                "text": texts,
                "trace": ro.texts,
                "emitted": [bool(e) for e in ro.emitted],
                **{k: v.tolist() for k, v in rows.items()},
                **{k: np.asarray(v, dtype=float).tolist() for k, v in sig.items()},
            },
        }
        atomic_write_json(args.out, out)
        print(name, {k: round(v, 4) for k, v in summary["ndcg@10"].items()}, flush=True)
        print("  perfect gate:", {w: round(v, 4) for w, v in summary["gate_oracle"].items()})
        for s in SIGNALS:
            v = summary["signals"][s]["0.6"]
            print(f"  {s:22s} rho {v['spearman_gain']:+.3f}  gate_high {v['gate_high']:+.4f}  gate_low {v['gate_low']:+.4f}")


if __name__ == "__main__":
    main()
