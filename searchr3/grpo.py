"""Stage 2: GRPO on retrieval rewards from :class:`~searchr3.env.RetrievalEnv`, read top to bottom.

One step: sample ``queries_per_step`` training queries; the policy samples ``group`` reasoning
rollouts for each (each ending in ``<|embed_token|>``); the environment scores every rollout's
embedding by the rank of the query's relevant documents; advantages are group-relative
``(r - mean) / (std + eps)``. One teacher-forced forward over prompt + completion gives the
generated tokens' log-probs (clipped policy-gradient loss, μ = 1 so the ratio starts at 1) and the
hidden state at the final embedding token (the rollout's embedding, with grad) for an InfoNCE term
against the environment's candidates (positive = the best-graded relevant document). KL to the
reference is the k3 estimator against the same model with the LoRA adapter disabled. After the
optimizer step the environment refreshes its index with the current weights.

The adapter trains the top ``lora_layers`` decoder layers only (12 of 30 for the built-in model, as
stage 1's). The layers below are the initial model's for the whole run, so every document's hidden
states entering the first adapted layer are taken once, with the initial index, and every re-encode
runs the adapted layers only (:mod:`searchr3.trunk`): the same embeddings as the full forward.

A compact loop rather than TRL's ``GRPOTrainer`` because the reward needs the hidden state *of*
the final embedding token, which ``generate`` never computes (the model core's own KV-cache loop
does), the environment must be refreshed with the updated weights after every optimizer step,
and the contrastive term needs that hidden state with grad inside the same loss; TRL's reward
functions only see decoded text and its loss has no hook for a second term.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .distributed import Dist
from .env import EnvConfig, RetrievalEnv, model_encoder
from .losses import info_nce
from .model import MIX_WEIGHT, mix_embeddings
from .runs import RunFolder, dataclass_defaults

log = logging.getLogger(__name__)

# Settings that may change between an interrupted run and its resume (they don't change the steps taken).
# ``bf16`` is one: its default (None) already follows the machine, so a run moved from a CPU with native
# bf16 to one without continues in fp32 either way; the precision each segment ran in is in its log rows.
_RESUMABLE = {"out", "steps", "save_every", "show_progress_bar", "bf16"}


@dataclass
class GRPOConfig:
    """Settings of one RL run. The defaults (10 steps on scifact) took 12.8 minutes on 2 idle CPU cores in an early
    version, about 5 of them the initial corpus encode (docs/results.md, "Stage 2: the default RL run"); the `full`
    preset's stage 2 overrides several of them (searchr3/pipeline.py)."""

    # the run
    out: str = "runs/rl-default"
    init: str | None = None  # SFT checkpoint (None = the built-in base model)
    # BEIR folder(s): training queries + qrels + corpus. Several folders make one environment: their corpora
    # side by side (ids prefixed with the folder's name), each query ranked against all of them
    data: str | list[str] = "../shared/data/scifact-2k"
    split: str = "train"
    steps: int = 10
    # rollouts: G per query, sampled
    queries_per_step: int = 4
    group: int = 4
    max_new_tokens: int = 48
    sampling_temperature: float = 1.0  # of the rollouts (the contrastive term's tau is nce_temperature)
    top_p: float = 1.0
    # "gain": nDCG minus the policy's direct embedding's, advantages against 0; "mix": the same gain, the rollout scored as the
    # mix query mode's embedding (mix_weight on the direct one), so a trace is rewarded for what it adds to the direct
    # embedding; "ndcg": nDCG, against the group mean
    reward: str = "gain"
    mix_weight: float = MIX_WEIGHT  # the direct embedding's weight in reward="mix" and nce_on="mix" (encode_query's default mix)
    # > 0: train only on the queries whose direct embedding (of the initial model) scores nDCG@k below this in the
    # environment -- where a trace has room to gain; 0: every judged query
    hard_below: float = 0.0
    # the update: a LoRA adapter on the initial model (which stays the KL reference), AdamW
    lr: float = 5e-5
    lr_schedule: str = (
        "linear"  # linear: from lr down to lr/steps at the last step (the index moves less late in the run); constant
    )
    lora_r: int = 8
    lora_alpha: int = 16
    # the adapter trains only the top N decoder layers (0, or N >= the model's: all). The documents' hidden states below them
    # never change, so they are kept (searchr3.trunk) and a refresh runs only those N layers
    lora_layers: int = 12
    max_grad_norm: float = 1.0
    # the loss: pg_coef * clipped surrogate + kl_coef * k3 KL + nce_coef * InfoNCE(tau = nce_temperature);
    # pg_coef 0 is the ablation "no reward": the rollouts only train the embedding read after them (the contrastive term)
    pg_coef: float = 1.0
    clip_eps: float = 0.2
    kl_coef: float = 0.04
    nce_coef: float = 0.5
    nce_temperature: float = 0.05
    # the contrastive term's negatives: "all" the step's candidates, or only the "fresh" ones (re-encoded
    # with the current weights this step; stale rows, from older weights, are left out)
    nce_negatives: str = "all"
    # what the contrastive term reads: the embedding after each rollout ("trace"), or the mix query mode's embedding
    # ("mix": mix_weight on the query's direct embedding, held fixed), so the trace is trained to add to the direct
    # embedding, as users run it, rather than to replace it
    nce_on: str = "trace"
    # the corpus in the environment
    doc_max_length: int = 256  # documents are encoded at this length
    corpus_limit: int = 0  # keep only the first N documents plus every judged one (0 = all); per folder
    # > 0: per folder, the first N judged queries only, with corpus_limit documents in all: theirs first
    # (BeirDataset.subset), so several training folders make an environment of a chosen size (0 = every query)
    max_queries: int = 0
    encode_batch_size: int = 16
    # bookkeeping
    save_every: int = 5
    seed: int = 0
    # bf16 autocast (True), fp32 (False), or None: bf16 where the device computes it natively, fp32 elsewhere
    bf16: bool | None = None
    show_progress_bar: bool = True
    env: EnvConfig = field(default_factory=EnvConfig)

    def __post_init__(self) -> None:
        if isinstance(self.env, dict):
            self.env = EnvConfig(**self.env)
        for name in ("steps", "queries_per_step", "group", "save_every", "encode_batch_size", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.lora_layers < 0:
            raise ValueError("lora_layers must be >= 0 (0 = every layer)")
        if self.group < 2:
            raise ValueError("group must be >= 2: advantages are relative to the group")
        if self.max_new_tokens < 1 or self.sampling_temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("need max_new_tokens >= 1, sampling_temperature > 0 and 0 < top_p <= 1")
        if self.lr_schedule not in ("linear", "constant"):
            raise ValueError(f"lr_schedule must be 'linear' or 'constant', got {self.lr_schedule!r}")
        if self.lr <= 0 or self.clip_eps <= 0 or min(self.pg_coef, self.kl_coef, self.nce_coef) < 0 or self.nce_temperature <= 0:
            raise ValueError("need lr > 0, clip_eps > 0, pg_coef >= 0, kl_coef >= 0, nce_coef >= 0, nce_temperature > 0")
        if self.nce_negatives not in ("all", "fresh"):
            raise ValueError(f"nce_negatives must be 'all' or 'fresh', got {self.nce_negatives!r}")
        if self.nce_on not in ("trace", "mix"):
            raise ValueError(f"nce_on must be 'trace' or 'mix', got {self.nce_on!r}")
        if self.reward not in ("gain", "mix", "ndcg"):
            raise ValueError(f"reward must be 'gain', 'mix' or 'ndcg', got {self.reward!r}")
        if not 0.0 <= self.mix_weight < 1.0 or not 0.0 <= self.hard_below <= 1.0:
            raise ValueError("need 0 <= mix_weight < 1 and 0 <= hard_below <= 1")
        if self.doc_max_length < 16 or self.corpus_limit < 0 or self.max_queries < 0:
            raise ValueError("need doc_max_length >= 16, corpus_limit >= 0 and max_queries >= 0")
        self.data = rl_folders(self.data)


def rl_folders(data) -> str | list[str]:
    """Stage 2's training folder(s) as :class:`GRPOConfig` keeps them, checked (also by ``PipelineConfig``,
    so a bad list is refused before stage 1, not after it): one folder, alone or in a list, as its path
    (the form runs made before lists existed saved, so they still resume); several as a list of paths
    whose names differ (each prefixes its folder's ids)."""
    if not isinstance(data, (list, tuple)):
        return str(data)
    folders = [str(d) for d in data]
    if not folders:
        raise ValueError("data: no training folder given")
    if len({Path(d).name for d in folders}) < len(folders):
        raise ValueError(f"data: two training folders share a name (it prefixes their ids): {folders}")
    return folders[0] if len(folders) == 1 else folders


def folder_list(data: str | list[str]) -> list[str]:
    """:func:`rl_folders`' result as a list, however many folders it names."""
    return data if isinstance(data, list) else [data]


# ---------------------------------------------------------------------- data
def load_training_data(cfg: GRPOConfig):
    """(queries {id: text} with judgments in the corpus, qrels, doc ids, doc texts) from the BEIR folder(s)
    of ``cfg.data``; with several, every id is prefixed with its folder's name (``nq/123``)."""
    from .data.beir import doc_text, load_beir

    folders = folder_list(cfg.data)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    doc_ids: list[str] = []
    doc_texts: list[str] = []
    for folder in folders:
        ds = load_beir(folder, cfg.split)
        if cfg.max_queries:
            ds = ds.subset(cfg.corpus_limit, cfg.max_queries)
        judged = {d for q in ds.qrels.values() for d, g in q.items() if g > 0}
        ids = list(ds.corpus)
        if cfg.corpus_limit and not cfg.max_queries:
            keep = set(ids[: cfg.corpus_limit]) | judged
            ids = [d for d in ids if d in keep]
        corpus = set(ids)
        kept = [q for q in ds.judged_query_ids() if any(d in corpus and g > 0 for d, g in ds.qrels[q].items())]
        if not kept:
            raise ValueError(f"{folder}/{cfg.split}: no judged query has a relevant document in the corpus")
        tag = f"{Path(folder).name}/" if len(folders) > 1 else ""
        queries.update({tag + q: ds.queries[q] for q in kept})
        qrels.update({tag + q: {tag + d: g for d, g in ds.qrels[q].items()} for q in kept})
        doc_ids += [tag + d for d in ids]
        doc_texts += [doc_text(ds.corpus[d]) for d in ids]
    return queries, qrels, doc_ids, doc_texts


def data_digest(queries: dict[str, str], qrels: dict, doc_ids: list[str], doc_texts: list[str]) -> str:
    """Identify the training data, so that a resume with other data is refused."""
    blob = json.dumps([queries, {q: qrels[q] for q in queries}, doc_ids, doc_texts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def batch_queries(query_ids: list[str], step: int, per_step: int, seed: int) -> list[str]:
    """The queries of ``step``: consecutive slices of a fresh seeded permutation per epoch (resumable)."""
    out = []
    for flat in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(flat, len(query_ids))
        order = np.random.default_rng([seed, epoch]).permutation(len(query_ids))
        out.append(query_ids[order[i]])
    return out


def rollout_seed(seed: int, step: int, k: int) -> int:
    """The sampling seed of rollout ``k`` (its place in the step's global batch) of ``step``.

    One generator per rollout, not one per batch: a rollout's tokens then do not depend on which
    other rollouts share its batch, so N processes that each sample their own queries' groups draw
    the same rollouts as one process sampling them all (and a resumed run draws the same as a straight one).
    """
    return int(np.random.SeedSequence([seed, step, k]).generate_state(1)[0])


def rollout_query_embeddings(cfg: GRPOConfig, rollouts: np.ndarray, direct: np.ndarray | None) -> np.ndarray:
    """What the environment scores for each rollout: its own embedding, or with ``reward="mix"`` the mix
    query mode's (``mix_weight`` on the same query's direct embedding), so the reward is what the trace
    adds to the direct embedding as users run it."""
    if cfg.reward != "mix":
        return rollouts
    return mix_embeddings(torch.from_numpy(direct), torch.from_numpy(rollouts), cfg.mix_weight).numpy()


def nce_query_embeddings(cfg: GRPOConfig, rollouts: torch.Tensor, direct: torch.Tensor) -> torch.Tensor:
    """What the contrastive term reads with ``nce_on="mix"``: the mix query mode's embedding of each rollout,
    its direct half a constant (no gradient reaches the direct pass; the term trains what the trace adds)."""
    return mix_embeddings(direct.detach().to(rollouts.dtype), rollouts, cfg.mix_weight)


# ---------------------------------------------------------------------- losses
def group_advantages(rewards: torch.Tensor, group: int, eps: float = 1e-4, baseline: float | None = None) -> torch.Tensor:
    """``(r - group mean) / (group std + eps)`` for rewards laid out as consecutive groups, or, given a
    ``baseline``, ``(r - baseline) / (std of the group and the baseline + eps)``.

    Gain rewards (``reward="gain"``) are already measured against the direct embedding, so stage 2 uses
    ``baseline=0``: when every rollout of a query loses to the direct embedding all of them are pushed
    down (reasoning did not pay there), when every one beats it all are pushed up. The group mean
    would cancel that per-query baseline and always push about half of each group down."""
    if rewards.numel() % group:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group}")
    r = rewards.view(-1, group)
    if baseline is None:
        return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=False) + eps)).view(-1)
    # The spread counts the baseline as one more member, so a group of equal gains (std 0) stays bounded.
    spread = torch.cat([r, torch.full_like(r[:, :1], baseline)], 1).std(1, keepdim=True, unbiased=False)
    return ((r - baseline) / (spread + eps)).view(-1)


