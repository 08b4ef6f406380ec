"""How far stage 2 moves the document embeddings, and which part of the loss moves them.

Runs GRPO (``searchr3.grpo.GRPOTrainer``) for N steps with the given settings and, every
``--probe-every`` steps, re-encodes a fixed probe set of documents with the current weights:
``probe_drift`` is their mean cosine distance from the initial rows, ``probe_drift_per_step`` the
distance from the previous probe divided by the steps between. The refresh benchmark needs this
number to be small per step for a partly refreshed index to stay close to the truth; this script
shows what the learning rate, the KL and the contrastive term do to it. The training log (reward,
KL, contrastive loss, ...) is kept per step.

    python benchmarks/bench_rl_drift.py --init runs/sft-r/final --steps 30 --set lr=1e-4 --set nce_coef=0 --name nce0
    python benchmarks/bench_rl_drift.py --init runs/sft-r/final --doc-max-length 256 --work /tmp/br-256 --set lr=1e-4 \
        --set lr_schedule=linear --probe-every 10 [--repair-all] --name doc256_deciding   # which env policy lets it run away

Writes ``benchmarks/results/rl_drift_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from searchr3.env import EnvConfig
from searchr3.grpo import GRPOConfig, GRPOTrainer
from searchr3.io import atomic_write_json

HERE = Path(__file__).resolve().parent


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` pairs for GRPOConfig fields, typed like the field's default."""
    types = {f.name: type(f.default) for f in fields(GRPOConfig) if not callable(f.default)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in types or not value:
            raise SystemExit(f"error: --set {item!r}: expected key=value with key one of {sorted(types)}")
        out[key] = types[key](value) if types[key] is not bool else value.lower() in ("1", "true", "yes")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "train" / "nq"))
    ap.add_argument("--init", default=None, help="model to start from (default: built-in SmolLM2)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--doc-max-length", type=int, default=96)
    ap.add_argument("--probe", type=int, default=256, help="documents in the probe set")
    ap.add_argument("--probe-every", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a GRPOConfig field, e.g. lr=1e-4 (repeat)")
    ap.add_argument("--work", default="/tmp/br-long", help="scratch run folder; the initial corpus encode is cached beside it")
    ap.add_argument(
        "--repair-all",
        action="store_true",
        help="the environment re-encodes every stale top candidate (fresh negatives), not only the deciding documents",
    )
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()

    over = parse_overrides(args.set)
    # the cheapest refresh that keeps the rewards honest while the weights move slowly (see bench_refresh)
    cfg = GRPOConfig(
        out=args.work + "-drift",
        init=args.init,
        data=args.data,
        steps=args.steps,
        doc_max_length=args.doc_max_length,
        save_every=10**9,
        show_progress_bar=False,
        env=EnvConfig(refresh="lazy", repair_all=args.repair_all),
        **over,
    )
    shutil.rmtree(cfg.out, ignore_errors=True)
    trainer = GRPOTrainer(cfg, corpus_cache=args.work + "-corpus-embeddings")
    env = trainer.env
    probe = sorted(np.random.default_rng(0).choice(env.size, size=min(args.probe, env.size), replace=False).tolist())
    initial = env.emb[probe].copy()
    last, last_step = initial, 0
    rows = []
    out = Path(args.out) / f"rl_drift_{args.name}.json"
    t0 = time.perf_counter()
    while trainer.step < cfg.steps:
        row = trainer.train_step()
        if trainer.step % args.probe_every == 0 or trainer.step == cfg.steps:
            now = env._encode(probe)
            row["probe_drift"] = float((1 - (now * initial).sum(1)).mean())
            row["probe_drift_per_step"] = float((1 - (now * last).sum(1)).mean()) / (trainer.step - last_step)
            last, last_step = now, trainer.step
            print(
                f"step {trainer.step}: reward {row['reward']:.3f} kl {row['kl']:.4f} nce {row['nce']:.3f} "
                f"probe drift {row['probe_drift']:.5f} (+{row['probe_drift_per_step']:.5f}/step)",
                flush=True,
            )
        rows.append(row)
        atomic_write_json(out, {"name": args.name, "settings": over, "partial": True, "rows": rows})  # kept if stopped
    rewards = [r["reward"] for r in rows]
    k = min(10, len(rows) // 2)
    summary = {
        "name": args.name,
        "settings": over,
        "data": Path(args.data).name,
        "num_docs": env.size,
        "steps": cfg.steps,
        "doc_max_length": args.doc_max_length,
        "repair_all": args.repair_all,
        "probe_docs": len(probe),
        "minutes": (time.perf_counter() - t0) / 60,
        "probe_drift_final": rows[-1]["probe_drift"],
        "probe_drift_per_step": {r["step"]: r["probe_drift_per_step"] for r in rows if "probe_drift_per_step" in r},
        "kl_last": float(np.mean([r["kl"] for r in rows[-k:]])),
        "reward_first": float(np.mean(rewards[:k])),
        "reward_last": float(np.mean(rewards[-k:])),
        "rows": rows,
    }
    atomic_write_json(out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
