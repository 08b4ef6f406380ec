"""Stage 1, supervised: teach the backbone to end answers with ``<|embed_token|>`` and shape its hidden state.

One training example is (query, positive, hard negatives) from :mod:`searchr3.data.sources`. A step:

1. queries go through the direct query prompt; a share of them also through the reasoning prompt
   followed by a reasoning trace the *base* model wrote once (cached in ``traces.jsonl``) and the
   embedding token, so the model learns to emit the token after reasoning;
2. positives and negatives go through the document prompt;
3. loss = ``w_lm`` LM cross-entropy on the assistant-turn tokens + ``w_kl`` KL to the frozen base on
   the same tokens (LoRA: the adapter disabled for the reference pass; positions whose target is the
   embedding token are left out of the KL, which would otherwise forbid learning to emit it) +
   ``w_nce`` InfoNCE (in-batch + hard negatives) + ``w_triplet`` triplet margin.

With ``grad_cache_chunk = N`` the same gradients come from gradient caching (GradCache): the batch is
embedded without gradient, the contrastive terms' gradients with respect to the embeddings are
computed once, and the forward is redone with gradient N sequences at a time
(:meth:`SFTTrainer.loss_and_backward`), so that only one chunk's activations are ever held.

The loop is a small nanoGPT-style loop rather than a ``transformers.Trainer`` subclass: the batch
holds three kinds of sequences with different losses and a reference pass, which Trainer's
``compute_loss`` would only wrap. It writes a resumable run folder::

    config.json      the settings and base model (a resume with different ones is refused)
    traces.jsonl     reasoning traces of the base model (generated once)
    log.jsonl        one row per step (losses, lr, seconds) and per evaluation
    checkpoint/      model/ (loadable by SearchR3.from_pretrained) + state.pt (trainable weights,
                     optimizer, scheduler, RNG, step), written atomically
    final/           the trained model;  curves.png  the loss/metric plot
"""

from __future__ import annotations

import json
import logging
import random
import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .data.mix import false_negative_mask
from .data.sources import Example
from .distributed import Dist
from .losses import kl_to_reference, lm_loss, matryoshka_info_nce, triplet_margin
from .model import mix_embeddings
from .io import atomic_write_text
from .runs import RunError, RunFolder, dataclass_defaults, read_rows

log = logging.getLogger(__name__)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRACE_SOURCES = ("keywords", "predictable", "self", "model")  # SFTConfig.traces (see searchr3.traces)
# The real training sets of ../shared/data/train (see its README), in this order when present.
TRAIN_SETS = ("nq", "squad", "scifact", "medquad", "citint", "wikiqa")


def default_training_folders(root: str | Path | None = None) -> list[str]:
    """The training folders under ``root/train`` (default ``../shared/data``) that exist."""
    base = Path(root) if root is not None else SHARED_DATA
    return [str(base / "train" / n) for n in TRAIN_SETS if (base / "train" / n).is_dir()]


# Settings that may change between an interrupted run and its resume (they don't change the result
# of the steps already taken). ``bf16`` is one (as in grpo's): the default follows the machine anyway.
_RESUMABLE = {"out", "max_steps", "eval_every", "save_every", "show_progress", "bf16"}


SFTError = RunError  # a training run that cannot start or go on (bad run folder, non-finite loss)


