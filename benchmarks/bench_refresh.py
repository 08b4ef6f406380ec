"""Refresh policies of the RL environment compared over one real GRPO run.

The run itself trains with the ``full`` policy, so after every optimizer step its index *is* the
truth: the whole (sub-)corpus re-encoded with the current weights. Shadow environments with the
other policies start from the same initial index and see exactly the same rollouts; when one of
them re-encodes a document, it gets the truth's row for it (the same weights would produce the same
vector), so the shadows cost no extra encoding while their counts are exact. At every step each
policy's rewards and ranks are compared with exact retrieval over the truth.

    python benchmarks/bench_refresh.py --init runs/sft-tau0.02/final --docs 0 --max-length 96 --steps 6 --queries 2 --group 4 --max-new-tokens 32

(the run in ``results/``: the whole scifact-2k corpus, 2,101 documents, from the 12-step SFT checkpoint,
11 minutes on 2 idle cores). The full policy re-encodes the whole corpus every step, so the corpus size
is what makes this benchmark expensive; the local policy's work per step depends on queries x
candidates x neighbours, not on the corpus. Start from an SFT checkpoint: the base model's rewards
are almost all 0, which makes every policy's reward error look small.

Writes ``benchmarks/results/refresh.json``, ``refresh.jsonl`` (per step) and ``refresh.png``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from searchr3.env import EnvConfig, RetrievalEnv
from searchr3.grpo import GRPOConfig, GRPOTrainer
from searchr3.io import atomic_write_json, atomic_write_text
from searchr3.plots import plot_curves

HERE = Path(__file__).resolve().parent
POLICIES = {
    "none": dict(refresh="none"),
    "local": dict(refresh="local", neighbours=2),
    "local-stale-positives": dict(refresh="local", neighbours=2, fresh_positives=False),
    "local+age4": dict(refresh="local", neighbours=2, max_age=4),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "scifact-2k"))
    ap.add_argument("--init", default=None, help="model to start from (default: built-in SmolLM2)")
    ap.add_argument("--docs", type=int, default=1000, help="corpus subset: first N documents + every judged one")
    ap.add_argument("--max-length", type=int, default=96, help="document length in tokens")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--queries", type=int, default=2, help="queries per step")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--work", default="/tmp/searchr3-bench-refresh", help="scratch run folder")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()

    env_cfg = EnvConfig(refresh="full")
    cfg = GRPOConfig(out=args.work, init=args.init, data=args.data, steps=args.steps, queries_per_step=args.queries,
                     group=args.group, max_new_tokens=args.max_new_tokens, lr=args.lr, doc_max_length=args.max_length,
                     corpus_limit=args.docs, save_every=10**9, env=env_cfg)
    shutil.rmtree(args.work, ignore_errors=True)  # a scratch run folder: a run folder is never reused without --resume
    trainer = GRPOTrainer(cfg)
    truth_env = trainer.env
    n = truth_env.size
    shadows = {name: RetrievalEnv(truth_env.doc_ids, lambda pos: truth_env.emb[pos], replace(env_cfg, **kw),
                                  embeddings=truth_env.emb.copy(), versions=truth_env.versions)
               for name, kw in POLICIES.items()}
    rows: list[dict] = []
    true_step = truth_env.step

    def observed_step(queries, q_emb, positives, emitted=None):
        """The trainer's env.step, plus the same rollouts scored by every shadow against the truth."""
        res = true_step(queries, q_emb, positives, emitted)
        truth = truth_env.emb.copy()  # full policy: the index holds the current weights' encoding
        row = {"step": len(rows) + 1, **{f"{k}_full": v for k, v in truth_env.drift(q_emb, res, truth).items()}}
        for name, env in shadows.items():
            r = env.step(queries, q_emb, positives, emitted)
            row.update({f"{k}_{name}": v for k, v in env.drift(q_emb, r, truth).items()})
        rows.append(row)
        return res

    truth_env.step = observed_step
    log = Path(args.out) / "refresh.jsonl"
    start = time.perf_counter()
    while trainer.step < cfg.steps:
        out = trainer.train_step()
        row = rows[-1]
        row.update(encoded_full=out["encoded"], reward=out["reward"], seconds=out["seconds"])
        for name, env in shadows.items():
            stats = env.refresh()
            env.check_consistency()
            row.update({f"encoded_{name}": stats.encoded, f"mean_age_{name}": stats.mean_age})
        print(json.dumps(row))
        atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in rows))
    seconds = time.perf_counter() - start

    summary = {}
    for name in ["full", *POLICIES]:
        enc = [r[f"encoded_{name}"] for r in rows]
        summary[name] = {
            "encoded_total": int(sum(enc)), "encoded_per_step": float(np.mean(enc)),
            "share_per_step": float(np.mean(enc) / n),
            "encoding_saving_vs_full": float(n * len(rows) / max(1, sum(enc))),
            "mean_abs_reward_error": float(np.mean([r[f"reward_error_{name}"] for r in rows])),
            "max_step_reward_error": float(np.max([r[f"reward_error_{name}"] for r in rows])),
            "mean_abs_rank_error": float(np.mean([r[f"rank_error_{name}"] for r in rows])),
            f"recall@{env_cfg.k}": float(np.mean([r[f"recall@{env_cfg.k}_{name}"] for r in rows])),
        }
    result = {
        "setup": {"corpus_docs": n, "doc_max_length": args.max_length, "steps": args.steps,
                  "queries_per_step": args.queries, "group": args.group, "max_new_tokens": args.max_new_tokens,
                  "lr": args.lr, "init": args.init or "built-in SmolLM2-135M-Instruct", "env": asdict(env_cfg),
                  "policies": POLICIES, "seconds": seconds},
        "policies": summary,
        "target": {"local_saving_at_least": 10, "local_reward_error_below": 0.02,
                   "met": summary["local"]["encoding_saving_vs_full"] >= 10
                   and summary["local"]["mean_abs_reward_error"] < 0.02},
    }
    atomic_write_json(Path(args.out) / "refresh.json", result)
    keys = [f"{m}_{p}" for m in ("encoded", "reward_error", "rank_error") for p in ("full", *POLICIES)]
    plot_curves(log, Path(args.out) / "refresh.png", keys)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