def sequence_logprobs(model, prompts: list[list[int]], completions: list[list[int]]):
    """Log-probs of each completion token given what precedes it ``[B, T]``, the hidden state at the
    last completion token ``[B, H]`` (the embedding, un-normalised), and a ``[B, T]`` validity mask."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    batch = model.collate(seqs)
    decoder, lm_head = model.decoder_and_head()
    dev = model.device
    with model.autocast():
        hidden = decoder(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)).last_hidden_state
    width = max(len(c) for c in completions)
    starts = torch.tensor([len(p) - 1 for p in prompts], device=dev)
    lengths = torch.tensor([len(c) for c in completions], device=dev)
    offs = torch.arange(width, device=dev)
    mask = offs[None] < lengths[:, None]
    pos = (starts[:, None] + offs[None]).clamp(max=hidden.shape[1] - 1)
    h = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))
    with model.autocast():
        logits = lm_head(h)
    targets = batch["input_ids"].to(dev).gather(1, (pos + 1).clamp(max=hidden.shape[1] - 1))
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1)
    emb = hidden[torch.arange(len(seqs), device=dev), starts + lengths].float()
    return logp, emb, mask


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps: float, kl_coef: float, pg_coef: float = 1.0):
    """``pg_coef`` * clipped surrogate + ``kl_coef`` * k3 KL, averaged per sequence then over sequences; returns
    (loss, pg, kl) with pg and kl unweighted."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    pg = -torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1
    m = mask.float()
    denom = m.sum(1).clamp(min=1)
    pg_seq, kl_seq = (pg * m).sum(1) / denom, (kl * m).sum(1) / denom
    return (pg_coef * pg_seq + kl_coef * kl_seq).mean(), pg_seq.mean(), kl_seq.mean()