@dataclass
class SFTConfig:
    """Settings of a supervised run. The defaults are the small run that finishes in minutes on 2 cores.

    InfoNCE temperature chosen by experiment (default run, held-out scifact slice of 20 claims / 200
    documents, nDCG@10 after 12 steps; ``searchr3 train sft --temperature T``): tau=0.1 -> 0.301,
    tau=0.05 -> 0.538, tau=0.02 -> 0.722 (reasoning on: 0.090, 0.141, 0.253). Default: 0.02.
    With tau=0.02: margin 0.05 / 0.1 / 0.2 -> 0.722 each, bit for bit (the embeddings are so
    anisotropic, cosines ~0.97, that the hinge is always active and its gradient does not depend on
    the margin), so margin=0.1 stays; w_kl 0.5 -> 0.727 vs 0.722 at 0.1 (within noise on 20 queries),
    so w_kl=0.1 stays. w_lm=1, w_nce=1, w_triplet=0.5 are not swept. Table:
    benchmarks/results/sft_sweep.json.
    """

    out: str = "runs/sft-default"
    model: str | None = None  # None = built-in SmolLM2-135M-Instruct
    prompts: dict | None = None  # PromptConfig fields; None = the model's own (saved with the trained model)
    data: list[str] = field(default_factory=default_training_folders)  # BEIR folders with a training split: the mix
    split: str = "train"
    mix_alpha: float = 0.5  # source sampling probability ~ weight * size**mix_alpha (0 = uniform over sources, 1 = by size)
    weights: dict[str, float] = field(default_factory=dict)  # per-source weight multipliers by folder name (default 1)
    max_per_source: int = 0  # use at most this many queries of each folder (0 = all)
    cloze: int = 0  # optional extra: inverse-cloze examples from the data folders' corpora
    wordnet: int = 0  # optional extra: definition -> word examples (skipped with a warning if WordNet is absent)
    hard_negatives: int = 1  # BM25 negatives per example, mined in the example's own folder
    eval_queries: int = 20  # queries of the first folder held out for periodic evaluation
    eval_docs: int = 200  # documents in the held-out evaluation corpus
    reasoning_share: float = 0.3  # share of training queries that also get a reasoning-trace example
    traces: str = "keywords"  # reasoning traces: "keywords" (terms of the positive the query lacks), "predictable" (of those, the ones the model finds likely), "self" (the model's own, kept when they help) or "model" (base model's, once)
    trace_samples: int = 4  # traces="self": analyses sampled per reasoning query and step
    trace_temperature: float = 0.8  # traces="self": their sampling temperature
    trace_min_tokens: int = 4  # traces="self": sampled analyses write at least this many tokens before the token may end them (keeps exploring; at most reasoning_tokens)
    reasoning_tokens: int = 48  # length limit of the reasoning traces
    trace_embedding: str = "taught"  # reasoning rows' contrastive terms read the embedding after: "taught" (the trace the LM terms teach) or "own" (the model's greedy trace, written each step with the current weights; the taught trace then trains the LM terms only)
    trace_mix_weight: float = 0.0  # > 0: reasoning rows are trained (and self traces chosen) as the mix mode's embedding, this weight on the (detached) direct one; 0: the reasoning embedding alone
    # model and optimisation
    lora_r: int = 16
    lora_alpha: int = 32
    lora_layers: int = 12  # LoRA on the top N decoder layers only (0 = all, with the token row trainable); see prepare_model
    full_finetune: bool = False
    lr: float = 8e-4  # peak; linear warm-up, then decay to 0. Not 2e-4: docs/results.md "Why 8e-4" (40-step A/B)
    token_lr: float = (
        5e-3  # learning rate of the embedding token's row: at lr its logit rises ~1 nat in 20 steps, too slowly to learn emission
    )
    warmup_steps: int = 2
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 12
    query_tokens: int = 64  # text tokens kept per query (the prompt template comes on top)
    doc_tokens: int = 128  # text tokens kept per document
    # bf16 autocast (True), fp32 (False), or None: bf16 where the device computes it natively (a CUDA GPU, a CPU
    # with AVX-512 bf16 or AMX), fp32 elsewhere (emulated bf16 is slower)
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    grad_cache_chunk: int = 8  # > 0: gradient caching (GradCache), this many sequences per chunk: the step's peak memory is one chunk's activations (2.5 GB instead of 5.7 at the default batch); 0 = off (the whole micro-batch at once, ~12 % faster)
    # losses
    temperature: float = 0.02
    margin: float = 0.1
    w_lm: float = 1.0
    w_kl: float = 0.1
    w_nce: float = 1.0
    w_triplet: float = 0.5
    w_emit: float = (
        5.0  # LM weight of the positions where a reasoning trace ends in the token (the emission decision) relative to the others
    )
    matryoshka_dims: list[int] = field(default_factory=list)  # InfoNCE also on these leading dimensions (e.g. 64 128 256)
    # bookkeeping
    eval_every: int = 6
    save_every: int = 4
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "lora_r", "query_tokens", "doc_tokens", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "cloze",
            "wordnet",
            "hard_negatives",
            "eval_queries",
            "eval_every",
            "reasoning_tokens",
            "warmup_steps",
            "lora_layers",
            "max_per_source",
            "trace_min_tokens",
            "grad_cache_chunk",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.reasoning_share <= 1.0:
            raise ValueError("reasoning_share must be in [0, 1]")
        if not 0.0 <= self.trace_mix_weight < 1.0:
            raise ValueError("trace_mix_weight must be in [0, 1)")
        if self.temperature <= 0 or self.lr <= 0 or self.token_lr <= 0:
            raise ValueError("temperature, lr and token_lr must be > 0")
        if min(self.w_lm, self.w_kl, self.w_nce, self.w_triplet, self.w_emit) < 0:
            raise ValueError("loss weights must be >= 0")
        if not self.data:
            raise ValueError("no training data folder given (and none found under ../shared/data/train)")
        if self.traces not in TRACE_SOURCES:
            raise ValueError(f"traces must be one of {', '.join(TRACE_SOURCES)}, got {self.traces!r}")
        if self.trace_embedding not in ("taught", "own"):
            raise ValueError(f"trace_embedding must be 'taught' or 'own', got {self.trace_embedding!r}")
        if self.trace_embedding == "own" and self.traces == "self":
            raise ValueError(
                "trace_embedding='own' needs taught traces (keywords, predictable or model): traces='self' are the model's own already"
            )
        if self.trace_samples < 1 or not self.trace_temperature > 0:
            raise ValueError("trace_samples must be >= 1 and trace_temperature > 0")
        if any(d < 1 for d in self.matryoshka_dims):
            raise ValueError(f"matryoshka_dims must be >= 1, got {self.matryoshka_dims}")
        if self.mix_alpha < 0:
            raise ValueError("mix_alpha must be >= 0")
        if any(not (w >= 0) for w in self.weights.values()):
            raise ValueError(f"source weights must be >= 0, got {self.weights}")
        if self.batch_size == 1 and self.hard_negatives == 0:
            raise ValueError("batch_size=1 with hard_negatives=0 leaves the contrastive losses without negatives")
        self.data = [str(d) for d in self.data]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SFTConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ---------------------------------------------------------------------------------------- data
@dataclass
class TrainingData:
    sources: list[tuple[str, list[Example]]]  # (name, examples) per source of the mix
    probabilities: list[float]  # sampling probability of each source
    eval_queries: dict[str, str]  # held-out query id -> text
    eval_corpus: dict[str, str]  # held-out document id -> text
    eval_qrels: dict[str, dict[str, int]]

    @property
    def examples(self) -> list[Example]:
        return [ex for _, exs in self.sources for ex in exs]

    def schedule(self, seed: int):
        """The seeded source mix that draws each step's examples (a pure function of the step, not of the model)."""
        from .data.mix import MixSchedule

        return MixSchedule([len(exs) for _, exs in self.sources], self.probabilities, seed)

    def drawn(self, schedule, step: int, n: int) -> list[Example]:
        """The ``n`` examples ``schedule`` draws at optimizer step ``step``."""
        return [self.sources[s][1][i] for s, i in schedule.batch(step, n)]


