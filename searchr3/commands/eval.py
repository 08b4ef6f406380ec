"""``searchr3 eval``: retrieval quality of a model (and the baselines) on one BEIR split."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from searchr3.commands import Precision, precision_option

DEFAULTS = {
    "batch_size": ("searchr3.pipeline:PipelineConfig", "batch_size"),
    "max_length": ("searchr3.model:SearchR3.from_pretrained", "max_length"),
    "mix_weight": ("searchr3.model:SearchR3._query_or_document", "mix_weight"),
    "samples": ("searchr3.model:SearchR3._query_or_document", "samples"),
    "temperature": ("searchr3.model:SearchR3.reason", "temperature"),
    "bf16": ("searchr3.model:SearchR3.from_pretrained", "bf16"),
}
CLI_ONLY = {"data", "split", "model", "reasoning", "baselines", "out", "cache", "max_docs", "max_queries"}


class Reasoning(str, Enum):
    off = "off"
    on = "on"
    mix = "mix"
    both = "both"
    all = "all"


MODES = {"off": [False], "on": [True], "mix": ["mix"], "both": [False, True], "all": [False, True, "mix"]}


def evaluate(
    data: Path | list[Path],
    split: str = "test",
    model: Optional[str] = None,
    reasoning: Reasoning = Reasoning.both,
    baselines: bool = False,
    out: Optional[Path] = None,
    batch_size: int = 16,
    max_length: Optional[int] = None,
    title: str = "",
    cache: bool = True,
    max_docs: int = 0,
    max_queries: int = 0,
    mix_weight: float = 0.6,
    samples: int = 1,
    temperature: float = 1.0,
    bf16: bool | None = None,
) -> list[dict]:
    """Evaluate a searchr3 model (and the baselines) on one BEIR split of each folder; print a table per
    folder, write all rows as JSON."""
    from rich.console import Console

    from searchr3 import SearchR3
    from searchr3.evaluation import format_table, run_evaluation, write_results
    from searchr3.retrieval import default_corpus_cache

    # Checked before the model loads and the corpus is encoded (the model would refuse them only then).
    if samples < 1 or not 0.0 <= mix_weight <= 1.0 or not temperature > 0:
        from searchr3.commands import UsageError

        raise UsageError("--samples must be >= 1, --mix-weight in [0, 1] and --temperature > 0")
    generation = {"mix_weight": mix_weight, "samples": samples, **({"temperature": temperature} if samples > 1 else {})}
    # Piped or captured output has no terminal width: give the nine-column table room instead of folding headers.
    console = Console(width=None if sys.stdout.isatty() else 160)
    systems: list = []
    if baselines:
        from searchr3.baselines import MiniLMEncoder

        systems += [("BM25", "bm25", False), ("all-MiniLM-L6-v2", MiniLMEncoder(), False)]
    if model != "none":
        m = SearchR3.from_pretrained(model, max_length=max_length, bf16=bf16)
        name = f"searchr3 ({model or 'smollm2'})"
        systems += [(name, m, r, generation) for r in MODES[Reasoning(reasoning).value]]
    folders = [data] if isinstance(data, (str, Path)) else list(data)
    rows = []
    for folder in folders:
        part = run_evaluation(
            folder,
            split,
            systems,
            batch_size=batch_size,
            show_progress_bar=True,
            cache_dir=default_corpus_cache() if cache else None,
            max_docs=max_docs,
            max_queries=max_queries,
            per_query=out is not None,  # the results file keeps every query's metrics for paired comparisons
        )
        console.print(format_table(part, title=title if title and len(folders) == 1 else f"{part[0]['dataset']} ({split})"))
        rows += part
    if out is not None:
        write_results(rows, out)
        console.print(f"results written to {out}")
    return rows


def eval_command(
    data: Annotated[
        list[Path],
        typer.Option(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/); repeat to evaluate on several in one run."),
    ],
    split: Annotated[str, typer.Option(help="qrels split to evaluate.")] = "test",
    model: Annotated[
        Optional[str], typer.Option(help="Model folder, 'smollm2' (built-in, default) or 'none' for baselines only.")
    ] = None,
    reasoning: Annotated[
        Reasoning,
        typer.Option(
            help="Query encoding: direct (off), reasoning first (on), mix (--mix-weight x direct + the rest x reasoning), both (off and on), or all three."
        ),
    ] = Reasoning.both,
    mix_weight: Annotated[float, typer.Option(help="mix: weight of the direct embedding (the reasoning one gets 1 - w).")] = 0.6,
    samples: Annotated[
        int, typer.Option(help="on/mix: reasoning rollouts per query, their embeddings averaged (1 = greedy; more are sampled).")
    ] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the rollouts when --samples > 1.")] = 1.0,
    baselines: Annotated[bool, typer.Option(help="Also evaluate BM25 and all-MiniLM-L6-v2.")] = False,
    out: Annotated[
        Optional[Path], typer.Option(help="Write the rows as JSON here, each with every judged query's metrics (per_query).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    max_length: Annotated[
        Optional[int], typer.Option(min=16, help="Token budget per text, prompt included (default: the model's, 512).")
    ] = None,
    cache: Annotated[bool, typer.Option(help="Reuse this model's corpus embeddings from the cache folder.")] = True,
    max_docs: Annotated[
        int, typer.Option(min=0, help="Evaluate on the corpus's first N documents only, qrels restricted to them (0 = all).")
    ] = 0,
    max_queries: Annotated[
        int,
        typer.Option(
            min=0,
            help="Evaluate the first N judged queries only; their relevant documents come first within --max-docs (0 = all).",
        ),
    ] = 0,
    bf16: Precision = precision_option(),
) -> None:
    """Retrieval quality (nDCG@10, Recall@100, MRR@10) on one or more BEIR folders."""
    evaluate(
        data,
        split,
        model,
        reasoning,
        baselines,
        out,
        batch_size,
        max_length,
        cache=cache,
        max_docs=max_docs,
        max_queries=max_queries,
        mix_weight=mix_weight,
        samples=samples,
        temperature=temperature,
        bf16=bf16,
    )
