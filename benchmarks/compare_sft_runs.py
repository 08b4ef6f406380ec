"""Side by side: the held-out evaluation rows of stage-1 run folders at one step, with the settings in
which they differ and each run's mean step time up to that step (an A/B of one stage-1 setting: same
seed, so the same batches and learning-rate schedule).

    python benchmarks/compare_sft_runs.py runs/full13/sft runs/sft13-own --step 50 \
        --out benchmarks/results/trace_embedding_ab.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from searchr3.io import atomic_write_json
from searchr3.plots import read_log
from searchr3.runs import differing_settings


def settings(run: Path) -> dict:
    cfg = json.loads((run / "config.json").read_text())["config"]
    cfg["data"] = [str(Path(d).resolve()) for d in cfg.get("data", [])]  # the same folders, however they were named
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--step", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    configs = {r: settings(r) for r in args.runs}
    differ = differing_settings(configs.values())
    table = []
    for run in args.runs:
        log = read_log(run / "log.jsonl")
        at = [r for r in log if r.get("step") == args.step and "eval_ndcg@10" in r]
        if not at:
            raise SystemExit(f"error: {run} has no evaluation row at step {args.step}")
        steps = [r for r in log if 0 < r.get("step", 0) <= args.step and "seconds" in r]
        table.append(
            {
                "run": str(run),
                "step": args.step,
                **{k: configs[run].get(k) for k in differ},
                **{k: v for k, v in at[-1].items() if k.startswith("eval_")},
                "mean_step_seconds": sum(r["seconds"] for r in steps) / max(1, len(steps)),
            }
        )
    atomic_write_json(args.out, table)
    for t in table:
        print(t)


if __name__ == "__main__":
    main()
