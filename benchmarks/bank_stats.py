"""What a `--traces self` run's trace bank chose, per block of steps: the share of reasoning rows
trained on a sampled analysis (the rest got the empty trace), non-empty candidates per query, and the
mean margin of the best candidate over the direct embedding (log-softmax score of the positive).

    python benchmarks/bank_stats.py runs/sft-self [--block 10] [--out FILE]

Prints one line per block; with --out writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from searchr3.io import atomic_write_json


def blocks(bank: Path, size: int) -> list[dict]:
    rows = [json.loads(x) for x in bank.read_text().splitlines() if x.strip()]
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault((r["step"] - 1) // size, []).append(r)
    table = []
    for b, rs in sorted(out.items()):
        margins = [max(c["score"] for c in r["candidates"]) - r["direct"] for r in rs if r["candidates"]]
        table.append(
            {
                "steps": f"{b * size + 1}-{(b + 1) * size}",
                "queries": len(rs),
                "share_trained_on_a_sampled_trace": round(sum(r["chosen"] >= 0 for r in rs) / len(rs), 3),
                "candidates_per_query": round(statistics.mean(len(r["candidates"]) for r in rs), 2),
                "mean_best_minus_direct": round(statistics.mean(margins), 3) if margins else None,
            }
        )
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    table = blocks(args.run / "bank.jsonl", args.block)
    for t in table:
        print(t)
    if args.out:
        atomic_write_json(args.out, {"run": str(args.run), "blocks": table})


if __name__ == "__main__":
    main()
