"""``searchr3 pipeline``: the main job (zero-shot -> SFT -> RL -> final evaluation -> report)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULTS = {
    "preset": ("searchr3.pipeline:PipelineConfig", "preset"),
    "out": ("searchr3.pipeline:PipelineConfig", "out"),
    "data": ("searchr3.pipeline:PipelineConfig", "data"),
    "eval_data": ("searchr3.pipeline:PipelineConfig", "eval_data"),
    "train_data": ("searchr3.pipeline:PipelineConfig", "train_data"),
    "rl_data": ("searchr3.pipeline:PipelineConfig", "rl_data"),
    "model": ("searchr3.pipeline:PipelineConfig", "model"),
    "evaluate_sft": ("searchr3.pipeline:PipelineConfig", "evaluate_sft"),
}
CLI_ONLY: set[str] = set()


class Preset(str, Enum):
    quick = "quick"
    full = "full"


def pipeline(
    preset: Annotated[
        Preset,
        typer.Option(
            help="quick: ~15 min on 2 idle cores (evaluates on 40 queries and 500 passages of each set); full: longer training, whole corpora (1-2 h)."
        ),
    ] = Preset.quick,
    out: Annotated[Path, typer.Option(help="Run folder; an interrupted pipeline resumes from it.")] = Path("runs/pipeline"),
    data: Annotated[
        Path,
        typer.Option(
            help="Folder holding msmarco-mini and wikiqa-dev (evaluation), train/ (stage 1) and the RL folder (stage 2: scifact-2k for quick, train/wikiqa for full)."
        ),
    ] = Path("../shared/data"),
    eval_data: Annotated[
        Optional[list[Path]],
        typer.Option(help="BEIR folder to evaluate on (split test); repeatable; default DATA/msmarco-mini and DATA/wikiqa-dev."),
    ] = None,
    train_data: Annotated[
        Optional[list[Path]],
        typer.Option(help="BEIR folder for stage 1 (split train); repeatable; default the folders of DATA/train."),
    ] = None,
    rl_data: Annotated[
        Optional[list[Path]],
        typer.Option(
            help="BEIR folder for stage 2 (split train); repeatable: several make one environment; default the preset's: DATA/scifact-2k (quick), DATA/train/wikiqa (full)."
        ),
    ] = None,
    model: Annotated[Optional[str], typer.Option(help="Base model folder (default: built-in SmolLM2).")] = None,
    evaluate_sft: Annotated[
        Optional[bool],
        typer.Option(
            "--evaluate-sft/--no-evaluate-sft",
            help="The final stage also evaluates the stage-1 (SFT) model, not only SFT+RL (default: the preset's; quick yes, full no).",
        ),
    ] = None,
) -> None:
    """The main job: zero-shot evaluation, stage 1 (SFT), stage 2 (RL), final evaluation, report and plots."""
    from rich.console import Console
    from rich.markdown import Markdown

    from searchr3.commands import build_config
    from searchr3.pipeline import PipelineConfig, run_pipeline

    cfg = build_config(
        PipelineConfig,
        out=str(out),
        preset=preset.value,
        data=str(data),
        model=model,
        eval_data=[str(p) for p in eval_data] if eval_data else None,
        train_data=[str(p) for p in train_data] if train_data else None,
        rl_data=[str(p) for p in rl_data] if rl_data else None,
        evaluate_sft=evaluate_sft,
    )
    run_pipeline(cfg)
    Console().print(Markdown((out / "results.md").read_text()))
    typer.echo(f"report: {out / 'results.md'}, plots: {out / 'ndcg.png'}, examples: {out / 'examples.md'}")
