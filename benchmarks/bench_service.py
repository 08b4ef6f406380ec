"""Load-test the HTTP service on loopback: N concurrent short requests, requests/s and latency percentiles.

Starts ``searchr3 serve IDX`` in a subprocess, fires ``--requests`` requests with at most
``--concurrency`` in flight (default: all at once), half ``POST /v1/embeddings`` (one short query)
and half ``POST /search`` unless ``--endpoint`` picks one, and writes benchmarks/results/service.json.

    python benchmarks/bench_service.py --index runs/scifact-2k.idx --queries ../shared/data/scifact-2k/queries.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from searchr3.io import atomic_write_json

SERVE = "import typer; from searchr3.commands.serve import serve; typer.run(serve)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-c",
        SERVE,
        str(args.index),
        "--port",
        str(port),
        "--max-batch",
        str(args.max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
    ]
    proc = subprocess.Popen(cmd)
    deadline = time.time() + args.start_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("server did not start in time")


async def one(client: httpx.AsyncClient, sem: asyncio.Semaphore, endpoint: str, text: str, k: int):
    async with sem:
        t0 = time.perf_counter()
        if endpoint == "embeddings":
            r = await client.post("/v1/embeddings", json={"input": text, "extra": {"input_type": "query"}})
        else:
            r = await client.post("/search", json={"query": text, "k": k})
        return endpoint, r.status_code, time.perf_counter() - t0


async def load(url: str, texts: list[str], endpoints: list[str], concurrency: int, k: int):
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(client, sem, e, t, k) for e, t in zip(endpoints, texts)))
        return results, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--queries", type=Path, required=True, help="queries.jsonl (BEIR) whose texts are the requests")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=0, help="in flight at once (0 = all)")
    p.add_argument("--endpoint", choices=["mixed", "embeddings", "search"], default="mixed")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--start-timeout", type=float, default=180)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "service.json")
    args = p.parse_args()

    queries = [json.loads(line)["text"] for line in args.queries.read_text().splitlines() if line.strip()]
    texts = [queries[i % len(queries)] for i in range(args.requests)]
    kinds = ["embeddings", "search"] if args.endpoint == "mixed" else [args.endpoint]
    endpoints = [kinds[i % len(kinds)] for i in range(args.requests)]
    concurrency = args.concurrency or args.requests
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port)
    try:
        asyncio.run(load(url, texts[:8], endpoints[:8], 8, args.k))  # warm-up, not measured
        before = httpx.get(f"{url}/health").json()
        results, wall = asyncio.run(load(url, texts, endpoints, concurrency, args.k))
        after = httpx.get(f"{url}/health").json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = np.array([r[2] for r in results]) * 1000
    errors = sum(1 for r in results if r[1] != 200)
    out = {
        "requests": args.requests,
        "concurrency": concurrency,
        "endpoint": args.endpoint,
        "errors": errors,
        "wall_s": round(wall, 3),
        "requests_per_s": round(args.requests / wall, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1),
            "p90": round(float(np.percentile(lat, 90)), 1),
            "p99": round(float(np.percentile(lat, 99)), 1),
            "max": round(float(lat.max()), 1),
        },
        "model_calls": after["batches"] - before["batches"],
        "texts_encoded": after["texts"] - before["texts"],
        "index": str(args.index),
        "documents": after["documents"],
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
    }
    atomic_write_json(args.out, out)
    print(json.dumps(out, indent=2))
    if errors:
        raise SystemExit(f"{errors} requests failed")


if __name__ == "__main__":
    main()
