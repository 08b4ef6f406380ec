"""A/B of stage-1 settings in one command: one SFT run per arm, each final model evaluated on the
development sets, one JSON with the rows and each arm's difference from the first.

    python benchmarks/sft_ab.py --steps 40 --arm lr=2e-4 --arm lr=8e-4 \
        --out benchmarks/results/sft_lr_ab.json

Each ``--arm`` is comma-separated ``field=value`` overrides of ``SFTConfig`` (a value is read as JSON, else
as a string; ``--set field=value`` applies to every arm); every other setting is the trainer's default, and all arms share the seed, so they see the
same batches and learning-rate schedule. Arm ``lr=2e-4`` trains in ``<runs>/lr=2e-4``; an arm whose
folder already holds ``final/`` is not trained again, one whose folder holds an interrupted run is
resumed. Arms train one after the other (each with all cores), then every final model is evaluated
with ``searchr3 eval``'s code (whole corpora, ``--reasoning`` modes, ``--max-length`` tokens per text).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

from searchr3.io import atomic_write_json
from searchr3.runs import FINAL

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.devsets


def parse_setting(part: str, option: str) -> tuple[str, object]:
    """``"lr=2e-4"`` -> ``("lr", 0.0002)``; the field checked against SFTConfig, the value read as JSON or else kept as text."""
    from searchr3.sft import SFTConfig

    key, sep, value = part.partition("=")
    if not sep or key not in {f.name for f in dataclasses.fields(SFTConfig)} or key in ("out", "max_steps"):
        raise SystemExit(f"error: {option} {part!r} is not field=value of an SFTConfig field (out and max_steps are set here)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_arm(text: str) -> dict:
    """``"lr=2e-4,traces=self"`` -> ``{"lr": 0.0002, "traces": "self"}`` (values without commas: lists go in --set)."""
    out = dict(parse_setting(part, "--arm") for part in text.split(",") if part)
    if not out:
        raise SystemExit(f"error: --arm {text!r} sets nothing")
    return out


def train(name: str, overrides: dict, runs: Path, steps: int) -> Path:
    from searchr3.sft import SFTConfig, train_sft

    run = runs / name
    if (run / FINAL).is_dir():
        print(f"{name}: {run / FINAL} exists, not trained again")
        return run / FINAL
    cfg = SFTConfig(out=str(run), max_steps=steps, eval_every=0, **overrides)
    return train_sft(cfg, resume=(run / "config.json").exists())


def main() -> None:
    from benchmarks.devsets import dev_folders
    from searchr3.commands.eval import evaluate
    from searchr3.evaluation import mode_label

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--arm", action="append", required=True, help="field=value[,field=value] overrides of SFTConfig (repeat: >= 2)"
    )
    ap.add_argument(
        "--set", action="append", default=[], help="field=value shared by every arm (repeat; the value may be a JSON list)"
    )
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--runs", type=Path, default=Path("runs/sft-ab"), help="parent folder of the arms' run folders")
    ap.add_argument("--data", action="append", help="BEIR folder to evaluate on (repeat; default both development sets)")
    ap.add_argument("--reasoning", default="all", choices=["off", "on", "mix", "both", "all"])
    ap.add_argument("--max-length", type=int, default=192, help="token budget per text in the evaluations")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if len(args.arm) < 2:
        raise SystemExit("error: an A/B needs at least two --arm")
    shared = dict(parse_setting(s, "--set") for s in args.set)
    arms = {a: parse_arm(a) for a in args.arm}
    folders = dev_folders(args.data)
    for f in folders:
        if not Path(f).is_dir():
            raise SystemExit(f"error: no data folder {f}")
    finals = {name: train(name, {**shared, **o}, args.runs, args.steps) for name, o in arms.items()}
    result = {
        "what": f"stage-1 A/B: the trainer's defaults for {args.steps} steps, one arm per settings override",
        "command": "python benchmarks/sft_ab.py " + shlex.join(sys.argv[1:]),
        "shared": shared,
        "arms": {},
    }
    for name, final in finals.items():
        rows = evaluate([Path(f) for f in folders], "test", str(final), args.reasoning, max_length=args.max_length)
        result["arms"][name] = {"settings": arms[name], "model": str(final), "rows": rows}
        atomic_write_json(args.out, result)  # each arm's rows kept as soon as they exist
    first, *rest = result["arms"].values()
    key = lambda r: (r["dataset"], mode_label(r["reasoning"]))  # noqa: E731
    base = {key(r): r["ndcg@10"] for r in first["rows"]}
    for arm in rest:
        arm["ndcg@10_minus_first"] = {f"{d} {m}": round(r["ndcg@10"] - base[(d, m)], 4) for r in arm["rows"] for d, m in [key(r)]}
        print(arm["settings"], arm["ndcg@10_minus_first"])
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
