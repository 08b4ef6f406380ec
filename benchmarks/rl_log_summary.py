"""Stage-2 run folders side by side: the settings in which they differ and their log's means by quarter of
the run (reward, the contrastive loss, KL to the stage-1 model, tokens written) and the median step time.

    python benchmarks/rl_log_summary.py runs/full16/rl runs/full20/rl runs/full21/rl \
        --out benchmarks/results/rl_ablation_session18.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from searchr3.grpo import GRPOConfig
from searchr3.io import atomic_write_json
from searchr3.plots import read_log
from searchr3.runs import dataclass_defaults, differing_settings

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("reward", "nce", "kl", "completion_tokens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rl_log_summary.json")
    args = ap.parse_args()
    defaults = dataclass_defaults(GRPOConfig)  # of this version: older runs' config.json lack the newer fields
    configs = {r: {**defaults, **json.loads((r / "config.json").read_text())["config"]} for r in args.runs}
    varying = differing_settings(configs.values(), ignore=("out", "init"))
    out = {"varying": varying, "runs": {}}
    for run, cfg in configs.items():
        rows = [r for r in read_log(run / "log.jsonl") if "reward" in r]
        if not rows:
            raise SystemExit(f"{run}: no training rows in log.jsonl")
        q = max(len(rows) // 4, 1)
        quarters = [rows[i : i + q] for i in range(0, q * 4, q)]
        out["runs"][str(run)] = {
            "settings": {k: cfg.get(k) for k in varying},
            "steps": len(rows),
            "by_quarter": {f: [round(statistics.mean(r[f] for r in part), 4) for part in quarters if part] for f in FIELDS},
            "median_step_seconds": round(statistics.median(r["seconds"] for r in rows), 2),
        }
        print(run, json.dumps(out["runs"][str(run)]))
    atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
