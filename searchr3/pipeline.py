"""The main job: zero-shot evaluation -> stage 1 (SFT) -> stage 2 (RL) -> final evaluation -> report.

Every stage writes into its own folder under ``out`` and leaves a ``done.json`` when it finished;
a re-run skips finished stages, and the training stages resume from their last checkpoint, so an
interrupted pipeline continues where it stopped. Corpus embeddings are cached per model
fingerprint (see :func:`searchr3.retrieval.cached_encode`), so no model encodes a corpus twice.
The training stages are run folders (:mod:`searchr3.runs`): config first, checkpoints, ``final/``.

Output::

    config.json              the settings, written first; a re-run with other ones is refused
    zero_shot/results.json   base model (reasoning off/on), BM25, MiniLM; every row with its per-query scores
    sft/                     stage 1 run folder (log.jsonl, curves.png, final/)
    rl/                      stage 2 run folder (log.jsonl, reward.png, final/)
    final/results.json       SFT and SFT+RL models, reasoning off/on/mix; with per-query scores
    results.md, results.json the table of everything; ndcg.png (bars); examples.md (reasoning text)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .io import atomic_write_json, atomic_write_text
from .runs import RunFolder, holds_run

log = logging.getLogger(__name__)

# The two presets. ``quick`` aims at 15 minutes on 2 idle cores: short training on the mix, a small RL
# corpus, and evaluation on the first 40 judged queries of each development set and 500 passages, their
# relevant ones first (every system sees the same sub-corpus), with searchr3's texts cut at 256 tokens
# (all-MiniLM-L6-v2 reads 256 word pieces too; BM25 reads everything). Corpus encoding was most of its
# time: three models x two sets. ``full`` trains longer, runs stage 2 on real search queries (WikiQA's
# Bing queries, the query kind of both development sets, over a corpus small enough to index in
# minutes) and evaluates on the whole corpora at the model's 512 tokens. Its stage 2 trains 120 steps on
# the 375 training queries its direct embedding does not already get right (hard_below 1), at lr 1e-4, with
# the contrastive term on the embedding read after each sampled rollout and *without* the policy
# gradient (pg_coef 0): in the ablation of session 18 (docs/results.md, "Stage 2's reward, ablated") the policy
# gradient alone changed no mode by more than 0.015 against the 40-step stage 2 before it, and adding it
# to the contrastive term lowered every mode of both development sets by 0.002-0.032. The reward is still
# computed and logged (mix: what a rollout adds to the mix query mode). Both presets' stage 1 learns at
# the trainer's lr (8e-4; benchmarks/results/sft_lr_ab.json).
# ``rl_data``: the RL folder under ``data`` unless ``--rl-data`` names one.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "eval_docs": 500,
        "eval_queries": 40,
        "eval_max_length": 256,
        "evaluate_sft": True,
        "sft": {"max_steps": 12, "batch_size": 16, "eval_every": 0, "save_every": 4},
        "rl": {
            "steps": 6,
            "queries_per_step": 4,
            "group": 4,
            "max_new_tokens": 32,
            "save_every": 2,
            "corpus_limit": 300,
            "doc_max_length": 128,
        },
        "rl_data": "scifact-2k",
    },
    "full": {
        "eval_docs": 0,
        "eval_queries": 0,
        "eval_max_length": 0,
        # The stage-1 model is not evaluated again at the end: its two whole-corpus encodings cost ~980 s,
        # spent on 40 more SFT steps instead (its held-out rows every 50 steps stay in sft/).
        "evaluate_sft": False,
        "sft": {"max_steps": 240, "batch_size": 16, "eval_every": 50, "save_every": 10},
        "rl": {"steps": 120, "reward": "mix", "hard_below": 1.0, "lr": 1e-4, "pg_coef": 0.0},
        "rl_data": "train/wikiqa",
    },
}
# The development sets, evaluated side by side (two domains; no training folder holds their queries).
EVAL_SETS = ("msmarco-mini", "wikiqa-dev")


@dataclass
class PipelineConfig:
    out: str = "runs/pipeline"
    preset: str = "quick"
    data: str = "../shared/data"  # holds the development sets, train/ (the SFT mix) and the preset's RL folder
    eval_data: list[str] | None = None  # BEIR folders, split test; default: <data>/msmarco-mini and <data>/wikiqa-dev
    train_data: list[str] | None = None  # SFT folders, split train; default: the folders of <data>/train
    # RL folder(s), split train; default: the preset's (quick: <data>/scifact-2k, full: <data>/train/wikiqa)
    rl_data: str | list[str] | None = None
    model: str | None = None  # None = the built-in SmolLM2
    batch_size: int = 16
    eval_docs: int | None = None  # evaluate on N corpus documents of each set (None = the preset's, 0 = all)
    eval_queries: int | None = None  # ... and its first N judged queries, relevant documents first (None = the preset's, 0 = all)
    eval_max_length: int | None = (
        None  # searchr3's token limit per text in the evaluations (None = the preset's, 0 = the model's)
    )
    evaluate_sft: bool | None = None  # the final stage also evaluates the stage-1 model (None = the preset's: quick yes, full no)
    examples: int = 3  # queries whose reasoning text goes into examples.md
    sft: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's SFT settings
    rl: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's RL settings

    def __post_init__(self) -> None:
        from .grpo import folder_list, rl_folders
        from .sft import default_training_folders

        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.eval_docs is None:
            self.eval_docs = PRESETS[self.preset]["eval_docs"]
        if self.eval_queries is None:
            self.eval_queries = PRESETS[self.preset]["eval_queries"]
        if self.eval_max_length is None:
            self.eval_max_length = PRESETS[self.preset]["eval_max_length"]
        if self.evaluate_sft is None:
            self.evaluate_sft = PRESETS[self.preset]["evaluate_sft"]
        if self.eval_max_length and self.eval_max_length < 16:
            raise ValueError(f"eval_max_length must be 0 (the model's) or >= 16, got {self.eval_max_length}")
        if self.eval_queries < 0:
            raise ValueError(f"eval_queries must be >= 0 (0 = every judged query), got {self.eval_queries}")
        if self.eval_docs < 0:
            raise ValueError(f"eval_docs must be >= 0 (0 = the whole corpus), got {self.eval_docs}")
        if not (self.eval_data and self.train_data and self.rl_data) and not Path(self.data).is_dir():
            raise FileNotFoundError(f"data folder {self.data} does not exist")
        if isinstance(self.eval_data, str):
            self.eval_data = [self.eval_data]
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        self.eval_data = [str(p) for p in self.eval_data] if self.eval_data else [str(Path(self.data) / n) for n in EVAL_SETS]
        self.train_data = [str(p) for p in self.train_data] if self.train_data else default_training_folders(self.data)
        self.rl_data = rl_folders(self.rl_data or Path(self.data) / PRESETS[self.preset]["rl_data"])
        if not self.train_data:
            raise FileNotFoundError(f"no training folders under {Path(self.data) / 'train'} (pass train_data)")
        for p in [*self.eval_data, *self.train_data, *folder_list(self.rl_data)]:
            if not Path(p).is_dir():
                raise FileNotFoundError(f"data folder {p} does not exist")


class Pipeline:
    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        from .retrieval import default_corpus_cache

        self.emb_cache = default_corpus_cache()

    # ------------------------------------------------------------------ stage bookkeeping
    def _stage(self, name: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        folder = self.out / name
        done = folder / "done.json"
        if done.is_file():
            log.info("stage %s already done: skipped", name)
            return json.loads(done.read_text())
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = fn(folder)
        result["seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_json(done, result)
        return result

    def _evaluate(self, systems: list, folder: Path) -> list[dict[str, Any]]:
        from .evaluation import run_evaluation, write_results

        rows = []
        for data in self.cfg.eval_data:
            rows += run_evaluation(
                data,
                "test",
                systems,
                batch_size=self.cfg.batch_size,
                show_progress_bar=True,
                cache_dir=self.emb_cache,
                max_docs=self.cfg.eval_docs,
                max_queries=self.cfg.eval_queries,
                per_query=True,  # kept in the stage's results.json for query-by-query comparisons
            )
        write_results(rows, folder / "results.json")
        return rows

    # ------------------------------------------------------------------ stages
    def zero_shot(self, folder: Path) -> dict[str, Any]:
        from .baselines import MiniLMEncoder

        base = self._load(self.cfg.model)
        rows = self._evaluate(
            [
                ("BM25", "bm25", False),
                ("all-MiniLM-L6-v2", MiniLMEncoder(), False),
                ("searchr3 zero-shot", base, False),
                ("searchr3 zero-shot", base, True),
            ],
            folder,
        )
        return {"rows": rows}

    def sft(self, folder: Path) -> dict[str, Any]:
        from .sft import SFTConfig, train_sft

        settings = {**PRESETS[self.cfg.preset]["sft"], **self.cfg.sft}
        cfg = SFTConfig(out=str(folder), model=self.cfg.model, data=list(self.cfg.train_data), **settings)
        final = train_sft(cfg, resume=holds_run(folder))
        return {"model": str(final)}

    def rl(self, folder: Path, init: str) -> dict[str, Any]:
        from .grpo import GRPOConfig, train_rl

        settings = {**PRESETS[self.cfg.preset]["rl"], **self.cfg.rl}
        cfg = GRPOConfig(out=str(folder), init=init, data=self.cfg.rl_data, **settings)
        final = train_rl(cfg, resume=holds_run(folder))
        return {"model": str(final)}

    def final(self, folder: Path, sft_model: str, rl_model: str) -> dict[str, Any]:
        rl = self._load(rl_model)
        models = ([("searchr3 SFT", self._load(sft_model))] if self.cfg.evaluate_sft else []) + [("searchr3 SFT+RL", rl)]
        rows = self._evaluate([(name, m, mode) for name, m in models for mode in (False, True, "mix")], folder)
        return {"rows": rows, "examples": self._examples({"zero-shot": None, "SFT+RL": rl})}

    def _load(self, model: str | None):
        """A searchr3 model to evaluate, at the evaluation's token limit."""
        from . import SearchR3

        return SearchR3.from_pretrained(model, max_length=self.cfg.eval_max_length or None)

    def _examples(self, models: dict[str, Any]) -> list[dict[str, Any]]:
        from .data.beir import load_beir

        ds = load_beir(self.cfg.eval_data[0], "test")
        queries = [ds.queries[q] for q in ds.judged_query_ids()[: self.cfg.examples]]
        out = []
        for name, m in models.items():
            m = m or self._load(self.cfg.model)
            start = time.perf_counter()
            r = m.reason(queries)
            secs = (time.perf_counter() - start) / max(1, len(queries))
            out += [
                {"model": name, "query": q, "reasoning": t, "emitted": e, "seconds_per_query": round(secs, 2)}
                for q, t, e in zip(queries, r.texts, r.emitted)
            ]
        return out

    # ------------------------------------------------------------------ driver
    def prepare(self) -> None:
        """Open ``out`` as a run folder (:class:`~searchr3.runs.RunFolder`): its ``config.json`` is written
        before any stage runs, and a re-run with other settings, or into a folder of something else, is
        refused instead of mixing stages of two configurations."""
        legacy = self.out / "pipeline.json"  # the settings file of pipelines run before config.json
        if legacy.is_file() and not holds_run(self.out):
            atomic_write_json(self.out / "config.json", {"kind": "pipeline", "config": json.loads(legacy.read_text())})
        RunFolder(self.out, "pipeline", asdict(self.cfg), resumable={"out"}).open(resume=holds_run(self.out))

    def run(self) -> dict[str, Any]:
        self.prepare()
        zero = self._stage("zero_shot", self.zero_shot)
        sft = self._stage("sft", self.sft)
        rl = self._stage("rl", lambda f: self.rl(f, sft["model"]))
        final = self._stage("final", lambda f: self.final(f, sft["model"], rl["model"]))
        return self.report(zero, sft, rl, final)

    def report(self, zero: dict, sft: dict, rl: dict, final: dict) -> dict[str, Any]:
        # the per-query scores stay in the stages' results.json; the summary keeps the means
        rows = [{k: v for k, v in r.items() if k != "per_query"} for r in zero["rows"] + final["rows"]]
        summary = {
            "preset": self.cfg.preset,
            "rows": rows,
            "stage_seconds": {k: v.get("seconds") for k, v in {"zero_shot": zero, "sft": sft, "rl": rl, "final": final}.items()},
            "examples": final["examples"],
        }
        atomic_write_json(self.out / "results.json", summary)
        atomic_write_text(self.out / "results.md", markdown_table(rows, summary["stage_seconds"]))
        atomic_write_text(self.out / "examples.md", markdown_examples(final["examples"]))
        plot_ndcg(rows, self.out / "ndcg.png")
        return summary


