"""``searchr3 train rl``: stage 2, GRPO against the retrieval environment."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from searchr3.commands import Precision, precision_option

_G, _E = "searchr3.grpo:GRPOConfig", "searchr3.env:EnvConfig"
DEFAULTS = {
    **{
        name: (_G, name)
        for name in (
            "out",
            "init",
            "data",
            "split",
            "steps",
            "queries_per_step",
            "group",
            "max_new_tokens",
            "reward",
            "mix_weight",
            "hard_below",
            "lr",
            "lr_schedule",
            "lora_layers",
            "pg_coef",
            "kl_coef",
            "nce_coef",
            "nce_negatives",
            "nce_on",
            "doc_max_length",
            "corpus_limit",
            "max_queries",
            "save_every",
            "seed",
            "bf16",
        )
    },
    **{
        name: (_E, name)
        for name in (
            "refresh",
            "neighbours",
            "max_age",
            "limit_penalty",
            "repair_all",
            "repair_margin",
            "repair_clearance",
            "full_at_drift",
        )
    },
}
CLI_ONLY = {"resume", "eval_data", "eval_docs", "eval_init"}


def rl(
    out: Path = typer.Option(Path("runs/rl-default"), "--out", help="Run folder (config, checkpoint, log, final model, plots)."),
    init: Optional[str] = typer.Option(
        None, "--init", help="Model to start from, e.g. the SFT checkpoint (default: built-in SmolLM2)."
    ),
    data: list[Path] = typer.Option(
        [Path("../shared/data/scifact-2k")],
        "--data",
        metavar="FOLDER",
        help="BEIR folder with training queries, qrels and corpus; repeatable: several folders make one environment (their corpora side by side).",
    ),
    split: str = typer.Option("train", "--split", help="qrels split to train on."),
    steps: int = typer.Option(10, "--steps", min=1, help="Optimizer steps."),
    queries_per_step: int = typer.Option(4, "--queries-per-step", min=1),
    group: int = typer.Option(4, "--group", min=2, help="Rollouts per query (G)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1, help="Reasoning length limit."),
    reward: str = typer.Option(
        "gain",
        "--reward",
        help="gain: nDCG minus the direct embedding's (reasoning earns what it adds); mix: the same gain, the rollout scored as the mix query mode's embedding; ndcg: nDCG alone.",
    ),
    mix_weight: float = typer.Option(
        0.6,
        "--mix-weight",
        help="Weight of the direct embedding in the mix: the one scored (--reward mix) and the one the contrastive term reads (--nce-on mix).",
    ),
    hard_below: float = typer.Option(
        0.0,
        "--hard-below",
        help="Train only on queries whose direct embedding (initial model) scores nDCG@k below this (0 = every query).",
    ),
    lr: float = typer.Option(5e-5, "--lr"),
    lr_schedule: str = typer.Option(
        "linear", "--lr-schedule", help="linear: decay from --lr to lr/steps at the last step; constant."
    ),
    lora_layers: int = typer.Option(
        12,
        "--lora-layers",
        min=0,
        help="The adapter trains the top N decoder layers only (0 = all); the documents' states below them are cached, so a refresh runs N layers.",
    ),
    pg_coef: float = typer.Option(
        1.0,
        "--pg-coef",
        min=0,
        help="Weight of the policy-gradient term (0: an ablation, the rollouts train only the contrastive term).",
    ),
    kl_coef: float = typer.Option(0.04, "--kl-coef", min=0),
    nce_coef: float = typer.Option(0.5, "--nce-coef", min=0, help="Weight of the contrastive term on rollout embeddings."),
    nce_negatives: str = typer.Option(
        "all",
        "--nce-negatives",
        help="The contrastive term's negatives: all of the step's candidates, or only the fresh ones (re-encoded with the current weights this step).",
    ),
    nce_on: str = typer.Option(
        "trace",
        "--nce-on",
        help="What the contrastive term reads: the embedding after each rollout (trace), or the mix query mode's (mix: --mix-weight on the direct embedding, held fixed).",
    ),
    limit_penalty: float = typer.Option(
        0.5, "--limit-penalty", min=0, help="Reward penalty of a rollout that hits the length limit without the token."
    ),
    refresh: str = typer.Option(
        "lazy", "--refresh", help="Index refresh policy: none, local, lazy (re-encode what each step reads) or full."
    ),
    neighbours: int = typer.Option(2, "--neighbours", min=0, help="Graph neighbours refreshed per touched document (local)."),
    max_age: int = typer.Option(0, "--max-age", min=0, help="Re-encode documents older than this many versions (0 = off)."),
    repair_all: bool = typer.Option(
        False,
        "--repair-all/--repair-deciding",
        help="lazy: re-encode every stale top candidate, or only those that decide the reward.",
    ),
    repair_margin: float = typer.Option(
        0.0,
        "--repair-margin",
        min=0,
        help="lazy: also re-encode stale rows their drift could lift into the ranking (multiplier of the drift bound; 0 = off).",
    ),
    repair_clearance: float = typer.Option(
        0.0,
        "--repair-clearance",
        min=0,
        help="lazy: leave stale deciding rows whose score clears every relevant document's by more than this multiple of their drift bound (0 = off).",
    ),
    full_at_drift: float = typer.Option(
        0.0,
        "--full-at-drift",
        min=0,
        help="Re-encode the whole corpus at a refresh whose re-encoded rows moved more than this (mean cosine distance; 0 = never).",
    ),
    doc_max_length: int = typer.Option(256, "--doc-max-length", min=16, help="Token limit of corpus documents."),
    corpus_limit: int = typer.Option(
        0, "--corpus-limit", min=0, help="Per folder: use the first N documents plus every judged one (0 = all)."
    ),
    max_queries: int = typer.Option(
        0,
        "--max-queries",
        min=0,
        help="Per folder: train on its first N judged queries only, with --corpus-limit documents in all, theirs first (0 = every query).",
    ),
    save_every: int = typer.Option(5, "--save-every", min=1, help="Checkpoint every N steps."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last checkpoint (same settings and data)."
    ),
    eval_data: Optional[Path] = typer.Option(
        None, "--eval", help="BEIR folder to evaluate on at the end (split test), e.g. ../shared/data/msmarco-mini."
    ),
    eval_docs: int = typer.Option(
        0, "--eval-docs", min=0, help="Evaluate on the first N documents of the --eval corpus only (0 = all)."
    ),
    eval_init: bool = typer.Option(True, "--eval-init/--no-eval-init", help="Also evaluate the --init model."),
    bf16: Precision = precision_option(),
) -> None:
    """Train with GRPO: G reasoning rollouts per query, rewards from an HNSW index with selective refresh."""
    import json

    from searchr3.commands import UsageError, build_config
    from searchr3.env import EnvConfig
    from searchr3.grpo import GRPOConfig, train_rl

    for folder in [*data] + ([eval_data] if eval_data else []):
        if not folder.is_dir():
            raise UsageError(f"data folder {folder} does not exist")
    cfg = build_config(
        GRPOConfig,
        out=str(out),
        init=init,
        data=[str(p) for p in data],
        split=split,
        steps=steps,
        queries_per_step=queries_per_step,
        group=group,
        max_new_tokens=max_new_tokens,
        reward=reward,
        mix_weight=mix_weight,
        hard_below=hard_below,
        lr=lr,
        lr_schedule=lr_schedule,
        lora_layers=lora_layers,
        pg_coef=pg_coef,
        kl_coef=kl_coef,
        nce_coef=nce_coef,
        nce_negatives=nce_negatives,
        nce_on=nce_on,
        doc_max_length=doc_max_length,
        corpus_limit=corpus_limit,
        max_queries=max_queries,
        save_every=save_every,
        seed=seed,
        bf16=bf16,
        env=build_config(
            EnvConfig,
            refresh=refresh,
            neighbours=neighbours,
            max_age=max_age,
            limit_penalty=limit_penalty,
            repair_all=repair_all,
            repair_margin=repair_margin,
            repair_clearance=repair_clearance,
            full_at_drift=full_at_drift,
        ),
    )
    model_dir = train_rl(cfg, resume=resume)
    typer.echo(
        f"model: {model_dir}\nlog: {out / 'log.jsonl'}\nreward curve: {out / 'reward.png'}\nindex refresh: {out / 'env.png'}"
    )
    if eval_data:
        from dataclasses import replace

        from searchr3 import SearchR3
        from searchr3.evaluation import run_evaluation, write_results
        from searchr3.retrieval import default_corpus_cache

        models = {}
        if eval_init:
            base = SearchR3.from_pretrained(init, bf16=bf16)
            base.prompts = replace(base.prompts, max_reasoning_tokens=max_new_tokens)
            models[f"init ({init or 'built-in'})"] = base
        models["rl"] = SearchR3.from_pretrained(model_dir, bf16=bf16)
        systems = [(name, m, reasoning) for name, m in models.items() for reasoning in (False, True)]
        rows = run_evaluation(
            str(eval_data), "test", systems, show_progress_bar=True, max_docs=eval_docs, cache_dir=default_corpus_cache()
        )
        write_results(rows, out / "eval.json")
        for r in rows:
            typer.echo(
                json.dumps({k: r[k] for k in ("system", "reasoning", "ndcg@10", "recall@100", "mrr@10", "seconds_per_query")})
            )
