"""One table of several SFT run folders: the settings each changed from the defaults, its held-out
evaluations, step time and peak memory. For ablations run as separate folders:

    for v in A B C; do searchr3 train sft --out runs/abl-$v --steps 12 --eval-every 12 ...; done
    python benchmarks/run_table.py runs/abl-A runs/abl-B runs/abl-C --out benchmarks/results/FILE.json

Prints a markdown table and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from searchr3.io import atomic_write_json
from searchr3.plots import read_log
from searchr3.runs import dataclass_defaults
from searchr3.sft import SFTConfig


def row(run: Path) -> dict:
    cfg = json.loads((run / "config.json").read_text())["config"]
    defaults = dataclass_defaults(SFTConfig)
    changed = {k: v for k, v in cfg.items() if k not in ("out", "data", "show_progress") and defaults.get(k) != v}
    log = read_log(run / "log.jsonl")
    steps = [r for r in log if "loss" in r]
    evals = [{k: r[k] for k in r if k == "step" or k.startswith("eval_")} for r in log if "eval_ndcg@10" in r]
    return {
        "run": str(run),
        "changed_from_defaults": changed,
        "steps": len(steps),
        "evaluations": evals,
        "median_seconds_per_step": statistics.median(r["seconds"] for r in steps) if steps else None,
        "peak_rss_mb": max((r.get("peak_rss_mb", 0) for r in steps), default=None),
        "last_losses": {k: steps[-1][k] for k in ("lm", "nce", "triplet", "kl")} if steps else {},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = [row(r) for r in args.runs]
    atomic_write_json(args.out, {"rows": rows})
    print("| run | changed | held-out nDCG@10 direct / reasoning, emit rate (last eval) | s/step |")
    print("|---|---|---|---|")
    for r in rows:
        e = r["evaluations"][-1] if r["evaluations"] else {}
        print(
            f"| {r['run']} | {r['changed_from_defaults']} | {e.get('eval_ndcg@10', float('nan')):.3f} / "
            f"{e.get('eval_ndcg@10_reasoning', float('nan')):.3f}, {e.get('eval_emit_rate', float('nan')):.2f} | {r['median_seconds_per_step']:.1f} |"
        )


if __name__ == "__main__":
    main()