def build_data(cfg: SFTConfig) -> TrainingData:
    """One source per training folder (its qrels pairs, plus inverse-cloze pairs of its corpus if asked,
    hard negatives mined in the same folder), WordNet as an optional extra source, and a held-out slice
    of the first folder for evaluation."""
    from .data.mix import source_weights
    from .data.sources import (
        add_bm25_negatives,
        beir_examples,
        cloze_examples,
        corpus_pool,
        load_training_folder,
        wordnet_available,
        wordnet_examples,
    )

    rng = random.Random(cfg.seed)
    sources: list[tuple[str, list[Example]]] = []
    held_q: dict[str, str] = {}
    held_docs: dict[str, str] = {}
    held_qrels: dict[str, dict[str, int]] = {}
    for n, folder in enumerate(tqdm(cfg.data, desc="training data", disable=not cfg.show_progress, unit="folder")):
        ds = load_training_folder(folder, cfg.split)
        qids = [q for q in ds.qrels if any(s > 0 for s in ds.qrels[q].values())]
        held: list[str] = []
        if n == 0 and cfg.eval_queries:
            if cfg.eval_queries >= len(qids):
                raise SFTError(f"{folder}: eval_queries={cfg.eval_queries} leaves no training queries (it has {len(qids)})")
            held = sorted(rng.sample(qids, cfg.eval_queries))
            pos = {d for q in held for d, s in ds.qrels[q].items() if s > 0}
            others = sorted(set(ds.corpus) - pos)
            # Distractors come from at most half the other documents, so training keeps a corpus of its own.
            fill = rng.sample(others, max(0, min(len(others) // 2, cfg.eval_docs - len(pos))))
            pool = corpus_pool(ds)
            held_docs = {d: pool[d] for d in sorted(pos) + fill}
            held_q = {q: ds.queries[q] for q in held}
            held_qrels = {q: dict(ds.qrels[q]) for q in held}
        held_set = set(held)
        train_q = [q for q in qids if q not in held_set]
        if cfg.max_per_source and len(train_q) > cfg.max_per_source:
            train_q = sorted(random.Random(cfg.seed + n).sample(train_q, cfg.max_per_source), key=qids.index)
        pool = {d: t for d, t in corpus_pool(ds).items() if d not in held_docs}
        exs = beir_examples(ds, train_q)
        if cfg.cloze:
            corpus = {d: ds.corpus[d] for d in pool}
            exs += cloze_examples(corpus, cfg.cloze // len(cfg.data), seed=cfg.seed + n, name=f"{ds.name}-cloze")
        sources.append((ds.name, add_bm25_negatives(exs, pool, cfg.hard_negatives, seed=cfg.seed + n)))
    if cfg.wordnet:
        if wordnet_available():
            wn = wordnet_examples(cfg.wordnet * 4, seed=cfg.seed)  # the extra ones are the negatives' pool
            pool = {ex.positive_id: ex.positive for ex in wn}
            sources.append(("wordnet", add_bm25_negatives(wn[: cfg.wordnet], pool, cfg.hard_negatives, seed=cfg.seed)))
        else:
            log.warning("WordNet is not installed (apt-get install wordnet-base): training without WordNet pairs")
    names = [name for name, _ in sources]
    if len(set(names)) != len(names):
        raise SFTError(f"two training sources share a name: {names} (folder names must differ)")
    unknown = set(cfg.weights) - set(names)
    if unknown:
        raise SFTError(f"weights name unknown sources {sorted(unknown)}; the sources are {names}")
    sizes = [len(exs) for _, exs in sources]
    if not sources or not sum(sizes):
        raise SFTError("no usable training examples")
    multipliers = [cfg.weights.get(name, 1.0) for name in names]
    probs = source_weights(sizes, [m * z**cfg.mix_alpha for m, z in zip(multipliers, sizes)])
    return TrainingData(sources, probs.tolist(), held_q, held_docs, held_qrels)


def data_digest(examples: Sequence[Example]) -> str:
    import hashlib

    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.query, ex.positive, list(ex.negatives)]).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------- traces
def load_or_make_traces(m, queries: list[str], path: Path, max_new_tokens: int, show_progress: bool) -> dict[str, list[int]]:
    """Reasoning traces (completion ids ending with the embedding token) of the base model, greedy.

    Cached in ``path`` (JSONL, appended per batch) so a resumed run never regenerates them.
    """
    traces: dict[str, list[int]] = {}
    for row in read_rows(path):  # a torn last line from a kill is dropped and regenerated below
        traces[row["query"]] = row["completion_ids"]
    todo = [q for q in dict.fromkeys(queries) if q not in traces]
    chunk = 16
    for s in tqdm(range(0, len(todo), chunk), desc="reasoning traces", disable=not show_progress or not todo):
        batch = todo[s : s + chunk]
        ro = m.reason(batch, batch_size=16, max_new_tokens=max_new_tokens)
        with path.open("a", encoding="utf-8") as fh:
            for q, comp, emitted in zip(batch, ro.completion_ids, ro.emitted):
                traces[q] = comp
                fh.write(json.dumps({"query": q, "completion_ids": comp, "emitted": emitted}) + "\n")
    return {q: traces[q] for q in queries}


def make_traces(m, cfg: SFTConfig, data: TrainingData, run: Path, write: bool = True) -> dict[str, list[int] | None]:
    """Traces for a seeded ``reasoning_share`` of the training queries, from ``cfg.traces`` (see
    :mod:`searchr3.traces`); ``None`` for ``traces="self"``, whose traces are chosen at each step.

    ``write=False`` (the other ranks of a distributed run) leaves ``traces.jsonl`` to rank 0; model
    traces are read from the file rank 0 wrote first."""
    rng = random.Random(cfg.seed)
    queries = sorted({ex.query for ex in data.examples})
    chosen = {q for q in queries if rng.random() < cfg.reasoning_share}
    if not chosen:
        return {}
    if cfg.traces == "self":
        return dict.fromkeys(sorted(chosen))
    if cfg.traces == "model":
        return load_or_make_traces(m, sorted(chosen), run / "traces.jsonl", cfg.reasoning_tokens, cfg.show_progress)
    from .traces import keyword_traces, predictable_keyword_traces

    documents = {ex.positive for ex in data.examples}
    if cfg.traces == "predictable":
        # One prompt forward per query: only the queries the run's (seeded, model-independent) schedule
        # will draw in its max_steps steps get a trace (~1,100 of ~8,000 for the full preset), the others are never read.
        sched, n = data.schedule(cfg.seed), cfg.batch_size * cfg.grad_accum
        chosen &= {ex.query for t in range(cfg.max_steps) for ex in data.drawn(sched, t, n)}
    pairs = [(ex.query, ex.positive) for ex in data.examples if ex.query in chosen]
    if cfg.traces == "predictable":
        traces = predictable_keyword_traces(m, pairs, documents, cfg.reasoning_tokens, show_progress=cfg.show_progress)
    else:
        traces = keyword_traces(m, pairs, documents, cfg.reasoning_tokens)
    # Deterministic and cheap to rebuild; written for inspection (what the model is taught to write).
    rows = (
        json.dumps(
            {"query": q, "trace": m.tokenizer.decode(ids[:-1]), "completion_ids": ids, "source": cfg.traces}, ensure_ascii=False
        )
        for q, ids in sorted(traces.items())
    )
    if write:
        atomic_write_text(run / "traces.jsonl", "".join(r + "\n" for r in rows))
    return traces


# ---------------------------------------------------------------------------------------- model


def prepare_model(m, cfg: SFTConfig):
    """Wrap ``m.model`` in LoRA (attention + MLP projections) or unfreeze it all; returns the frozen
    reference for full fine-tuning (None with LoRA).

    The embedding token's row is trainable (peft ``trainable_token_indices``; with tied input/output
    embeddings one row serves both). With ``lora_layers = 0`` every layer gets LoRA. With
    ``lora_layers = N`` only the top N layers do, and the input embeddings' output is detached, so the
    token row learns only on the output side (its logit: what teaches the model to *emit* the token)
    and no tensor below the adapted layers needs a gradient: autograd keeps no activations of the lower
    layers and the backward pass stops at the first adapted layer (memory and backward time shrink
    with N / layers).
    """
    import copy

    ref = None
    if cfg.full_finetune:
        if cfg.w_kl > 0:  # full fine-tuning has no adapter to switch off: keep a frozen copy
            ref = copy.deepcopy(m.model).eval().requires_grad_(False)
        m.model.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        from .backbone import lora_targets

        extra: dict[str, Any] = {}
        n_layers = int(m.model.config.num_hidden_layers)
        top_only = bool(cfg.lora_layers and cfg.lora_layers < n_layers)
        if top_only:
            extra = {"layers_to_transform": list(range(n_layers - cfg.lora_layers, n_layers)), "layers_pattern": "layers"}
        lcfg = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules=lora_targets(m.model),
            task_type="CAUSAL_LM",
            trainable_token_indices=[m.embed_token_id],
            **extra,
        )
        # With top-layer LoRA the token row learns emission on its output side only; its input stays put.
        pin = top_only and m.token_input is None
        base_row = m.model.get_input_embeddings().weight[m.embed_token_id].detach().clone() if pin else None
        m.model = get_peft_model(m.model, lcfg)
        if top_only:
            m.model.get_input_embeddings().register_forward_hook(lambda module, args, out: out.detach())
        if pin:
            m.pin_token_input(base_row)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so the frozen lower layers of a
        # top-layer LoRA stay out of the graph (enable_input_require_grads would pull them back in).
        m.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return ref


def sliced_lm_kl(
    logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    targets: torch.Tensor,
    embed_token_id: int,
    weights: torch.Tensor | None = None,
):
    """LM cross-entropy and KL-to-reference from logits computed only where a target is predicted.

    ``logits[i]`` (``[P, vocab]``) predicts ``targets[i]``; the full computation would project every
    position of every sequence onto the vocabulary and then mask all but these ``P`` rows, so this
    gives the same two numbers (tested to 1e-5 against :func:`lm_loss` / :func:`kl_to_reference` on
    full logits) for a fraction of the memory. Positions whose target is the embedding token are left
    out of the KL, which would otherwise forbid learning to emit it. ``weights`` (one per row) make the
    LM term a weighted mean of the rows' cross-entropies instead of the plain mean.
    """
    # lm_loss / kl_to_reference read logits[:, t] against labels[:, t + 1]: one (predictor, target) pair per row.
    pair = lambda x: x.float()[:, None].expand(-1, 2, -1)  # noqa: E731
    labels = torch.stack([torch.full_like(targets, -100), targets], 1)
    if weights is None:
        lm = lm_loss(pair(logits), labels)
    else:
        ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        lm = (weights * ce).sum() / weights.sum()
    if ref_logits is None:
        return lm, torch.zeros(())
    kl_labels = labels.clone()
    kl_labels[:, 1][targets == embed_token_id] = -100
    return lm, kl_to_reference(pair(logits), pair(ref_logits), kl_labels)


def check_processes(cfg: SFTConfig, dist: Dist) -> None:
    """What a run needs of its processes: a global micro-batch that splits evenly over them, and one
    process for traces="self" (its trace bank is not shared between processes yet)."""
    dist.per_rank(cfg.batch_size, "batch_size")
    if cfg.traces == "self" and dist.world > 1:
        raise SFTError("traces='self' trains in one process only (its trace bank is not shared between processes yet)")


def mix_reasoning_rows(q_emb: torch.Tensor, owner: list[int], n_direct: int, weight: float) -> torch.Tensor:
    """Rows ``n_direct:`` (reasoning rows, of examples ``owner[r]``) replaced by the mix mode's embedding,
    ``weight * direct + (1 - weight) * reasoning`` of the L2-normalised rows (:meth:`SearchR3.encode_query`
    with ``reasoning="mix"``). The direct part is detached: it keeps its own loss on its own row, and
    the reasoning path learns what it adds to the direct embedding rather than a copy of it."""
    if len(q_emb) == n_direct:
        return q_emb
    q = q_emb.float()
    return torch.cat([q[:n_direct], mix_embeddings(q[owner[n_direct:]].detach(), q[n_direct:], weight)])


class _Replay(torch.nn.Module):
    """Stands in for a frozen lower decoder layer: returns what the trunk's last layer returned in pass 1."""

    def __init__(self, out) -> None:
        super().__init__()
        self.out = out

    def forward(self, *args, **kwargs):
        return self.out


@contextmanager
def replayed_trunk(layers: torch.nn.ModuleList, n: int, out):
    """Within the block, decoder layers ``0..n-1`` are not run: each returns ``out``, the output layer
    ``n - 1`` gave for the same batch before (nothing if ``n`` is 0). Only valid where those layers
    depend on no trainable weight and ``out`` was computed with the same inputs (see
    :meth:`SFTTrainer._trunk_layers`): pass 2 of gradient caching then runs only the adapted layers."""
    saved = [layers[i] for i in range(n)]
    stub = _Replay(out)
    try:
        for i in range(n):
            layers[i] = stub
        yield
    finally:
        for i, layer in enumerate(saved):
            layers[i] = layer


class SFTTrainer:
    """The supervised loop over one run folder."""

    def __init__(
        self,
        cfg: SFTConfig,
        m,
        data: TrainingData,
        traces: dict[str, list[int]],
        ref_model=None,
        folder: RunFolder | None = None,
        dist: Dist | None = None,
    ) -> None:
        self.cfg, self.m, self.data, self.traces, self.ref = cfg, m, data, traces, ref_model
        self.run = Path(cfg.out)
        self.folder = folder or RunFolder(cfg.out, "SFT", cfg.to_dict())
        self.dist = dist or Dist(cfg.grad_accum)  # one process unless started by `accelerate launch`
        check_processes(cfg, self.dist)
        m.model.to(self.dist.device)
        if self.ref is not None:
            self.ref.to(self.dist.device)
        from .traces import SelfTraces

        self.bank = SelfTraces(
            m,
            self.run / "bank.jsonl",
            cfg.trace_samples,
            cfg.reasoning_tokens,
            cfg.trace_temperature,
            cfg.temperature,
            cfg.seed,
            min(cfg.trace_min_tokens, cfg.reasoning_tokens),
            cfg.trace_mix_weight,
        )
        named = [(n, p) for n, p in m.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        if not self.params:
            raise SFTError("the model has no trainable parameters")
        self.dist.broadcast_parameters(self.params)
        token = [p for n, p in named if "trainable_tokens_delta" in n]
        groups = [{"params": [p for n, p in named if "trainable_tokens_delta" not in n]}]
        if token:  # the new token's row: one vector whose logit must climb from far below the vocabulary's
            groups.append({"params": token, "lr": cfg.token_lr, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        from transformers import get_linear_schedule_with_warmup

        sched = get_linear_schedule_with_warmup(opt, min(cfg.warmup_steps, cfg.max_steps), cfg.max_steps)
        self.opt, self.sched = self.dist.acc.prepare(opt, sched)
        self.step = 0

        self.schedule = data.schedule(cfg.seed)
        from .prompts import PromptTemplate

        direct = m.template("query").tail
        header = PromptTemplate(m.tokenizer, m.prompts.system("query", False), "").tail
        # The assistant turn of a direct prompt: the tail after the assistant header (fixed text + token).
        self.answer_len = len(direct) - len(header) if direct[: len(header)] == header else len(direct)

    # ------------------------------------------------------------------ batches and loss
    def _prompt(self, texts: list[str], kind: str, text_tokens: int, reasoning: bool = False) -> list[list[int]]:
        tpl = self.m.template(kind, reasoning)
        ids = self.m.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [tpl.build(x, tpl.overhead + text_tokens) for x in ids]

    def _lm_positions(self, seqs, spans):
        rows, cols = [], []
        for i, (a, b) in enumerate(spans):
            for p in range(max(a, 1), b):
                rows.append(i)
                cols.append(p)
        rows, cols = torch.tensor(rows), torch.tensor(cols)
        targets = torch.tensor([seqs[r][c] for r, c in zip(rows.tolist(), cols.tolist())])
        return rows, cols, targets

    def _logits_at(self, model, batch, rows, cols):
        """Hidden states of a batch, and the LM logits predicting positions ``cols`` of ``rows`` only
        (the vocabulary projection of every position would cost as much as a few layers)."""
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = lm.get_output_embeddings()(hidden[rows, cols - 1])
        return hidden, logits

    @torch.no_grad()
    def _ref_logits(self, batch, rows, cols) -> torch.Tensor:
        """The reference's LM logits at the supervised positions (the KL term): the frozen base model, or
        the same model with its adapter disabled."""
        if self.ref is not None:
            return self._logits_at(self.ref, batch, rows, cols)[1]
        with self.m.model.disable_adapter():
            return self._logits_at(self.m.model, batch, rows, cols)[1]

    def _query_rows(self, exs: Sequence[Example], d_emb: torch.Tensor, step: int, micro: int):
        """The query-side sequences of a micro-batch: every query through the direct prompt, then the
        reasoning rows (reasoning prompt + trace), then with ``trace_embedding="own"`` the same prompts
        + the model's own greedy trace. Returns ``(seqs, LM spans, example of each row, rows whose
        embedding enters the contrastive terms)``: all rows, or with "own" the direct and own-trace
        rows (the taught rows train the LM terms, the own rows have no LM span).
        ``d_emb`` (the documents' embeddings) is read only by traces="self", whose traces are chosen now."""
        cfg = self.cfg
        queries = [ex.query for ex in exs]
        seqs = self._prompt(queries, "query", cfg.query_tokens)
        spans = [(len(s) - self.answer_len, len(s)) for s in seqs]
        owner = list(range(len(exs)))  # example of each query row
        r_rows = [i for i, ex in enumerate(exs) if ex.query in self.traces]
        embedded = list(range(len(exs)))
        if r_rows:
            traces = [self.traces[queries[i]] for i in r_rows]
            online = [j for j, t in enumerate(traces) if t is None]  # traces="self": chosen now, by the current model
            if online:
                picked = self.bank.choose(
                    step,
                    micro,
                    [queries[r_rows[j]] for j in online],
                    torch.nn.functional.normalize(d_emb.detach().float(), dim=-1),
                    [r_rows[j] for j in online],
                )
                for j, t in zip(online, picked):
                    traces[j] = t
            heads = self._prompt([queries[i] for i in r_rows], "query", cfg.query_tokens, reasoning=True)
            for i, h, t in zip(r_rows, heads, traces):
                seqs.append(h + t)
                spans.append((len(h), len(seqs[-1])))
                owner.append(i)
            if cfg.trace_embedding == "own":
                # What the model writes at query time (greedy, its saved length budget and repetition penalty),
                # continued from exactly the training prompts; generation has no gradient.
                own = self.m._generate(
                    heads,
                    cfg.reasoning_tokens,
                    do_sample=False,
                    temperature=1.0,
                    top_p=1.0,
                    generator=None,
                    repetition_penalty=self.m.prompts.repetition_penalty,
                )[1]
                for i, h, t in zip(r_rows, heads, own):
                    embedded.append(len(seqs))
                    seqs.append(h + t)
                    spans.append((len(seqs[-1]), len(seqs[-1])))
                    owner.append(i)
            else:
                embedded = list(range(len(seqs)))
        return seqs, spans, owner, embedded

    def _lm_targets(self, seqs, spans, n_direct: int):
        """LM positions ``(rows, cols, targets)`` and each one's LM weight: the few positions that decide
        emission after reasoning (1 per reasoning row among ~10 others) weigh ``w_emit``."""
        dev, tok = self.m.device, self.m.embed_token_id
        rows, cols, targets = (t.to(dev) for t in self._lm_positions(seqs, spans))
        emit = (targets == tok) & (rows >= n_direct)
        return rows, cols, targets, 1.0 + (self.cfg.w_emit - 1.0) * emit.float()

    def _doc_pairs(self, exs: Sequence[Example]) -> list[tuple[str, str]]:
        """(id, text) of the micro-batch's documents: all positives in example order, then all negatives."""
        docs = [ex.positive for ex in exs] + [n for ex in exs for n in ex.negatives]
        doc_ids = [ex.positive_id for ex in exs] + [n for ex in exs for n in (ex.negative_ids or ("",) * len(ex.negatives))]
        return list(zip(doc_ids, docs))

    def _contrastive(self, exs, owner, pairs, q_emb: torch.Tensor, d_emb: torch.Tensor, share: float) -> dict[str, torch.Tensor]:
        """InfoNCE and triplet terms (this rank's share) of the query rows against the global documents."""
        cfg = self.cfg
        if cfg.trace_mix_weight > 0:
            q_emb = mix_reasoning_rows(q_emb, owner, len(exs), cfg.trace_mix_weight)
        d_emb, pos, exclude = self.global_docs(exs, owner, pairs, d_emb)
        return {
            "nce": matryoshka_info_nce(q_emb.float(), d_emb.float(), pos, cfg.temperature, cfg.matryoshka_dims, exclude=exclude)
            * share,
            "triplet": triplet_margin(q_emb.float(), d_emb.float(), pos, cfg.margin, exclude=exclude) * share,
        }

    def loss(self, exs: Sequence[Example], step: int = 1, micro: int = 0) -> dict[str, torch.Tensor]:
        """The losses of one micro-batch of optimizer step ``step`` (1-based)."""
        cfg, m = self.cfg, self.m
        pairs = self._doc_pairs(exs)
        dev = m.device
        db = {k: v.to(dev) for k, v in m.collate(self._prompt([t for _, t in pairs], "document", cfg.doc_tokens)).items()}
        with m.autocast():
            d_emb = m.hidden_at(db["input_ids"], db["attention_mask"], db["embed_index"])
        seqs, spans, owner, embedded = self._query_rows(exs, d_emb, step, micro)
        qb = {k: v.to(dev) for k, v in m.collate(seqs).items()}
        rows, cols, targets, lm_weights = self._lm_targets(seqs, spans, len(exs))
        with m.autocast():
            hidden, logits = self._logits_at(m.model, qb, rows, cols)
            q_emb = hidden[torch.arange(len(seqs)), qb["embed_index"]]
            ref_logits = self._ref_logits(qb, rows, cols) if cfg.w_kl > 0 else None
        lm, kl = sliced_lm_kl(logits, ref_logits, targets, m.embed_token_id, lm_weights)
        # This rank's share of each term (1 in one process): the shares of all ranks sum to the global mean.
        share = self.shares(len(embedded), float(lm_weights.sum()), int((targets != m.embed_token_id).sum()))
        contrastive = self._contrastive(exs, [owner[i] for i in embedded], pairs, q_emb[embedded], d_emb, share[0])
        out = {"lm": lm * share[1], "kl": kl * share[2], **contrastive}
        out["loss"] = cfg.w_lm * out["lm"] + cfg.w_kl * out["kl"] + cfg.w_nce * out["nce"] + cfg.w_triplet * out["triplet"]
        return out

    # ------------------------------------------------------------------ gradient caching
    # Hand-written: GradCache's reference code (luyug/GradCache, installed from git; the PyPI names
    # "gradcache"/"grad-cache-con-learning" are unmaintained 2022/2024 copies) caches gradients of a loss
    # of the representations alone. Here the same second forward must also carry the LM and KL terms of
    # the query rows (and the reference pass), the reasoning rows' mix reads the detached direct rows,
    # documents may be gathered over ranks, and the frozen lower layers of a top-layer LoRA are not run
    # twice (:func:`replayed_trunk`); none of that fits its loss_fn(reps) interface.
    #
    # Nothing in the forward is random (lora_dropout=0; the supported models have no dropout, and their
    # attention_dropout is 0), so pass 2 recomputes pass 1 exactly without restoring RNG states; the one
    # random step, traces="self" sampling, runs once, between the two passes.

    def _trunk_layers(self) -> int:
        """How many lower decoder layers pass 2 may replay from pass 1 instead of recomputing: those of a
        top-layer LoRA, which hold no trainable weight and read the detached, pinned input embeddings
        (so their output is the same with the adapter on and off, and needs no gradient). 0 otherwise."""
        cfg, m = self.cfg, self.m
        if cfg.full_finetune or not hasattr(m.model, "disable_adapter") or m.token_input is None:
            return 0
        layers = m.decoder_and_head()[0].layers
        n = len(layers) - cfg.lora_layers if 0 < cfg.lora_layers < len(layers) else 0
        if any(p.requires_grad for layer in list(layers)[:n] for p in layer.parameters()):
            return 0
        return n

    def _encode_chunks(self, seqs: list[list[int]], chunk: int, trunk: int):
        """Pass 1: the embedding of each sequence, chunk by chunk, without gradient, and the output of
        the trunk's last layer per chunk (for :func:`replayed_trunk`; None when ``trunk`` is 0)."""
        m, dev = self.m, self.m.device
        layers = m.decoder_and_head()[0].layers
        embs, outs = [], []
        for s in range(0, len(seqs), chunk):
            b = {k: v.to(dev) for k, v in m.collate(seqs[s : s + chunk]).items()}
            seen: list = []
            hook = layers[trunk - 1].register_forward_hook(lambda mod, args, out: seen.append(out)) if trunk else None
            try:
                with torch.no_grad(), m.autocast():
                    embs.append(m.hidden_at(b["input_ids"], b["attention_mask"], b["embed_index"]))
            finally:
                if hook is not None:
                    hook.remove()
            outs.append(seen[0] if trunk else None)
        return torch.cat(embs), outs

    def loss_and_backward(self, exs: Sequence[Example], step: int = 1, micro: int = 0) -> dict[str, torch.Tensor]:
        """:meth:`loss` with gradient caching (GradCache, Gao et al. 2021), *and* its backward pass
        (through ``acc.backward``, so divided by ``grad_accum`` as there). Returns the same (detached)
        values as :meth:`loss`; the gradients equal those of ``loss(...)["loss"]`` up to float rounding.

        1. pass 1, no gradient, ``grad_cache_chunk`` sequences at a time: the documents' and query rows'
           embeddings (the documents' first, which traces="self" reads to choose its traces);
        2. InfoNCE + triplet on detached leaf copies of them: backward gives d(loss)/d(embedding) (with
           N ranks, through the gather of the documents, so each rank gets its rows' global gradient);
        3. pass 2, chunk by chunk with gradient: the backward of ``sum(embedding * cached gradient)``
           plus the chunk's part of the LM and KL terms, which are sums over positions divided by a
           batch total (weights, counts) known before pass 2, so the chunks' parts add up to the terms.

        Only one chunk's activations are alive at a time, instead of the whole micro-batch's.
        """
        cfg, m, d = self.cfg, self.m, self.dist
        chunk, dev, tok = cfg.grad_cache_chunk, m.device, m.embed_token_id
        trunk = self._trunk_layers()
        layers = m.decoder_and_head()[0].layers
        pairs = self._doc_pairs(exs)
        dseqs = self._prompt([t for _, t in pairs], "document", cfg.doc_tokens)
        d_emb, d_trunk = self._encode_chunks(dseqs, chunk, trunk)
        seqs, spans, owner, embedded = self._query_rows(exs, d_emb, step, micro)
        q_emb, q_trunk = self._encode_chunks(seqs, chunk, trunk)
        rows, cols, targets, lm_weights = self._lm_targets(seqs, spans, len(exs))
        lm_total, kl_kept = float(lm_weights.sum()), targets != tok
        share = self.shares(len(embedded), lm_total, int(kl_kept.sum()))

        d_leaf, q_leaf = d_emb.detach().float().requires_grad_(), q_emb.detach().float().requires_grad_()
        out = self._contrastive(exs, [owner[i] for i in embedded], pairs, q_leaf[embedded], d_leaf, share[0])
        contrastive = cfg.w_nce * out["nce"] + cfg.w_triplet * out["triplet"]
        d_grad, q_grad = torch.autograd.grad(contrastive, [d_leaf, q_leaf])

        for c, s in enumerate(range(0, len(dseqs), chunk)):
            b = {k: v.to(dev) for k, v in m.collate(dseqs[s : s + chunk]).items()}
            with replayed_trunk(layers, trunk, d_trunk[c]), m.autocast():
                e = m.hidden_at(b["input_ids"], b["attention_mask"], b["embed_index"])
            d.acc.backward((e.float() * d_grad[s : s + chunk]).sum())
        lm_sum = kl_sum = torch.zeros((), dtype=torch.float32)
        for c, s in enumerate(range(0, len(seqs), chunk)):
            b = {k: v.to(dev) for k, v in m.collate(seqs[s : s + chunk]).items()}
            sel = (rows >= s) & (rows < s + chunk)
            r, cl, t, w = rows[sel] - s, cols[sel], targets[sel], lm_weights[sel]
            with replayed_trunk(layers, trunk, q_trunk[c]), m.autocast():
                hidden, logits = self._logits_at(m.model, b, r, cl)
                e = hidden[torch.arange(hidden.shape[0]), b["embed_index"]]
                ref_logits = self._ref_logits(b, r, cl) if cfg.w_kl > 0 and len(t) else None
            surrogate = (e.float() * q_grad[s : s + chunk]).sum()
            if len(t):
                lm, kl = sliced_lm_kl(logits, ref_logits, t, tok, w)
                # lm is the chunk's weighted mean and kl its mean over its KL positions: as parts of the batch's.
                lm = lm * (float(w.sum()) / lm_total) * share[1]
                n_kl = int(kl_kept[sel].sum())
                kl = kl * (n_kl / int(kl_kept.sum()) if n_kl else 0.0) * share[2]
                surrogate = surrogate + cfg.w_lm * lm + cfg.w_kl * kl
                lm_sum, kl_sum = lm_sum + lm.detach().float(), kl_sum + kl.detach().float()
            d.acc.backward(surrogate)
        out = {"lm": lm_sum, "kl": kl_sum, "nce": out["nce"].detach(), "triplet": out["triplet"].detach()}
        out["loss"] = cfg.w_lm * out["lm"] + cfg.w_kl * out["kl"] + cfg.w_nce * out["nce"] + cfg.w_triplet * out["triplet"]
        return out

    def global_docs(self, exs: Sequence[Example], owner: list[int], pairs: list[tuple[str, str]], d_emb: torch.Tensor):
        """The documents InfoNCE and the triplet loss rank against: those of the *global* micro-batch.

        Returns ``(documents [D, H], positive column of each query row, false-negative mask [rows, D])``.
        In one process these are the micro-batch's own. With N ranks every rank's document embeddings
        are gathered with their gradient (:meth:`Dist.gather_rows`) and laid out as one process lays
        out the whole micro-batch (all positives in example order, then all negatives), so this rank's
        query rows see exactly the negatives they would see in one process with batch N*b.
        """
        d = self.dist
        if d.world == 1:
            return d_emb, torch.tensor(owner, device=d_emb.device), torch.from_numpy(false_negative_mask(exs, owner, pairs))
        everyone = d.gather_objects((list(exs), pairs))  # (examples, (id, text) of their documents) per rank
        blocks = d.gather_rows(d_emb)
        counts = [len(e) for e, _ in everyone]
        all_exs = [ex for e, _ in everyone for ex in e]
        all_pairs = [p for e, ps in everyone for p in ps[: len(e)]] + [p for e, ps in everyone for p in ps[len(e) :]]
        docs = torch.cat([b[:c] for b, c in zip(blocks, counts)] + [b[c:] for b, c in zip(blocks, counts)])
        offset = sum(counts[: d.rank])
        rows = [offset + o for o in owner]
        exclude = torch.from_numpy(false_negative_mask(all_exs, rows, all_pairs))
        return docs, torch.tensor(rows, device=d_emb.device), exclude

    def shares(self, *local: float) -> list[float]:
        """``local / global`` for counts summed over ranks (query rows, LM position weights, KL positions):
        the weight of this rank's mean in the global mean. All 1.0 in one process."""
        if self.dist.world == 1:
            return [1.0] * len(local)
        total = self.dist.sum(torch.tensor(local, dtype=torch.float64)).tolist()
        return [n / t if t else 0.0 for n, t in zip(local, total)]

    def batch(self, step: int) -> list[Example]:
        """The examples of optimizer step ``step`` (all micro-batches): a pure function of the step."""
        return self.data.drawn(self.schedule, step, self.cfg.batch_size * self.cfg.grad_accum)

    def train_step(self) -> dict[str, float]:
        """One optimizer step: ``grad_accum`` micro-batches of ``batch_size`` examples (global sizes; each
        of N ranks takes its 1/N of every micro-batch), gradients summed over ranks, one update."""
        cfg, d = self.cfg, self.dist
        t0 = time.perf_counter()
        self.m.model.train()
        drawn = self.batch(self.step)
        totals: dict[str, float] = {}
        self.opt.optimizer.zero_grad(set_to_none=True)  # the wrapped optimizer: accelerate's skips it mid-accumulation
        for a in range(cfg.grad_accum):
            with d.acc.accumulate():
                exs = d.shard(drawn[a * cfg.batch_size : (a + 1) * cfg.batch_size])
                if cfg.grad_cache_chunk:  # the backward pass happens inside, chunk by chunk
                    parts = self.loss_and_backward(exs, self.step + 1, a)
                else:
                    parts = self.loss(exs, self.step + 1, a)
                names = list(parts)
                # The global values (the sum of the ranks' shares) for the log and the finiteness check,
                # so that every rank stops together.
                glob = dict(zip(names, d.sum(torch.stack([parts[k].detach().float() for k in names])).tolist()))
                self.folder.check_finite(self.step + 1, "loss", glob["loss"], **{k: v for k, v in glob.items() if k != "loss"})
                if not cfg.grad_cache_chunk:
                    d.acc.backward(parts["loss"])  # divided by grad_accum
                for k, v in glob.items():
                    totals[k] = totals.get(k, 0.0) + v / cfg.grad_accum
                if d.acc.sync_gradients:  # the last micro-batch
                    d.reduce_gradients(self.params)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    self.folder.check_finite(self.step + 1, "gradient norm", grad_norm)
                    self.opt.step()
                    self.sched.step()
        self.step += 1
        self.m.model.eval()
        return {
            "step": self.step,
            **totals,
            "grad_norm": grad_norm.item(),
            "lr": self.sched.get_last_lr()[0],
            "bf16": self.m.bf16,  # the precision this step ran in (a resume may change it)
            "processes": d.world,
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """nDCG@10 on the held-out slice, reasoning off and (if traces are trained) on, plus the token emit rate."""
        from .evaluation import compute_metrics, dense_retrieve

        d = self.data
        if not d.eval_queries:
            return {}
        self.m.model.eval()
        doc_ids, qids = list(d.eval_corpus), list(d.eval_queries)
        old = self.m.max_length
        self.m.max_length = self.m.template("document").overhead + self.cfg.doc_tokens
        try:
            de = self.m.encode_document([d.eval_corpus[i] for i in doc_ids], batch_size=16)
        finally:
            self.m.max_length = old
        qtexts = [d.eval_queries[q] for q in qids]
        direct = self.m.encode_query(qtexts)
        out = {"eval_ndcg@10": compute_metrics(d.eval_qrels, dense_retrieve(direct, de, doc_ids, qids, 10))["ndcg@10"]}
        if self.cfg.reasoning_share > 0:
            ro = self.m.reason(qtexts, max_new_tokens=self.cfg.reasoning_tokens)
            run = dense_retrieve(ro.embeddings.numpy(), de, doc_ids, qids, 10)
            out["eval_ndcg@10_reasoning"] = compute_metrics(d.eval_qrels, run)["ndcg@10"]
            out["eval_emit_rate"] = sum(ro.emitted) / len(ro.emitted)
            if self.cfg.trace_mix_weight > 0:  # the mix mode at the weight it is trained with
                mixed = mix_embeddings(torch.from_numpy(direct), ro.embeddings.float(), self.cfg.trace_mix_weight).numpy()
                run = dense_retrieve(mixed, de, doc_ids, qids, 10)
                out["eval_ndcg@10_mix"] = compute_metrics(d.eval_qrels, run)["ndcg@10"]
        return out

    # ------------------------------------------------------------------ checkpoints
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.m.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:  # the ranks hold the same weights and optimizer state: rank 0 writes
            return
        state = {"trainable": self.trainable_state(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}
        self.folder.save_checkpoint(self.step, state, lambda tmp: self.m.save_pretrained(tmp / "model"))

    def load_checkpoint(self) -> None:
        state = self.folder.load_checkpoint()
        missing = set(self.trainable_state()) - set(state["trainable"])
        if missing:
            raise SFTError(f"{self.run}/checkpoint does not match this model: missing {sorted(missing)[:3]}")
        self.m.model.load_state_dict(state["trainable"], strict=False)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step = int(state["step"])

    # ------------------------------------------------------------------ the loop
    def train(self) -> Path:
        """The loop. Every rank trains; rank 0 alone evaluates and writes the log, checkpoints, the
        final model and the plot."""
        cfg, logp, main = self.cfg, self.folder.log_path, self.dist.is_main
        if main:
            self.folder.reset_log(self.step)  # drop rows past the checkpoint
            self.folder.reset_log(self.step, self.bank.path)  # and the trace bank's
        if main and self.step == 0 and cfg.eval_every:
            self.folder.log({"step": 0, **self.evaluate()})
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="sft", disable=not (cfg.show_progress and main), unit="step")
        while self.step < cfg.max_steps:
            row = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", nce=f"{row['nce']:.3f}")
            if main and cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                row.update(self.evaluate())
            if main:
                self.folder.log(row)
            if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        if main:
            self.m.save_pretrained(self.folder.final)
            self._plot(logp)
        self.dist.barrier()  # the final model exists when any rank returns
        return self.folder.final

    def _plot(self, logp: Path) -> None:
        from .plots import plot_curves

        try:
            plot_curves(
                logp,
                self.run / "curves.png",
                ["loss", "lm", "kl", "nce", "triplet", "eval_ndcg@10", "eval_ndcg@10_reasoning", "eval_emit_rate"],
            )
        except ValueError as e:  # nothing to plot (e.g. zero steps)
            log.warning("no plot: %s", e)


# ---------------------------------------------------------------------------------------- driver
def train_sft(cfg: SFTConfig, *, resume: bool = False) -> Path:
    """Run (or with ``resume`` continue) supervised training; returns the final model folder."""
    from . import SearchR3
    from .backbone import model_source

    dist = Dist(cfg.grad_accum)  # N processes under `accelerate launch`, else one
    check_processes(cfg, dist)  # before anything is written
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data = build_data(cfg)
    meta = {"base_model": model_source(cfg.model), "data_digest": data_digest(data.examples)}
    folder = RunFolder(cfg.out, "SFT", cfg.to_dict(), meta, resumable=_RESUMABLE, defaults=dataclass_defaults(SFTConfig))
    has_ckpt = dist.open_folder(folder, resume)
    run = folder.path
    m = SearchR3.from_pretrained(cfg.model, prompts=cfg.prompts, bf16=cfg.bf16)
    from .traces import KEYWORD_PREFIX, KEYWORD_REPETITION_PENALTY

    if cfg.traces in ("keywords", "predictable", "self") and not m.prompts.reasoning_prefix:
        # The reasoning turn starts with the traces' fixed prefix (saved with the model's prompts).
        m.prompts = replace(m.prompts, reasoning_prefix=KEYWORD_PREFIX)
    if cfg.traces in ("keywords", "predictable") and m.prompts.repetition_penalty == 1.0:
        # Greedy decoding of a term list loops ("cardiomyopathy, cardiomyopathy, ...") until the budget; the
        # penalty ends the list with the token (benchmarks/results/mix_probe_full10.json). A penalty other than
        # the default 1.0 in the prompts is kept as given.
        m.prompts = replace(m.prompts, repetition_penalty=KEYWORD_REPETITION_PENALTY)
    # The model is taught traces of at most reasoning_tokens: that is also its length budget when it reasons.
    m.prompts = replace(m.prompts, max_reasoning_tokens=cfg.reasoning_tokens)
    with dist.main_first():  # rank 0 writes traces.jsonl (model traces: generates them), the others read
        traces = make_traces(m, cfg, data, run, write=dist.is_main)
    ref = prepare_model(m, cfg)
    trainer = SFTTrainer(cfg, m, data, traces, ref, folder, dist)
    if has_ckpt:
        trainer.load_checkpoint()
        log.info("resumed %s at step %d", run, trainer.step)
    return trainer.train()