def _stat(row: dict[str, Any], key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "–"


def markdown_table(rows: list[dict[str, Any]], stage_seconds: dict[str, Any] | None = None) -> str:
    """One table per evaluation set (rows in their order), then the stage times."""
    from .evaluation import mode_label

    lines: list[str] = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == dataset]
        r0 = group[0]
        lines += [f"Evaluated on {dataset} ({r0['split']}): {r0['num_docs']} documents, {r0['num_queries']} judged queries.", ""]
        lines += [
            "| system | reasoning | nDCG@10 | Recall@100 | MRR@10 | s/query | emit rate | new tokens |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in group:
            lines.append(
                f"| {r['system']} | {mode_label(r['reasoning'])} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['mrr@10']:.4f} | {r['seconds_per_query']:.3g} | {_stat(r, 'emit_rate', '.2f')} | {_stat(r, 'mean_new_tokens', '.1f')} |"
            )
        lines.append("")
    if stage_seconds:
        lines += ["Stage wall time (s): " + ", ".join(f"{k} {v}" for k, v in stage_seconds.items())]
    return "\n".join(lines).rstrip("\n") + "\n"


def markdown_examples(examples: list[dict[str, Any]]) -> str:
    parts = ["# Reasoning examples\n"]
    for e in examples:
        token = "emitted <|embed_token|>" if e["emitted"] else "token appended (not emitted)"
        parts.append(
            f"**{e['model']}** — query: *{e['query']}* ({token}, {e['seconds_per_query']} s/query)\n\n> {e['reasoning'] or '(empty)'}\n"
        )
    return "\n".join(parts)


def plot_ndcg(rows: list[dict[str, Any]], path: Path) -> Path:
    """The nDCG@10 of every row as horizontal bars, written atomically as PNG."""
    from io import BytesIO

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluation import mode_label
    from .io import atomic_write_bytes

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    per = max(sum(r["dataset"] == d for r in rows) for d in datasets)
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 0.45 * per + 1.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        group = [r for r in rows if r["dataset"] == dataset]
        labels = [f"{r['system']}{' +reasoning ' + mode_label(r['reasoning']) if r['reasoning'] else ''}" for r in group]
        values = [r["ndcg@10"] for r in group]
        ax.barh(labels[::-1], values[::-1], color="tab:blue")
        for y, v in enumerate(values[::-1]):
            ax.text(v + 0.005, y, f"{v:.3f}", va="center", fontsize=8)
        ax.set_xlabel("nDCG@10")
        ax.set_xlim(0, 1)
        ax.set_title(dataset, fontsize=9)
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    return Pipeline(cfg).run()
