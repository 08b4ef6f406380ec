"""Reasoning text of a trained model on the first judged queries of each development set (for the report).

python benchmarks/reasoning_examples.py MODEL [--n 6] [--out benchmarks/results/reasoning_examples.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--data", action="append", default=None, help="BEIR folder (split test), repeatable")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reasoning_examples.md")
    args = ap.parse_args()

    from benchmarks.devsets import dev_folders
    from searchr3 import SearchR3
    from searchr3.data.beir import load_beir
    from searchr3.io import atomic_write_text

    m = SearchR3.from_pretrained(args.model)
    folders = dev_folders(args.data)
    p = m.prompts
    lines = [
        f"# Reasoning examples: `{args.model}`",
        "",
        f"Greedy, reasoning prefix {p.reasoning_prefix!r}, repetition penalty {p.repetition_penalty}, "
        f"at most {p.max_reasoning_tokens} new tokens. `emitted`: the model wrote `<|embed_token|>` itself.",
        "",
    ]
    for folder in folders:
        ds = load_beir(folder, "test")
        queries = [ds.queries[q] for q in ds.judged_query_ids()[: args.n]]
        ro = m.reason(queries)
        lines += [f"## {ds.name}", ""]
        for q, t, e, c in zip(queries, ro.texts, ro.emitted, ro.completion_ids):
            lines.append(f"- *{q}* → {t} ({'emitted' if e else 'token appended'}, {len(c)} tokens)")
        lines.append("")
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
