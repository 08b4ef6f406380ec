"""``searchr3 train sft``: stage 1, supervised training (LM + KL + InfoNCE + triplet)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from searchr3.commands import Precision, precision_option

_S = "searchr3.sft:SFTConfig"
DEFAULTS = {
    **{
        name: (_S, name)
        for name in (
            "out",
            "model",
            "split",
            "batch_size",
            "grad_accum",
            "lr",
            "token_lr",
            "lora_r",
            "lora_alpha",
            "lora_layers",
            "cloze",
            "wordnet",
            "hard_negatives",
            "mix_alpha",
            "max_per_source",
            "traces",
            "trace_samples",
            "trace_temperature",
            "trace_min_tokens",
            "trace_mix_weight",
            "trace_embedding",
            "reasoning_share",
            "reasoning_tokens",
            "query_tokens",
            "doc_tokens",
            "temperature",
            "margin",
            "w_lm",
            "w_kl",
            "w_nce",
            "w_triplet",
            "w_emit",
            "eval_queries",
            "eval_every",
            "save_every",
            "gradient_checkpointing",
            "grad_cache_chunk",
            "bf16",
            "seed",
        )
    },
    "steps": (_S, "max_steps"),
    "full": (_S, "full_finetune"),
}
CLI_ONLY = {
    "data",
    "weight",
    "matryoshka_dim",
    "resume",
}  # --data: repeatable, none given means SFTConfig's default folders; --weight: NAME=W


def sft(
    out: Path = typer.Option(
        Path("runs/sft-default"), "--out", help="Run folder (config, traces, log, checkpoint, final model, curves.png)."
    ),
    data: Optional[List[Path]] = typer.Option(
        None,
        "--data",
        help="BEIR folder with a training qrels split; repeat for several (default: the six folders of ../shared/data/train).",
    ),
    weight: Optional[List[str]] = typer.Option(
        None, "--weight", help="Sampling weight multiplier of one source, NAME=W (folder name); repeatable."
    ),
    matryoshka_dim: Optional[List[int]] = typer.Option(
        None,
        "--matryoshka-dim",
        min=1,
        help="Also train the leading N dimensions (InfoNCE on the prefix); repeatable, e.g. 64 128 256.",
    ),
    mix_alpha: float = typer.Option(
        0.5, "--mix-alpha", help="Source probability ~ weight * size**alpha (0 = uniform, 1 = by size)."
    ),
    max_per_source: int = typer.Option(0, "--max-per-source", help="Use at most N queries of each folder (0 = all)."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Base model: HF causal-LM folder or saved searchr3 model (default: built-in SmolLM2)."
    ),
    split: str = typer.Option("train", "--split", help="qrels split to train on."),
    steps: int = typer.Option(12, "--steps", help="Optimizer steps (the default finishes in ~10-15 minutes on 2 idle cores)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Examples per micro-batch (in-batch negatives)."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(8e-4, "--lr", help="Peak learning rate (linear warm-up, then linear decay to 0)."),
    token_lr: float = typer.Option(
        5e-3, "--token-lr", help="Learning rate of the embedding token's row (its logit must climb far to be emitted)."
    ),
    lora_r: int = typer.Option(16, "--lora-r", help="LoRA rank."),
    lora_alpha: int = typer.Option(32, "--lora-alpha", help="LoRA scaling alpha (the update is scaled by alpha / r)."),
    lora_layers: int = typer.Option(12, "--lora-layers", help="LoRA on the top N layers only (0 = all layers + the token row)."),
    full: bool = typer.Option(False, "--full", help="Full fine-tuning instead of LoRA (keeps a frozen copy for the KL term)."),
    cloze: int = typer.Option(0, "--cloze", help="Inverse-cloze examples from the training corpora."),
    wordnet: int = typer.Option(0, "--wordnet", help="WordNet definition -> word examples (needs wordnet-base)."),
    hard_negatives: int = typer.Option(1, "--hard-negatives", help="BM25 hard negatives per example."),
    reasoning_share: float = typer.Option(0.3, "--reasoning-share", help="Share of queries also trained with a reasoning trace."),
    reasoning_tokens: int = typer.Option(48, "--reasoning-tokens", help="Length limit of the reasoning traces."),
    traces: str = typer.Option(
        "keywords",
        "--traces",
        help="Reasoning traces: keywords (terms of the positive the query lacks), predictable (of its top 20 such terms, the 6 the model finds most likely after the query: names it could learn to write), self (the model's own samples, kept when they beat the direct embedding, else the empty trace) or model (the base model's, once).",
    ),
    trace_samples: int = typer.Option(4, "--trace-samples", help="--traces self: analyses sampled per reasoning query and step."),
    trace_temperature: float = typer.Option(0.8, "--trace-temperature", help="--traces self: their sampling temperature."),
    trace_min_tokens: int = typer.Option(
        4,
        "--trace-min-tokens",
        help="--traces self: samples write at least N tokens before the token may end them (keeps exploring non-empty analyses).",
    ),
    trace_mix_weight: float = typer.Option(
        0.0,
        "--trace-mix-weight",
        min=0.0,
        max=0.99,
        help="> 0: reasoning rows train (and self traces are chosen) as the mix mode's embedding with this weight on the direct one; 0: the reasoning embedding alone.",
    ),
    trace_embedding: str = typer.Option(
        "taught",
        "--trace-embedding",
        help="Reasoning rows' contrastive terms read the embedding after: taught (the trace the LM terms teach) or own (the model's greedy trace, written each step; the taught trace then trains the LM terms only).",
    ),
    query_tokens: int = typer.Option(64, "--query-tokens", help="Text tokens kept per query."),
    doc_tokens: int = typer.Option(128, "--doc-tokens", help="Text tokens kept per document."),
    temperature: float = typer.Option(0.02, "--temperature", help="InfoNCE temperature tau (0.02 won a sweep of 0.02/0.05/0.1)."),
    margin: float = typer.Option(0.1, "--margin", help="Triplet margin theta."),
    w_lm: float = typer.Option(1.0, "--w-lm", help="Weight of the LM loss."),
    w_kl: float = typer.Option(0.1, "--w-kl", help="Weight of the KL-to-base loss."),
    w_nce: float = typer.Option(1.0, "--w-nce", help="Weight of InfoNCE."),
    w_triplet: float = typer.Option(0.5, "--w-triplet", help="Weight of the triplet loss."),
    w_emit: float = typer.Option(
        5.0,
        "--w-emit",
        help="LM weight of the token that ends a reasoning trace (the emission decision), relative to other positions.",
    ),
    eval_queries: int = typer.Option(20, "--eval-queries", help="Queries of the first folder held out for periodic evaluation."),
    eval_every: int = typer.Option(6, "--eval-every", help="Evaluate every N steps (0 = never)."),
    save_every: int = typer.Option(4, "--save-every", help="Checkpoint every N steps."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Trade compute for memory."),
    grad_cache_chunk: int = typer.Option(
        8,
        "--grad-cache-chunk",
        min=0,
        help="Gradient caching: embed the micro-batch without gradient, then redo the forward with gradient N sequences at a time (same gradients, peak memory of one chunk, one more forward of the LoRA layers); 0 = off.",
    ),
    bf16: Precision = precision_option(),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
) -> None:
    """Supervised training: teach the model to end answers with <|embed_token|> and shape its embedding space."""
    from searchr3.commands import UsageError, build_config
    from searchr3.sft import SFTConfig, train_sft

    weights = {}
    for item in weight or []:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise UsageError(f"--weight takes NAME=W with a number W, got {item!r}")
    settings = {} if not data else {"data": [str(d) for d in data]}
    cfg = build_config(
        SFTConfig,
        out=str(out),
        model=model,
        split=split,
        max_steps=steps,
        weights=weights,
        matryoshka_dims=list(matryoshka_dim or []),
        mix_alpha=mix_alpha,
        max_per_source=max_per_source,
        lora_layers=lora_layers,
        traces=traces,
        trace_samples=trace_samples,
        trace_temperature=trace_temperature,
        trace_min_tokens=trace_min_tokens,
        trace_mix_weight=trace_mix_weight,
        trace_embedding=trace_embedding,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        token_lr=token_lr,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        full_finetune=full,
        cloze=cloze,
        wordnet=wordnet,
        hard_negatives=hard_negatives,
        reasoning_share=reasoning_share,
        reasoning_tokens=reasoning_tokens,
        query_tokens=query_tokens,
        doc_tokens=doc_tokens,
        temperature=temperature,
        margin=margin,
        w_lm=w_lm,
        w_kl=w_kl,
        w_nce=w_nce,
        w_triplet=w_triplet,
        w_emit=w_emit,
        eval_queries=eval_queries,
        eval_every=eval_every,
        save_every=save_every,
        gradient_checkpointing=gradient_checkpointing,
        grad_cache_chunk=grad_cache_chunk,
        bf16=bf16,
        seed=seed,
        **settings,
    )
    final = train_sft(cfg, resume=resume)
    typer.echo(f"final model: {final}")
