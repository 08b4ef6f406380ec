"""The ``searchr3`` command line. Heavy imports live inside the commands so ``--help`` is instant."""
from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from searchr3.commands import index as index_cmd
from searchr3.commands import rl as rl_cmd
from searchr3.commands import search as search_cmd
from searchr3.commands import serve as serve_cmd
from searchr3.commands import sft as sft_cmd

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded at run time

DEFAULT_DATA = Path("../shared/data")

app = typer.Typer(help="Search-R3: a chat LLM as a search embedder whose embeddings come out of its own reasoning.", no_args_is_help=True, pretty_exceptions_show_locals=False)
train_app = typer.Typer(help="Train the embedder: stage 1 (sft) and stage 2 (rl).", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(index_cmd.app, name="index")
app.command("search")(search_cmd.search)
app.command("serve")(serve_cmd.serve)
train_app.command("sft")(sft_cmd.sft)
train_app.command("rl")(rl_cmd.rl)


class Reasoning(str, Enum):
    off = "off"
    on = "on"
    mix = "mix"
    both = "both"
    all = "all"


def evaluate(
    data: list[Path],
    split: str,
    model: Optional[str],
    reasoning: Reasoning,
    baselines: bool,
    out: Optional[Path],
    batch_size: int,
    max_length: int,
    title: str,
    cache: bool = True,
    max_docs: int = 0,
) -> list[dict]:
    """Evaluate a searchr3 model (and the baselines) on one BEIR split; print the table, write JSON."""
    from rich.console import Console

    from searchr3 import SearchR3
    from searchr3.evaluation import format_table, run_evaluation, write_results

    console = Console()
    systems: list = []
    if baselines:
        from searchr3.baselines import MiniLMEncoder

        systems += [("BM25", "bm25", False), ("all-MiniLM-L6-v2", MiniLMEncoder(), False)]
    if model != "none":
        m = SearchR3.from_pretrained(model, max_length=max_length)
        name = f"searchr3 ({model or 'smollm2'})"
        modes = {"off": [False], "on": [True], "mix": ["mix"], "both": [False, True], "all": [False, True, "mix"]}[reasoning.value]
        systems += [(name, m, r) for r in modes]
    from searchr3.evaluation import default_corpus_cache

    emb_cache = default_corpus_cache() if cache else None
    rows = []
    for folder in data:
        part = run_evaluation(folder, split, systems, batch_size=batch_size, show_progress_bar=True, cache_dir=emb_cache, max_docs=max_docs)
        console.print(format_table(part, title=f"{part[0]['dataset']} ({split})" if len(data) > 1 else title))
        rows += part
    if out is not None:
        write_results(rows, out)
        console.print(f"results written to {out}")
    return rows


@app.command("eval")
def eval_command(
    data: Annotated[list[Path], typer.Option(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/); repeat to evaluate on several in one run.")],
    split: Annotated[str, typer.Option(help="qrels split to evaluate.")] = "test",
    model: Annotated[Optional[str], typer.Option(help="Model folder, 'smollm2' (built-in, default) or 'none' for baselines only.")] = None,
    reasoning: Annotated[Reasoning, typer.Option(help="Query encoding: direct (off), reasoning first (on), mix (0.6 direct + 0.4 reasoning), both (off and on) or all three.")] = Reasoning.both,
    baselines: Annotated[bool, typer.Option(help="Also evaluate BM25 and all-MiniLM-L6-v2.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Write the rows as JSON here.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    max_length: Annotated[int, typer.Option(min=16, help="Token budget per text (prompt included).")] = 512,
    cache: Annotated[bool, typer.Option(help="Reuse this model's corpus embeddings from the cache folder.")] = True,
    max_docs: Annotated[int, typer.Option(min=0, help="Evaluate on the corpus's first N documents only, qrels restricted to them (0 = all).")] = 0,
) -> None:
    """Retrieval quality (nDCG@10, Recall@100, MRR@10) on a BEIR folder."""
    evaluate(data, split, model, reasoning, baselines, out, batch_size, max_length, title=f"{data[0].name} ({split})", cache=cache, max_docs=max_docs)


class Preset(str, Enum):
    quick = "quick"
    full = "full"


@app.command()
def pipeline(
    preset: Annotated[Preset, typer.Option(help="quick: under 15 min on 2 cores (evaluates on a 1,000-passage sub-corpus); full: longer training, whole corpus (1-2 h).")] = Preset.quick,
    out: Annotated[Path, typer.Option(help="Run folder; an interrupted pipeline resumes from it.")] = Path("runs/pipeline"),
    data: Annotated[Path, typer.Option(help="Folder holding msmarco-mini and wikiqa-dev (evaluation), train/ (stage 1) and scifact-2k (stage 2).")] = DEFAULT_DATA,
    eval_data: Annotated[Optional[list[Path]], typer.Option(help="BEIR folder to evaluate on (split test); repeatable; default DATA/msmarco-mini and DATA/wikiqa-dev.")] = None,
    train_data: Annotated[Optional[list[Path]], typer.Option(help="BEIR folder for stage 1 (split train); repeatable; default the folders of DATA/train.")] = None,
    rl_data: Annotated[Optional[Path], typer.Option(help="BEIR folder for stage 2 (split train); default DATA/scifact-2k.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Base model folder (default: built-in SmolLM2).")] = None,
) -> None:
    """The main job: zero-shot evaluation, stage 1 (SFT), stage 2 (RL), final evaluation, report and plots."""
    from rich.console import Console
    from rich.markdown import Markdown

    from searchr3.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(
        out=str(out), preset=preset.value, data=str(data), model=model,
        eval_data=[str(p) for p in eval_data] if eval_data else None, train_data=[str(p) for p in train_data] if train_data else None,
        rl_data=str(rl_data) if rl_data else None,
    )
    run_pipeline(cfg)
    Console().print(Markdown((out / "results.md").read_text()))
    typer.echo(f"report: {out / 'results.md'}, plots: {out / 'ndcg.png'}, examples: {out / 'examples.md'}")


def main() -> None:
    """Entry point: known bad-input errors become one clear line and exit code 2, not a traceback."""
    import click

    try:
        code = app(standalone_mode=False)  # returns the code of a typer.Exit instead of exiting
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.Abort:
        raise SystemExit(1) from None
    except Exception as exc:
        # Imported only now: the error classes' modules pull in torch, which --help must not wait for.
        from searchr3.backbone import ModelLoadError
        from searchr3.data.beir import DataError

        if isinstance(exc, (DataError, ModelLoadError, FileNotFoundError)):
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise SystemExit(2) from None
        raise
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
