"""Seconds per SFT optimizer step and peak memory (RSS), default model and default batch config.

    python benchmarks/bench_sft_step.py [--steps 3] [--warmup 1] [--out benchmarks/results/sft_step.json]

Reasoning traces for the timed batches come from ``--traces`` (a run's traces.jsonl) when given,
else they are generated for just those batches (not timed). The load average is recorded because
the machine may be shared: steps on a busy machine are slower than on an idle one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
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
    ap.add_argument("--traces", type=Path, default=Path("runs/sft-default/traces.jsonl"))
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--model", default=None, help="Base model (default: built-in SmolLM2).")
    ap.add_argument("--data", default=None, help="BEIR training folder (default: scifact-2k).")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sft_step.json"))
    args = ap.parse_args()

    import torch

    from searchr3 import SearchR3
    from searchr3.io import atomic_write_json
    from searchr3.sft import SFTConfig, SFTTrainer, batch_indices, build_data, load_or_make_traces, prepare_model

    extra = {"data": [args.data]} if args.data else {}
    cfg = SFTConfig(
        out=tempfile.mkdtemp(prefix="bench-sft-"), model=args.model, gradient_checkpointing=args.gradient_checkpointing, show_progress=False, eval_queries=0, **extra
    )
    data = build_data(cfg)
    m = SearchR3.from_pretrained(cfg.model, prompts=cfg.prompts, bf16=cfg.bf16)
    n = args.warmup + args.steps
    seen = {data.examples[i].query for s in range(n) for i in batch_indices(s, len(data.examples), cfg.batch_size, cfg.seed)}
    rng = random.Random(cfg.seed)
    chosen = [q for q in sorted({e.query for e in data.examples}) if rng.random() < cfg.reasoning_share and q in seen]
    trace_file = Path(cfg.out) / "traces.jsonl"
    if args.traces.is_file():
        trace_file.write_text(args.traces.read_text())
    traces = load_or_make_traces(m, chosen, trace_file, cfg.reasoning_tokens, show_progress=True)
    prepare_model(m, cfg)
    trainer = SFTTrainer(cfg, m, data, traces)
    times = []
    for s in range(n):
        t0 = time.perf_counter()
        trainer.train_step()
        if s >= args.warmup:
            times.append(time.perf_counter() - t0)
        print(f"step {s + 1}: {time.perf_counter() - t0:.1f} s", flush=True)
    result = {
        "seconds_per_step": statistics.mean(times),
        "seconds_per_step_all": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model": cfg.model or "smollm2 (built-in)",
        "batch_size": cfg.batch_size,
        "hard_negatives": cfg.hard_negatives,
        "reasoning_share": cfg.reasoning_share,
        "query_tokens": cfg.query_tokens,
        "doc_tokens": cfg.doc_tokens,
        "lora_r": cfg.lora_r,
        "bf16": cfg.bf16,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "trainable_params": sum(p.numel() for p in m.model.parameters() if p.requires_grad),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "machine": platform.processor() or platform.machine(),
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
