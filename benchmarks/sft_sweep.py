"""Collect the final held-out metrics of several SFT runs (a settings sweep) into one JSON table.

    for t in 0.1 0.05 0.02; do searchr3 train sft --out runs/sft-tau$t --temperature $t; done
    python benchmarks/sft_sweep.py runs/sft-tau0.1 runs/sft-tau0.05 runs/sft-tau0.02

Writes benchmarks/results/sft_sweep.json (each run's settings that differ from the others, and its
last held-out evaluation row).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from searchr3.io import atomic_write_json
from searchr3.plots import read_log
from searchr3.runs import differing_settings

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sft_sweep.json")
    args = ap.parse_args()
    configs = {r: json.loads((r / "config.json").read_text())["config"] for r in args.runs}
    varying = differing_settings(configs.values(), ignore=("out", "eval_every"))
    rows = []
    for run, cfg in configs.items():
        evals = [r for r in read_log(run / "log.jsonl") if "eval_ndcg@10" in r]
        if not evals:
            raise SystemExit(f"{run}: no evaluation rows")
        rows.append(
            {
                "run": str(run),
                **{k: cfg.get(k) for k in varying},
                **{k: v for k, v in evals[-1].items() if k == "step" or k.startswith("eval_")},
            }
        )
    atomic_write_json(args.out, rows)
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
