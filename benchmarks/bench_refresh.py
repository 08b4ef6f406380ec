"""Refresh policies of the RL environment compared over one long, real GRPO run.

The run trains with one policy (``--train-policy``, default ``lazy-deciding``: ``train rl``'s default). Shadow
environments with the other policies start from the same initial index, see exactly the same
rollouts and direct embeddings, and re-encode what their policy asks for with the run's current
weights, each timing its own encoding: so today's behaviour (``local``) and the new default are
measured in the same run, on the same machine state. ``full`` is the truth: at the ``--truth-at``
steps the whole corpus is re-encoded with the current weights (before the update, as the step sees
them) and every policy's rewards and ranks are compared with exact retrieval over it; ``full`` itself
is counted (corpus size per step), not run, and its error is 0 by definition. The truth encodes,
the shadows' work and the bookkeeping are excluded from the step times.

    OMP_NUM_THREADS=1 python benchmarks/bench_refresh.py --data ../shared/data/train/nq --init runs/sft-r/final \\
        --steps 50 --lr 1e-4 --lr-schedule linear --truth-at 10,30,50 --shadows none,local,lazy-all

Writes ``benchmarks/results/refresh.json``, ``refresh.jsonl`` (per step) and ``refresh.png``.
The initial corpus embeddings are cached in ``<--work>-corpus-embeddings`` across runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from searchr3.env import EnvConfig, RetrievalEnv, model_encoder
from searchr3.grpo import GRPOConfig, GRPOTrainer
from searchr3.io import atomic_write_json, atomic_write_text
from searchr3.plots import plot_curves

HERE = Path(__file__).resolve().parent
POLICIES = {
    "none": dict(refresh="none"),
    "local": dict(refresh="local", neighbours=2),  # the default before lazy
    "lazy-deciding": dict(refresh="lazy", repair_all=False, repair_margin=0.0),  # re-encode what decides each reward: the default
    "lazy-all": dict(refresh="lazy", repair_all=True, repair_margin=0.0),  # ... and every top candidate (fresh negatives)
    # what decides the reward and the stale rows below it that their drift could lift in (EnvConfig.repair_margin)
    "lazy-deciding-margin": dict(refresh="lazy", repair_all=False, repair_margin=1.0),
    # what decides the reward, less the stale rows whose drift could not carry them past a relevant one (EnvConfig.repair_clearance)
    "lazy-clear": dict(refresh="lazy", repair_all=False, repair_clearance=1.0),
    "lazy-clear2": dict(refresh="lazy", repair_all=False, repair_clearance=2.0),
}


def summarise(rows: list[dict], names: list[str], n_docs: int, k: int) -> dict:
    truth_rows = [r for r in rows if "reward_error_none" in r]
    out = {}
    for name in names:
        enc = [r[f"encoded_{name}"] for r in rows]
        enc_s = [r[f"encode_seconds_{name}"] for r in rows if f"encode_seconds_{name}" in r]  # full: the truth steps
        errs = [r[f"reward_error_{name}"] for r in truth_rows]
        out[name] = {
            "encoded_total": int(sum(enc)),
            "encoded_per_step": float(np.mean(enc)),
            "share_per_step": float(np.mean(enc) / n_docs),
            "encoding_saving_vs_full": float(n_docs * len(rows) / max(1, sum(enc))),
            "encode_seconds_per_step": float(np.mean(enc_s)) if enc_s else None,
        }
        if truth_rows:  # --truth-at "": a timing run without errors
            out[name].update(
                {
                    "mean_abs_reward_error": float(np.mean(errs)),
                    "max_step_reward_error": float(np.max(errs)),
                    "mean_abs_rank_error": float(np.mean([r[f"rank_error_{name}"] for r in truth_rows])),
                    f"recall@{k}": float(np.mean([r[f"recall@{k}_{name}"] for r in truth_rows])),
                    "reward_error_by_step": {r["step"]: r[f"reward_error_{name}"] for r in truth_rows},
                    "rank_error_by_step": {r["step"]: r[f"rank_error_{name}"] for r in truth_rows},
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "train" / "nq"))
    ap.add_argument("--init", default=None, help="model to start from, e.g. a stage-1 run's final/ (default: built-in SmolLM2)")
    ap.add_argument("--docs", type=int, default=0, help="corpus subset: first N documents + every judged one (0 = all)")
    ap.add_argument("--doc-max-length", type=int, default=256, help="document length in tokens (256: train rl's default)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--queries", type=int, default=4, help="queries per step")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lr-schedule", default="linear", choices=["linear", "constant"])
    ap.add_argument("--nce-coef", type=float, default=0.5)
    ap.add_argument(
        "--nce-negatives",
        default="all",
        choices=["all", "fresh"],
        help="the contrastive term's negatives (GRPOConfig.nce_negatives)",
    )
    ap.add_argument(
        "--lora-layers",
        type=int,
        default=GRPOConfig.lora_layers,
        help="the adapter's top N layers; re-encodes run only those on the cached trunk (0 = every layer, the full forward)",
    )
    ap.add_argument(
        "--train-policy",
        default="lazy-deciding",
        choices=sorted(POLICIES),
        help="the run's own policy (lazy-deciding: train rl's default)",
    )
    ap.add_argument("--shadows", default=",".join(POLICIES), help="policies scored beside the run, comma-separated")
    ap.add_argument("--truth-at", default="1,10,25,50", help="steps at which the whole corpus is re-encoded as the truth")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (queries drawn, rollouts sampled)")
    ap.add_argument("--work", default="/tmp/searchr3-bench-refresh", help="scratch run folder")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default="refresh", help="stem of the output files")
    args = ap.parse_args()
    truth_at = {int(s) for s in args.truth_at.split(",") if s}
    shadow_names = {s for s in args.shadows.split(",") if s}
    if shadow_names - set(POLICIES):
        ap.error(f"unknown policies in --shadows: {sorted(shadow_names - set(POLICIES))}")

    env_cfg = EnvConfig(**POLICIES[args.train_policy])
    cfg = GRPOConfig(
        out=args.work,
        init=args.init,
        data=args.data,
        steps=args.steps,
        queries_per_step=args.queries,
        group=args.group,
        max_new_tokens=args.max_new_tokens,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        nce_coef=args.nce_coef,
        nce_negatives=args.nce_negatives,
        lora_layers=args.lora_layers,
        doc_max_length=args.doc_max_length,
        corpus_limit=args.docs,
        save_every=10**9,
        seed=args.seed,
        env=env_cfg,
        show_progress_bar=False,
    )
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)  # a scratch run folder: a run folder is never reused without --resume
    t_init = time.perf_counter()
    # the initial corpus encoding is cached beside it (by model, document length and corpus) across runs
    trainer = GRPOTrainer(cfg, corpus_cache=work.parent / (work.name + "-corpus-embeddings"))
    init_seconds = time.perf_counter() - t_init
    run_env = trainer.env
    n = run_env.size
    initial = run_env.emb.copy()
    shadows = {
        name: RetrievalEnv(
            run_env.doc_ids, run_env.encode, replace(env_cfg, **kw), embeddings=initial.copy(), versions=run_env.versions
        )
        for name, kw in POLICIES.items()
        if name != args.train_policy and name in shadow_names
    }
    envs = {args.train_policy: run_env, **shadows}
    rows: list[dict] = []
    run_step = run_env.step
    overhead = [0.0]  # seconds of the step spent on the benchmark's own work
    prev_truth: list = [initial, 0]

    def observed_step(queries, q_emb, positives, emitted=None, hit_limit=None, direct=None):
        """The run's env.step, then the same rollouts scored by every shadow (and, at truth steps, everyone against the truth)."""
        res = run_step(queries, q_emb, positives, emitted, hit_limit, direct)
        t0 = time.perf_counter()
        step = trainer.step + 1
        per_query: dict[str, list[float]] = {}
        for q, r in zip(queries, res.rewards.tolist()):
            per_query.setdefault(q, []).append(r)
        row = {"step": step, "reward_per_query": {q: float(np.mean(v)) for q, v in per_query.items()}}
        results = {args.train_policy: res}
        for name, env in shadows.items():
            results[name] = env.step(queries, q_emb, positives, emitted, hit_limit, direct)
        if step in truth_at:
            t1 = time.perf_counter()
            truth = run_env._encode(list(range(n)))  # the current weights' whole corpus, not written anywhere
            row["truth_seconds"] = time.perf_counter() - t1
            if trainer.trunk is not None:  # the truth came through the trunk: check it against the full forward on a sample
                sample = sorted(np.random.default_rng(step).choice(n, size=min(64, n), replace=False).tolist())
                t2 = time.perf_counter()
                full = model_encoder(trainer.model, trainer.doc_texts, cfg.encode_batch_size, False, cfg.doc_max_length)(sample)
                row["full_forward_seconds_per_doc"] = (time.perf_counter() - t2) / len(sample)
                t2 = time.perf_counter()
                run_env._encode(sample)
                row["trunk_seconds_per_doc"] = (time.perf_counter() - t2) / len(sample)
                row["trunk_vs_full_cosine_distance_max"] = float((1 - (truth[sample] * full).sum(1)).max())
            row["drift_from_initial"] = float((1 - (truth * initial).sum(1)).mean())
            row["drift_per_step_since_last_truth"] = float((1 - (truth * prev_truth[0]).sum(1)).mean()) / max(
                1, step - 1 - prev_truth[1]
            )
            prev_truth[:] = [truth, step - 1]
            for name, env in envs.items():
                row.update({f"{k}_{name}": v for k, v in env.drift(q_emb, results[name], truth).items()})
        rows.append(row)
        overhead[0] += time.perf_counter() - t0
        return res

    run_env.step = observed_step
    names_all = ["full", *envs]
    log = Path(args.out) / f"{args.name}.jsonl"
    start = time.perf_counter()
    while trainer.step < cfg.steps:
        overhead[0] = 0.0
        out = trainer.train_step()
        row = rows[-1]
        step_seconds = out["seconds"] - overhead[0]
        row.update(
            reward=out["reward"],
            reward_std=out["reward_std"],
            ndcg=out["ndcg"],
            direct_ndcg=out.get("direct_ndcg"),
            emitted=out["emitted"],
            completion_tokens=out["completion_tokens"],
            kl=out["kl"],
            gen_seconds=out["gen_seconds"],
            step_seconds=step_seconds,
            doc_drift=out["doc_drift"],
            doc_drift_age=out["doc_drift_age"],
            encoded_full=n,
            **({"encode_seconds_full": row["truth_seconds"]} if "truth_seconds" in row else {}),
        )
        row.update(
            {
                f"encoded_{args.train_policy}": out["encoded"],
                f"encode_seconds_{args.train_policy}": out["refresh_seconds"],
                f"mean_age_{args.train_policy}": out["mean_age"],
            }
        )
        for name, env in shadows.items():
            stats = env.refresh()
            row.update(
                {
                    f"encoded_{name}": stats.encoded,
                    f"encode_seconds_{name}": stats.encode_seconds,
                    f"mean_age_{name}": stats.mean_age,
                }
            )
        # The step without the benchmark's work, with each policy's encoding in place of the run's own.
        for name in [n_ for n_ in names_all if f"encode_seconds_{n_}" in row]:
            row[f"refresh_share_{name}"] = row[f"encode_seconds_{name}"] / (
                step_seconds - out["refresh_seconds"] + row[f"encode_seconds_{name}"]
            )
        if "reward_error_none" in row:
            row.update({"reward_error_full": 0.0, "rank_error_full": 0.0, f"recall@{env_cfg.k}_full": 1.0})
        print(json.dumps({k: v for k, v in row.items() if k != "reward_per_query"}), flush=True)
        atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in rows))
    seconds = time.perf_counter() - start

    names = (["full"] if truth_at else []) + [*envs]
    policies = summarise(rows, names, n, env_cfg.k)
    for name in names:
        policies[name]["refresh_share_of_step"] = float(
            np.mean([r[f"refresh_share_{name}"] for r in rows if f"refresh_share_{name}" in r])
        )
    first, last = (
        [q for r in rows[:10] for q in r["reward_per_query"].values()],
        [q for r in rows[-10:] for q in r["reward_per_query"].values()],
    )
    truths = [r for r in rows if "drift_from_initial" in r]
    result = {
        "setup": {
            "data": args.data,
            "corpus_docs": n,
            "training_queries": len(trainer.queries),
            "doc_max_length": cfg.doc_max_length,
            "steps": args.steps,
            "queries_per_step": args.queries,
            "group": args.group,
            "max_new_tokens": args.max_new_tokens,
            "lr": args.lr,
            "lr_schedule": args.lr_schedule,
            "seed": args.seed,
            "nce_coef": args.nce_coef,
            "nce_negatives": args.nce_negatives,
            "lora_layers": args.lora_layers,
            "init": args.init or "built-in SmolLM2-135M-Instruct",
            "train_policy": args.train_policy,
            "env": asdict(env_cfg),
            "policies": POLICIES,
            "truth_at": sorted(truth_at),
            "seconds": seconds,
            "init_seconds": init_seconds,
        },
        "policies": policies,
        "step_seconds_mean": float(np.mean([r["step_seconds"] for r in rows])),
        "reward": {
            "first10_mean": float(np.mean(first)),
            "first10_std_across_queries": float(np.std(first)),
            "last10_mean": float(np.mean(last)),
            "last10_std_across_queries": float(np.std(last)),
            "first10_queries": len(first),
            "last10_queries": len(last),
        },
        "doc_drift": {
            "from_initial_by_step": {r["step"]: r["drift_from_initial"] for r in truths},
            "per_step_by_step": {r["step"]: r["drift_per_step_since_last_truth"] for r in truths},
            "rereads_mean_cosine_distance": float(np.mean([r["doc_drift"] for r in rows])),
        },
        "trunk": None
        if trainer.trunk is None
        else {
            "first_adapted_layer": trainer.first_adapted,
            "gigabytes": trainer.trunk.nbytes / 1e9,
            "seconds_per_doc": {r["step"]: r["trunk_seconds_per_doc"] for r in truths if "trunk_seconds_per_doc" in r},
            "full_forward_seconds_per_doc": {
                r["step"]: r["full_forward_seconds_per_doc"] for r in truths if "full_forward_seconds_per_doc" in r
            },
            "vs_full_cosine_distance_max": {
                r["step"]: r["trunk_vs_full_cosine_distance_max"] for r in truths if "trunk_vs_full_cosine_distance_max" in r
            },
        },
        "target": {"saving_at_least": 10, "reward_error_at_most": 0.01, "refresh_share_at_most": 0.25},
    }
    result["target"]["met"] = any(
        p["encoding_saving_vs_full"] >= 10 and p.get("mean_abs_reward_error", 1.0) <= 0.01 and p["refresh_share_of_step"] <= 0.25
        for name, p in policies.items()
        if name != "full"
    )
    atomic_write_json(Path(args.out) / f"{args.name}.json", result)
    partial = [p for p in envs if p != "none"]
    keys = ["reward", "step_seconds", [f"encoded_{p}" for p in partial], [f"refresh_share_{p}" for p in partial]]
    keys += [[f"reward_error_{p}" for p in envs], "drift_from_initial"] if truths else []
    plot_curves(log, Path(args.out) / f"{args.name}.png", keys)
    print(json.dumps({k: v for k, v in result.items() if k != "setup"}, indent=2))


if __name__ == "__main__":
    main()
