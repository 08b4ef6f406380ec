"""Wall time and results of one whole pipeline run (the main job), from a cold or warm cache.

    python benchmarks/bench_pipeline.py --preset quick --cold-cache
    python benchmarks/bench_pipeline.py --preset full

Runs ``searchr3 pipeline`` in-process (same code path as the CLI) into ``--work`` and writes
``benchmarks/results/pipeline_<preset>.json``: total wall seconds, per-stage seconds, the results
table rows, the reasoning examples, and whether the cache started empty. ``--cold-cache`` points
``SEARCHR3_CACHE`` at an empty folder, so the built-in model is converted and every corpus is
encoded as on a fresh machine. A ``--work`` folder left by an interrupted run is resumed (the
stages' own resume), in which case the wall time covers only the remaining stages and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=["quick", "full"], default="quick")
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--work", default=None, help="pipeline run folder (default: runs/bench-<preset>)")
    ap.add_argument("--cold-cache", action="store_true", help="start from an empty searchr3 cache folder")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    if args.cold_cache:
        os.environ["SEARCHR3_CACHE"] = tempfile.mkdtemp(prefix="searchr3-cold-")

    from searchr3.io import atomic_write_json
    from searchr3.pipeline import PipelineConfig, run_pipeline

    work = Path(args.work or f"runs/bench-{args.preset}")
    resumed = sorted(p.parent.name for p in work.glob("*/done.json"))
    start = time.perf_counter()
    summary = run_pipeline(PipelineConfig(out=str(work), preset=args.preset, data=args.data))
    seconds = time.perf_counter() - start
    result = {
        "preset": args.preset,
        "wall_seconds": round(seconds, 1),
        "cold_cache": args.cold_cache,
        "stages_already_done": resumed,
        "cpu_count": os.cpu_count(),
        **summary,
    }
    atomic_write_json(Path(args.out) / f"pipeline_{args.preset}.json", result)
    print((work / "results.md").read_text())
    print(json.dumps({"wall_seconds": result["wall_seconds"], "stage_seconds": summary["stage_seconds"]}))


if __name__ == "__main__":
    main()
