"""Stage 1's step with and without gradient caching, interleaved in one process on the same batches.

Timing two settings in separate processes one after the other compares machine states as much as
settings when the machine is shared; here each batch's loss + backward is timed plain
(``SFTTrainer.loss(...)["loss"].backward()``) and then with ``grad_cache_chunk = N``
(``SFTTrainer.loss_and_backward``), step after step, so both see the same load. No optimizer step
is taken (both paths see the same weights). The default config: the training mix, LoRA on the top 12
layers, batch 16 + 1 hard negative.

    python benchmarks/bench_gradcache.py --chunks 8 --steps 3

Stores the wall and CPU seconds and their ratios under ``--label`` in ``benchmarks/results/sft_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from searchr3.io import atomic_write_json

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", default="8", help="comma-separated chunk sizes to time against the plain step")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--label", default="interleaved_lora12_vs_gradcache")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "sft_step.json")
    args = ap.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]

    from searchr3 import SearchR3
    from searchr3.sft import SFTConfig, SFTTrainer, build_data, make_traces, prepare_model

    cfg = SFTConfig(out=tempfile.mkdtemp(prefix="bench-gradcache-"), show_progress=False, eval_queries=0)
    data = build_data(cfg)
    m = SearchR3.from_pretrained(cfg.model, prompts=cfg.prompts, bf16=cfg.bf16)
    traces = make_traces(m, cfg, data, Path(cfg.out))
    prepare_model(m, cfg)
    trainer = SFTTrainer(cfg, m, data, traces)
    m.model.train()
    wall: dict[int, list[float]] = {c: [] for c in [0, *chunks]}
    cpu: dict[int, list[float]] = {c: [] for c in [0, *chunks]}
    for step in range(args.steps):
        exs = trainer.batch(step)
        for c in [0, *chunks]:
            trainer.cfg.grad_cache_chunk = c
            for p in trainer.params:
                p.grad = None
            t0, c0 = time.perf_counter(), time.process_time()
            if c:
                trainer.loss_and_backward(exs, step + 1, 0)
            else:
                trainer.loss(exs, step + 1, 0)["loss"].backward()
            wall[c].append(time.perf_counter() - t0)
            cpu[c].append(time.process_time() - c0)
            print(f"step {step + 1} chunk {c}: {wall[c][-1]:.1f} s wall, {cpu[c][-1]:.1f} s CPU", flush=True)
    result = {
        "label": args.label,
        "what": "one process, the default config, the batches of the first steps; each batch's loss + backward timed plain, "
        "then with each grad_cache_chunk; no optimizer step",
        "wall_s": {str(c): v for c, v in wall.items()},
        "cpu_s": {str(c): v for c, v in cpu.items()},
        "ratio_wall": {str(c): sum(wall[c]) / sum(wall[0]) for c in chunks},
        "ratio_cpu": {str(c): sum(cpu[c]) / sum(cpu[0]) for c in chunks},
        "load_average_1min_at_end": os.getloadavg()[0],
        "torch_threads": __import__("torch").get_num_threads(),
    }
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    old[args.label] = result
    atomic_write_json(args.out, old)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
