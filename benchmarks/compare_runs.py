"""Compare two SFT run folders: final held-out metrics and the largest difference between their weights.

Used to check that a run interrupted with ``kill -9`` and continued with ``--resume`` ends where an
uninterrupted run of the same settings ends:

    searchr3 train sft --out runs/sft-default            # kill -9 it mid-way, then:
    searchr3 train sft --out runs/sft-default --resume
    searchr3 train sft --out runs/sft-straight           # the same settings, uninterrupted
    python benchmarks/compare_runs.py runs/sft-default runs/sft-straight

Writes benchmarks/results/sft_resume.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from searchr3.io import atomic_write_json
from searchr3.plots import read_log

ROOT = Path(__file__).resolve().parents[1]


def final_eval(run: Path) -> dict:
    rows = [r for r in read_log(run / "log.jsonl") if any(k.startswith("eval_") for k in r)]
    if not rows:
        raise SystemExit(f"{run}: no evaluation rows in log.jsonl")
    return {k: v for k, v in rows[-1].items() if k.startswith("eval_") or k == "step"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sft_resume.json")
    args = ap.parse_args()
    wa = load_file(args.a / "final" / "adapter_model.safetensors")
    wb = load_file(args.b / "final" / "adapter_model.safetensors")
    if wa.keys() != wb.keys():
        raise SystemExit("the two runs saved different tensors")
    diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    out = {
        "a": str(args.a),
        "b": str(args.b),
        "final_eval_a": final_eval(args.a),
        "final_eval_b": final_eval(args.b),
        "tensors": len(wa),
        "max_abs_weight_difference": diff,
    }
    atomic_write_json(args.out, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
