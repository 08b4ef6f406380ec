"""SFT examples per second, one process against N data-parallel processes (``accelerate launch``), same batches.

    python benchmarks/bench_scaleout.py [--processes 2] [--steps 4] [--warmup 1] [--batch-size 16] [--out FILE] [-- CLI ARGS]

Runs ``searchr3 train sft`` twice on the same settings (default model, the training mix, the seeded
schedule; ``--batch-size`` is the global micro-batch, so both runs draw the same examples): once as a
plain process, once under ``accelerate launch --multi_gpu --num_processes N`` (on a machine without
CUDA: N gloo CPU processes, each with 1/N of every micro-batch). Examples/s is the batch over the
median step time of the logged steps after ``--warmup``. Arguments after ``--`` go to both runs
(e.g. a tiny model and data for a smoke test). The JSON records thread counts and the load average,
because the machine may be shared: with 2 cores, one process already uses both (2 intra-op threads),
and 2 processes get 1 thread each, so the ratio measures data parallelism against intra-op
parallelism on the same cores, plus the gather/all-reduce cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def measure(out: Path, warmup: int, batch: int, wall: float, processes: int, threads: str) -> dict:
    rows = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines() if r.strip()]
    steps = [r for r in rows if "loss" in r]
    assert all(r["processes"] == processes for r in steps), f"{out}: expected {processes} processes in the log"
    timed = [r["seconds"] for r in steps[warmup:]] or [r["seconds"] for r in steps]
    sec = statistics.median(timed)
    return {
        "processes": processes,
        "threads_per_process": threads,
        "seconds_per_step": sec,
        "seconds_per_step_all": [r["seconds"] for r in steps],
        "examples_per_second": batch / sec,
        "losses": [r["loss"] for r in steps],
        "wall_seconds_with_startup": wall,
    }


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1, help="Steps left out of the timing (allocator and cache warm-up).")
    ap.add_argument("--batch-size", type=int, default=16, help="Global micro-batch (examples per step).")
    ap.add_argument("--max-per-source", type=int, default=200, help="Queries per training folder (keeps data loading short).")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scaleout.json")
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    common = ["train", "sft", "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--eval-every", "0"]
    common += ["--save-every", str(args.steps), "--max-per-source", str(args.max_per_source), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        wall1 = run([sys.executable, "-m", "searchr3.cli", *common, "--out", str(one)], env)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(args.processes)]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
        # torchrun's default of 1 intra-op thread per process, stated (the single process keeps torch's default).
        wall2 = run(
            [*launch, "-m", "searchr3.cli", *common, "--out", str(many)],
            {**env, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")},
        )
        import torch

        single = measure(
            one, args.warmup, args.batch_size, wall1, 1, os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
        )
        multi = measure(many, args.warmup, args.batch_size, wall2, args.processes, env.get("OMP_NUM_THREADS", "1"))
    result = {
        "command": "python benchmarks/bench_scaleout.py " + " ".join(sys.argv[1:]),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "extra_cli_args": extra,
        "single": single,
        "data_parallel": multi,
        "speedup": multi["examples_per_second"] / single["examples_per_second"],
        "max_abs_loss_difference": max(abs(a - b) for a, b in zip(single["losses"], multi["losses"])),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "machine": platform.machine(),
        "cuda": torch.cuda.is_available(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("speedup", "max_abs_loss_difference")}))
    print(
        f"1 process: {single['examples_per_second']:.2f} examples/s; {args.processes}: {multi['examples_per_second']:.2f} -> {args.out}"
    )


if __name__ == "__main__":
    main()