# ---------------------------------------------------------------------- trainer
class GRPOTrainer:
    """Holds the model (LoRA-wrapped), optimizer and environment of one run; :meth:`train` runs it.

    The run folder (:class:`~searchr3.runs.RunFolder`) is checked and its ``config.json`` written
    before the model is loaded; with ``resume`` the checkpoint is loaded here."""

    def __init__(self, cfg: GRPOConfig, model=None, *, resume: bool = False, corpus_cache: str | Path | None = None) -> None:
        from peft import LoraConfig, get_peft_model

        from . import SearchR3
        from .backbone import lora_targets, model_source

        self.cfg = cfg
        self.out = Path(cfg.out)
        # where the initial corpus embeddings are cached (by model, document length and corpus): the run folder
        # unless given, e.g. a benchmark that starts scratch runs again and again over one corpus
        self.corpus_cache = Path(corpus_cache) if corpus_cache else self.out / "corpus-embeddings"
        self.dist = Dist()  # N processes under `accelerate launch`, else one
        self.dist.per_rank(cfg.queries_per_step, "queries_per_step")  # checked before anything is written
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.queries, self.qrels, self.doc_ids, self.doc_texts = load_training_data(cfg)
        meta = {
            "init": model_source(cfg.init),
            "data_digest": data_digest(self.queries, self.qrels, self.doc_ids, self.doc_texts),
        }
        self.folder = RunFolder(cfg.out, "RL", asdict(cfg), meta, resumable=_RESUMABLE, defaults=dataclass_defaults(GRPOConfig))
        has_checkpoint = self.dist.open_folder(self.folder, resume)
        m = model if model is not None else SearchR3.from_pretrained(cfg.init, bf16=cfg.bf16)
        m.model.to(self.dist.device)
        self.merged_init = hasattr(m.model, "peft_config")
        if self.merged_init:  # an SFT adapter: it becomes the reference, the RL adapter goes on top
            m.model = m.model.merge_and_unload()
        m.prompts = replace(m.prompts, max_reasoning_tokens=cfg.max_new_tokens)
        self.model = m
        # The environment is replicated: every rank scores the whole step's rollouts (gathered) and so
        # asks for the same re-encodes, which are split over the ranks and all-gathered (Dist.encoder):
        # the replicas stay identical, bit for bit, with no index broadcast and the encoding in parallel.
        n_layers = len(m.decoder_and_head()[0].layers)
        self.first_adapted = (
            n_layers - cfg.lora_layers if 0 < cfg.lora_layers < n_layers else 0
        )  # as stage 1: N >= the model's = all
        self.env = self._initial_env()
        if cfg.hard_below > 0:
            self.queries = self._hard_queries()
        m.model = get_peft_model(
            m.model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=0.0,
                target_modules=lora_targets(m.model),
                task_type="CAUSAL_LM",
                **(
                    {"layers_to_transform": list(range(self.first_adapted, n_layers)), "layers_pattern": "layers"}
                    if self.first_adapted
                    else {}
                ),
            ),
        )
        self.params = [p for p in m.model.parameters() if p.requires_grad]
        self.dist.broadcast_parameters(self.params)
        self.opt = self.dist.acc.prepare(torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0))
        self.step = 0
        self.log_path = self.folder.log_path
        if has_checkpoint:
            self.load_checkpoint()

    def _initial_env(self) -> RetrievalEnv:
        """The corpus index of the initial model; its embeddings are cached in the run folder by model
        fingerprint, document length and corpus (:func:`searchr3.retrieval.cached_encode`). With
        ``lora_layers``, the documents' trunk (the states entering the first adapted layer) is cached
        beside them and the environment re-encodes through the adapted layers only."""
        from .retrieval import cached_encode, corpus_key

        cfg, m = self.cfg, self.model
        fingerprint = f"{m.embedding_key()}|doc_max_length={cfg.doc_max_length}"
        built = None
        if self.first_adapted:
            from .trunk import cached_trunk

            key = corpus_key(f"{fingerprint}|trunk_layer={self.first_adapted}", self.doc_ids, self.doc_texts)
            self.trunk, built = cached_trunk(
                m,
                self.doc_texts,
                self.first_adapted,
                key=key,
                cache_dir=self.corpus_cache,
                batch_size=cfg.encode_batch_size,
                max_length=cfg.doc_max_length,
                show_progress_bar=cfg.show_progress_bar,
                write=self.dist.is_main,
            )
            direct = self.trunk.encoder(m, cfg.encode_batch_size)
        else:
            self.trunk = None
            direct = model_encoder(m, self.doc_texts, cfg.encode_batch_size, cfg.show_progress_bar, cfg.doc_max_length)
        encode = self.dist.encoder(direct)
        # a trunk built just now came with the embeddings of the same passes: no second encode
        emb = cached_encode(
            encode if built is None else (lambda positions: built[positions]),
            self.doc_ids,
            self.doc_texts,
            fingerprint=fingerprint,
            cache_dir=self.corpus_cache,
            write=self.dist.is_main,
        )
        return RetrievalEnv(self.doc_ids, encode, cfg.env, embeddings=emb.embeddings)

    def _hard_queries(self) -> dict[str, str]:
        """The training queries whose direct embedding, by the initial model (a resume picks the same
        ones), scores nDCG@k below ``hard_below`` in the initial environment."""
        qids = list(self.queries)
        direct = self.model.encode_query(
            [self.queries[q] for q in qids],
            batch_size=self.cfg.encode_batch_size,
            convert_to_numpy=True,
            show_progress_bar=self.cfg.show_progress_bar,
        )
        ndcg = self.env.score(qids, direct, [self.qrels[q] for q in qids])
        keep = {q: self.queries[q] for q, s in zip(qids, ndcg) if s < self.cfg.hard_below}
        if len(keep) < self.cfg.queries_per_step:
            raise ValueError(
                f"only {len(keep)} of {len(qids)} training queries score nDCG@{self.cfg.env.k} below "
                f"hard_below={self.cfg.hard_below} by the direct embedding; need queries_per_step={self.cfg.queries_per_step}"
            )
        log.info("hard_below=%s: %d of %d training queries", self.cfg.hard_below, len(keep), len(qids))
        return keep

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Atomically write adapter, optimizer, RNG states, step and environment to ``out/checkpoint``
        (rank 0: every rank holds the same weights, optimizer state and environment)."""
        from peft import get_peft_model_state_dict

        if not self.dist.is_main:
            return self.folder.checkpoint
        state = {
            "adapter": get_peft_model_state_dict(self.model.model, save_embedding_layers=False),
            "optimizer": self.opt.state_dict(),
        }
        return self.folder.save_checkpoint(self.step, state, lambda tmp: self.env.save(tmp / "env.npz"))

    def load_checkpoint(self) -> None:
        """Resume from ``out/checkpoint`` (weights, optimizer, RNG states, step, environment)."""
        from peft import set_peft_model_state_dict

        state = self.folder.load_checkpoint()
        set_peft_model_state_dict(self.model.model, state["adapter"])
        self.opt.load_state_dict(state["optimizer"])
        self.env = RetrievalEnv.load(self.folder.checkpoint / "env.npz", self.env.encode, self.cfg.env)
        self.step = int(state["step"])

    def lr_at(self, step: int) -> float:
        """The learning rate of the update after ``step`` completed steps (a pure function of the step, so a
        resumed run continues the schedule; ``steps`` may be raised on resume, which stretches it)."""
        cfg = self.cfg
        return cfg.lr if cfg.lr_schedule == "constant" else cfg.lr * (1 - step / cfg.steps)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, Any]:
        """One step. The step's queries are the same on every rank; each of N ranks samples the groups of
        its contiguous 1/N of them, the environment scores all rollouts (gathered) on every rank, and
        each rank's loss is its share (1/N) of the mean over all rollouts; gradients are summed."""
        cfg, m, env, d = self.cfg, self.model, self.env, self.dist
        t0 = time.perf_counter()
        qids = batch_queries(list(self.queries), self.step, cfg.queries_per_step, cfg.seed)
        everyone = [q for q in qids for _ in range(cfg.group)]  # every rollout of the step, all ranks
        lo = d.rank * len(everyone) // d.world  # this rank's rollouts: everyone[lo:hi], whole groups
        hi = lo + len(everyone) // d.world
        rep = everyone[lo:hi]
        m.model.eval()
        ro = m.reason(
            [self.queries[q] for q in rep],
            batch_size=len(rep),
            do_sample=True,
            temperature=cfg.sampling_temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            seed=[rollout_seed(cfg.seed, self.step, k) for k in range(lo, hi)],
        )
        t_gen = time.perf_counter() - t0
        comp = ro.completion_ids
        parts = d.gather_objects((ro.embeddings.numpy(), list(ro.emitted), [len(c) for c in comp]))
        emitted = [e for _, em, _ in parts for e in em]
        hit_limit = [not e and n > cfg.max_new_tokens for _, em, ns in parts for e, n in zip(em, ns)]
        direct = None
        if cfg.reward != "ndcg" or cfg.nce_on == "mix":
            # the policy's direct embedding of each query (every rank computes all): the gain's baseline, the mix's other half
            direct = np.repeat(m.encode_query([self.queries[q] for q in qids], convert_to_numpy=True), cfg.group, axis=0)
        scored = rollout_query_embeddings(cfg, np.concatenate([e for e, _, _ in parts]), direct)
        baseline = None if cfg.reward == "ndcg" else direct
        res = env.step(everyone, scored, [self.qrels[q] for q in everyone], emitted, hit_limit, baseline)
        dev = m.device
        adv = group_advantages(
            torch.from_numpy(res.rewards[lo:hi]), cfg.group, baseline=None if cfg.reward == "ndcg" else 0.0
        ).to(dev)
        # The token that ends a rollout is an action only where the model emitted it itself.
        m.model.train()
        logp, emb, mask = sequence_logprobs(m, ro.prompt_ids, comp)
        for i, e in enumerate(ro.emitted):
            if not e:
                mask[i, len(comp[i]) - 1] = False
        with torch.no_grad(), m.model.disable_adapter():
            ref_logp, _, _ = sequence_logprobs(m, ro.prompt_ids, comp)
        loss, pg, kl = grpo_loss(logp, logp.detach(), ref_logp, adv, mask, cfg.clip_eps, cfg.kl_coef, cfg.pg_coef)
        # Candidates of the whole step (as one process sees them); this rank's rows are its rollouts.
        candidates = {d for c in res.candidates for d in c}
        if cfg.nce_negatives == "fresh":
            candidates -= set(env.stale(candidates))
        docs = sorted(candidates | {d for p in res.positives for d in p})
        col = {d: j for j, d in enumerate(docs)}
        best = torch.tensor([col[max(p, key=lambda d: (p[d], -d))] for p in res.positives[lo:hi]], device=dev)
        read = emb if cfg.nce_on == "trace" else nce_query_embeddings(cfg, emb, torch.from_numpy(direct[lo:hi]).to(dev))
        nce = info_nce(read, torch.from_numpy(env.emb[docs]).to(dev), best, cfg.nce_temperature)
        share = len(rep) / len(everyone)  # this rank's share of the means over all rollouts (1 in one process)
        total = (loss + cfg.nce_coef * nce) * share
        glob = d.sum(torch.stack([x.detach().float() * share for x in (total / share, pg, kl, nce)])).tolist()
        self.folder.check_finite(self.step + 1, "loss", glob[0], pg=glob[1], kl=glob[2], nce=glob[3])
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        d.reduce_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.folder.check_finite(self.step + 1, "gradient norm", grad_norm)
        lr = self.lr_at(self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        m.model.eval()
        stats = env.refresh()
        self.step += 1
        seconds = time.perf_counter() - t0
        lengths = [n for _, _, ns in parts for n in ns]
        return {
            "step": self.step,
            "reward": float(res.rewards.mean()),
            "reward_std": float(res.rewards.std()),
            "ndcg": float(res.ndcg.mean()),
            **({} if res.direct_ndcg is None else {"direct_ndcg": float(res.direct_ndcg.mean())}),
            "hit_limit": float(np.mean(hit_limit)),
            "mean_rank": float(np.mean([r if r else cfg.env.candidates + 1 for r in res.ranks])),
            "emitted": float(np.mean(emitted)),
            "completion_tokens": float(np.mean(lengths)),
            "loss": glob[0],
            "pg": glob[1],
            "kl": glob[2],
            "nce": glob[3],
            "nce_docs": len(docs),
            "grad_norm": float(grad_norm),
            "lr": lr,
            "bf16": self.model.bf16,  # the precision this step ran in (a resume may change it)
            "encoded": stats.encoded,
            "encoded_share": stats.share,
            "mean_age": stats.mean_age,
            "doc_drift": stats.drift,
            "doc_drift_age": stats.drift_age,
            "gen_seconds": t_gen,
            "refresh_seconds": stats.encode_seconds,
            "seconds": seconds,
            "refresh_share": stats.encode_seconds / seconds,
            "processes": d.world,
            "queries": len(self.queries),
        }

    def train(self) -> Path:
        """Run the remaining steps (checkpoint every ``save_every``), save the model to ``out/final``,
        plot the curves."""
        cfg, main = self.cfg, self.dist.is_main
        if main:
            self.folder.reset_log(self.step)  # drop rows past the checkpoint
        bar = tqdm(total=cfg.steps, initial=self.step, desc="grpo", disable=not (cfg.show_progress_bar and main))
        while self.step < cfg.steps:
            row = self.train_step()
            if main:  # rank 0 writes the log, checkpoints, final model and plot
                self.folder.log(row)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.4f}", enc=row["encoded"])
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
        bar.close()
        if main:
            self.model.save_pretrained(self.folder.final, merge=self.merged_init)
            from .plots import plot_curves

            plot_curves(
                self.log_path,
                self.out / "reward.png",
                ["reward", "ndcg", "direct_ndcg", "emitted", "hit_limit", "mean_rank", "kl", "nce"],
            )
            plot_curves(self.log_path, self.out / "env.png", ["encoded", "refresh_share", "doc_drift", "mean_age"])
        self.dist.barrier()  # the final model exists when any rank returns
        return self.folder.final


def train_rl(cfg: GRPOConfig, *, resume: bool = False, model=None) -> Path:
    """Train (or with ``resume`` continue) one RL run; returns the saved model folder ``out/final``."""
    return GRPOTrainer(cfg, model, resume=resume).train()
