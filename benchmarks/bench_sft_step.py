"""Seconds per SFT optimizer step and peak memory (RSS), default model and default batch config.

    python benchmarks/bench_sft_step.py [--steps 3] [--warmup 1] [--lora-layers N] [--grad-cache-chunk N] [--precision auto|bf16|fp32] [--label NAME] [--out FILE]

Every run sees the same batches (the default training mix, the trainer's seeded schedule, the
default keyword traces), so two runs that differ in one setting (e.g. ``--lora-layers 0``, today's
all-layer LoRA, against ``--lora-layers 10``) compare that setting alone; run them one after the
other in one shell command and compare the ratio. Each run is its own process, so ``peak_rss_mb`` is
that setting's peak. Results are stored under ``--label`` in ``--out`` (other labels are kept).
The load average is recorded because the machine may be shared; so is the process's CPU time per step,
which other jobs on the machine disturb less than the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--lora-layers", type=int, default=None, help="LoRA on the top N layers (0 = all; default: the trainer's).")
    ap.add_argument(
        "--grad-cache-chunk",
        type=int,
        default=None,
        help="Gradient caching, N sequences per chunk (0 = off; default: the trainer's).",
    )
    ap.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="bf16 autocast or fp32 (auto: the trainer's default for this CPU).",
    )
    ap.add_argument("--label", default="default")
    ap.add_argument("--model", default=None, help="Base model (default: built-in SmolLM2).")
    ap.add_argument("--data", action="append", default=None, help="BEIR training folder, repeatable (default: the training mix).")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sft_step.json"))
    args = ap.parse_args()

    import torch

    from searchr3 import SearchR3
    from searchr3.backbone import cpu_features
    from searchr3.io import atomic_write_json
    from searchr3.sft import SFTConfig, SFTTrainer, build_data, make_traces, prepare_model

    extra = {"data": args.data} if args.data else {}
    if args.lora_layers is not None:
        extra["lora_layers"] = args.lora_layers
    if args.grad_cache_chunk is not None:
        extra["grad_cache_chunk"] = args.grad_cache_chunk
    cfg = SFTConfig(
        out=tempfile.mkdtemp(prefix="bench-sft-"),
        model=args.model,
        gradient_checkpointing=args.gradient_checkpointing,
        show_progress=False,
        eval_queries=0,
        bf16={"auto": None, "bf16": True, "fp32": False}[args.precision],
        **extra,
    )
    data = build_data(cfg)
    m = SearchR3.from_pretrained(cfg.model, prompts=cfg.prompts, bf16=cfg.bf16)
    n = args.warmup + args.steps
    traces = make_traces(m, cfg, data, Path(cfg.out))
    prepare_model(m, cfg)
    trainer = SFTTrainer(cfg, m, data, traces)
    times, cpu = [], []
    for s in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train_step()
        if s >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(f"step {s + 1}: {time.perf_counter() - t0:.1f} s ({time.process_time() - c0:.1f} s CPU)", flush=True)
    result = {
        "label": args.label,
        "lora_layers": cfg.lora_layers,
        "sequences_per_step": {"traces_in_batch": sum(e.query in traces for s in range(n) for e in trainer.batch(s)) / n},
        "seconds_per_step": statistics.mean(times),
        "seconds_per_step_all": times,
        # CPU seconds of this process (all its threads): less sensitive than wall time to other jobs on the machine.
        "cpu_seconds_per_step": statistics.mean(cpu),
        "cpu_seconds_per_step_all": cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model": cfg.model or "smollm2 (built-in)",
        "batch_size": cfg.batch_size,
        "hard_negatives": cfg.hard_negatives,
        "reasoning_share": cfg.reasoning_share,
        "query_tokens": cfg.query_tokens,
        "doc_tokens": cfg.doc_tokens,
        "lora_r": cfg.lora_r,
        "bf16": m.bf16,
        "cpu_features": cpu_features(),
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "grad_cache_chunk": cfg.grad_cache_chunk,
        "trainable_params": sum(p.numel() for p in m.model.parameters() if p.requires_grad),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "machine": platform.processor() or platform.machine(),
    }
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if not isinstance(old, dict) or "seconds_per_step" in old:  # the single-result layout of earlier versions
        old = {}
    old[args.label] = result
    atomic_write_json(args.out, old)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
