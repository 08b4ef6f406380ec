"""Reasoning traces for stage 1: what the model learns to write before ``<|embed_token|>``.

Three sources (``SFTConfig.traces``; ``self``, the model's own samples kept when they help, is :class:`SelfTraces`):

* ``keywords`` (default) — extractive hints without a teacher model: the terms of the positive
  passage that the query lacks, ranked by tf-idf over the training positives, written as
  ``Key terms: a, b, c.``. The model learns to name the vocabulary of the answer (not to restate
  the question) and to end with the token after a short, bounded trace, which is what teaches
  emission. Cheap: no generation.
* ``predictable`` — the same trace, but of the positive's top-20 terms only the 6 the model itself finds most
  likely after the query (:func:`predictable_keyword_traces`): words it could learn to write, not rare names.
* ``model`` — the base model's own greedy completion of the reasoning prompt, cut at the length
  limit (:func:`searchr3.sft.load_or_make_traces`); slow, and at 135M often a repetition of the query.

A trace is stored as completion token ids ending with the embedding token, the same layout the
reasoning encoder (:meth:`searchr3.SearchR3.reason`) produces.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'\-]*[A-Za-z0-9]")


def _stopwords() -> frozenset[str]:
    # bm25s ships the usual English stopword list; used rather than writing another one.
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def _stem(word: str) -> str:
    """A crude shared stem so that 'proteins' in the passage counts as present for 'protein' in the query."""
    w = word.lower()
    return w[:6] if len(w) > 6 else w.rstrip("s")


class KeywordTracer:
    """Builds ``Key terms: ...`` traces; document frequencies come from ``documents``."""

    def __init__(self, documents: Iterable[str], max_terms: int = 6) -> None:
        if max_terms < 1:
            raise ValueError("max_terms must be >= 1")
        self.max_terms = max_terms
        self.stop = _stopwords()
        df: Counter[str] = Counter()
        n = 0
        for doc in documents:
            n += 1
            df.update({_stem(w) for w in _WORD.findall(doc)})
        self.n_docs = max(n, 1)
        self.df = df

    def terms(self, query: str, positive: str) -> list[str]:
        """The passage's highest tf-idf terms that are neither stopwords nor (by stem) in the query."""
        in_query = {_stem(w) for w in _WORD.findall(query)}
        tf: Counter[str] = Counter()
        first: dict[str, str] = {}
        for w in _WORD.findall(positive):
            st = _stem(w)
            if w.lower() in self.stop or st in in_query or len(w) < 3:
                continue
            tf[st] += 1
            first.setdefault(st, w)
        idf = {st: math.log((1 + self.n_docs) / (1 + self.df.get(st, 0))) + 1.0 for st in tf}
        ranked = sorted(tf, key=lambda st: (-(1 + math.log(tf[st])) * idf[st], first[st]))
        return [first[st] for st in ranked[: self.max_terms]]

    def text(self, query: str, positive: str) -> str:
        terms = self.terms(query, positive)
        return f"{KEYWORD_PREFIX} {', '.join(terms)}." if terms else ""


KEYWORD_PREFIX = "Key terms:"
# Saved with keyword-trained models: on the full preset's model, greedy reasoning with 1.0 / 1.3 emitted the token
# itself for 0.21 / 1.00 of msmarco-mini's queries and 0.23 / 0.97 of wikiqa-dev's, and its embedding scored 0.05
# nDCG@10 higher (reasoning on) with 1.3 on both (benchmarks/results/mix_probe_full10.json).
KEYWORD_REPETITION_PENALTY = 1.3


def keyword_lead(model) -> str:
    """What a keyword trace writes before its terms: nothing when the model's reasoning prompt already ends
    with :data:`KEYWORD_PREFIX` (``reasoning_prefix``), else the prefix itself."""
    return "" if model.prompts.reasoning_prefix.strip() == KEYWORD_PREFIX else KEYWORD_PREFIX


def keyword_trace_ids(model, terms: Sequence[str], max_tokens: int) -> list[int]:
    """The completion ids of the keyword trace of ``terms``: terms dropped from the end until it fits
    ``max_tokens`` (cut at a term boundary), then the embedding token. No terms: just the token."""
    lead, terms = keyword_lead(model), list(terms)
    ids: list[int] = []
    while terms:
        ids = model.tokenizer(f"{lead} {', '.join(terms)}.", add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            break
        terms, ids = terms[:-1], []
    return ids + [model.embed_token_id]


def keyword_traces(
    model, pairs: Sequence[tuple[str, str]], documents: Iterable[str], max_tokens: int, max_terms: int = 6
) -> dict[str, list[int]]:
    """{query: completion ids} for (query, positive) pairs: the keyword trace, cut to ``max_tokens``
    at a term boundary, then the embedding token (:func:`keyword_trace_ids`). An empty trace is just the token.

    When the model's reasoning prompt already ends with :data:`KEYWORD_PREFIX` (``reasoning_prefix``),
    the trace is only its continuation (`` a, b, c.``); otherwise it starts with the prefix itself."""
    tracer = KeywordTracer(documents, max_terms)
    out: dict[str, list[int]] = {}
    for query, positive in pairs:
        if query not in out:
            out[query] = keyword_trace_ids(model, tracer.terms(query, positive), max_tokens)
    return out


# ---------------------------------------------------------------------------------------- self traces
BOUNDARY = (".", "!", "?", ";", "\n")


def cut_at_boundary(ids: Sequence[int], tokenizer) -> list[int]:
    """The longest prefix of ``ids`` whose text ends at a sentence or line boundary (never mid-word or
    mid-list, so the token always follows a finished thought); empty if there is none."""
    for end in range(len(ids), 0, -1):
        if tokenizer.decode(ids[:end]).rstrip(" ").endswith(BOUNDARY):
            return list(ids[:end])
    return []


def select_trace(direct: float, candidates: Sequence[float], margin: float = 0.0) -> int:
    """The selection rule of the trace bank: the index of the best-scoring candidate if it beats the
    direct embedding's score by more than ``margin``, else -1 (the empty trace: emit the token at once)."""
    if not candidates:
        return -1
    best = max(range(len(candidates)), key=lambda i: (candidates[i], -i))
    return best if candidates[best] > direct + margin else -1


class SelfTraces:
    """Expert iteration without a teacher: traces the current model writes, kept when they help.

    For each query given to :meth:`choose`, ``samples`` analyses are sampled from the model's reasoning
    prompt (cut at a boundary when they hit the length limit), each is scored by how well the embedding
    read after it retrieves the query's positive among the step's documents (log-softmax at the
    contrastive temperature), and the best one is kept if it beats the direct embedding's score
    (:func:`select_trace`); otherwise the empty trace is kept, so the model also learns *when* not to
    reason. Every decision is appended to ``bank.jsonl`` in the run folder with its scores.

    ``min_tokens`` keeps exploration alive: the samples may not end before writing that many tokens.
    Without it, once the model has learned to emit the token at once (the empty trace wins early,
    while traces are poor), every sample is empty and the bank has nothing left to choose from
    (measured: non-empty candidates per query fell to 0 by step 41 of a 70-step run).

    ``mix_weight`` > 0 scores each candidate as the mix mode's embedding (that weight on the direct
    embedding, the rest on the one read after the trace), the embedding stage 1 then trains on it
    (``SFTConfig.trace_mix_weight``); the direct score it must beat is the direct embedding's alone.
    """

    def __init__(
        self,
        model,
        path,
        samples: int,
        max_new_tokens: int,
        temperature: float,
        tau: float,
        seed: int,
        min_tokens: int = 0,
        mix_weight: float = 0.0,
    ) -> None:
        if samples < 1:
            raise ValueError("trace samples must be >= 1")
        if not 0 <= min_tokens <= max_new_tokens:
            raise ValueError(f"trace min tokens must be in [0, {max_new_tokens}], got {min_tokens}")
        self.m, self.path, self.samples, self.max_new_tokens, self.min_tokens = model, path, samples, max_new_tokens, min_tokens
        self.temperature, self.tau, self.seed, self.mix_weight = temperature, tau, seed, mix_weight

    def _scores(self, e, docs, positive, direct=None) -> list[float]:
        """Log-softmax score of each query's positive for its normalised embedding (a row of ``e``); with
        ``direct`` (normalised rows, one per row of ``e``) the mix ``mix_weight * direct + rest * own`` is scored."""
        import torch

        from .model import mix_embeddings

        q = e if direct is None else mix_embeddings(direct, e, self.mix_weight)
        logits = torch.nn.functional.normalize(q, dim=-1) @ docs.to(e.device).T / self.tau
        return torch.log_softmax(logits, -1)[torch.arange(len(e)), positive].tolist()

    def choose(self, step: int, micro: int, queries: Sequence[str], docs, positive: Sequence[int]) -> list[list[int]]:
        """Completion ids (ending with the embedding token) for each query; ``docs`` are the step's
        normalised document embeddings (detached) and ``positive[i]`` the row of query i's positive."""
        import json

        import torch

        m, k, tok = self.m, self.samples, self.m.tokenizer
        with torch.no_grad():
            ro = m.reason(
                [q for q in queries for _ in range(k)],
                batch_size=len(queries) * k,
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=self.temperature,
                min_new_tokens=self.min_tokens,
                seed=(self.seed * 1_000_003 + step) * 1_009 + micro,
            )
            cands: list[list[list[int]]] = []
            for i in range(len(queries)):
                mine = []
                for j in range(i * k, (i + 1) * k):
                    body = ro.completion_ids[j][:-1]  # without the (written or appended) embedding token
                    if not ro.emitted[j] and len(body) >= self.max_new_tokens:  # the length limit cut it: back to a boundary
                        body = cut_at_boundary(body, tok)
                    if body and body not in mine:
                        mine.append(body)
                cands.append(mine)
            flat = [(i, c) for i, mine in enumerate(cands) for c in mine]
            d_emb = m.encode_query(list(queries), batch_size=len(queries), convert_to_tensor=True)
            direct = self._scores(d_emb, docs, positive)
            scores = []
            if flat:  # every candidate read after its trace, in one batch
                e = m.encode_after_trace(
                    [queries[i] for i, _ in flat], [c for _, c in flat], batch_size=len(flat), convert_to_tensor=True
                )
                mixed = d_emb[[i for i, _ in flat]] if self.mix_weight > 0 else None
                scores = self._scores(e, docs, [positive[i] for i, _ in flat], mixed)
        out, rows, s = [], [], 0
        for i, q in enumerate(queries):
            mine_scores = scores[s : s + len(cands[i])]
            s += len(cands[i])
            pick = select_trace(direct[i], mine_scores)
            out.append((cands[i][pick] if pick >= 0 else []) + [m.embed_token_id])
            rows.append(
                {
                    "step": step,
                    "micro": micro,
                    "query": q,
                    "direct": round(direct[i], 4),
                    "chosen": pick,
                    "candidates": [{"trace": tok.decode(c), "score": round(sc, 4)} for c, sc in zip(cands[i], mine_scores)],
                }
            )
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return out


# ---------------------------------------------------------------------------------------- predictable traces
def term_logprobs(model, head: Sequence[int], words: Sequence[Sequence[int]]) -> list[float]:
    """log p(word | head) of each candidate word (token ids, teacher-forced, summed over its tokens).

    The head runs once and its keys and values are shared by every candidate, which then runs only its
    own few tokens (one batched forward): ~20 candidates cost about one prompt's forward instead of 20
    (``grpo.sequence_logprobs`` would run the whole prompt once per candidate)."""
    import torch

    if not words or any(not w for w in words):
        raise ValueError("every candidate word needs at least one token")
    decoder, lm_head = model.decoder_and_head()
    dev, n = model.device, len(head)
    with torch.no_grad(), model.autocast():
        out = decoder(input_ids=torch.tensor([list(head)], device=dev), use_cache=True)
        first = torch.log_softmax(lm_head(out.last_hidden_state[:, -1]).float(), -1)[0]  # the word's first token
        scores = torch.tensor([float(first[w[0]]) for w in words])
        rest = [list(w[:-1]) for w in words]  # inputs that predict each word's later tokens
        width = max(len(w) for w in words) - 1
        if width > 0:
            ids = torch.full((len(words), width), model.tokenizer.pad_token_id, dtype=torch.long)
            for i, w in enumerate(rest):
                if w:
                    ids[i, : len(w)] = torch.tensor(w)
            # Only the first len(w) - 1 inputs after a word's first token predict its own tokens; the
            # right padding after them is never read (causal attention), so no mask is needed.
            past = out.past_key_values  # not read again: repeated in place, one copy per candidate
            past.batch_repeat_interleave(len(words))
            positions = torch.arange(n, n + width, device=dev).expand(len(words), width)
            h = decoder(input_ids=ids.to(dev), position_ids=positions, past_key_values=past, use_cache=True).last_hidden_state
            logp = torch.log_softmax(lm_head(h).float(), -1)
            for i, w in enumerate(words):
                scores[i] += sum(float(logp[i, j, w[j + 1]]) for j in range(len(w) - 1))
    return scores.tolist()


def predictable_keyword_traces(
    model,
    pairs: Sequence[tuple[str, str]],
    documents: Iterable[str],
    max_tokens: int,
    candidates: int = 20,
    keep: int = 6,
    show_progress: bool = False,
) -> dict[str, list[int]]:
    """{query: completion ids} like :func:`keyword_traces`, but of the positive's top ``candidates`` tf-idf
    terms only the ``keep`` the model itself finds most likely after the query's reasoning prompt
    (:func:`term_logprobs`) are written, in tf-idf order.

    Why: the plain keyword target teaches rare names a small model cannot know ("Boulette, Cloer"); of the
    oracle keyword trace's gain over the direct embedding, the trace of the terms the model finds likely
    keeps 84 % / 77 % (msmarco-mini / wikiqa-dev, benchmarks/results/mix_probe_full16.json). Measured as a
    stage-1 target (the full preset, docs/results.md "Stage 1 on predictable keyword traces"): the model imitates it, but
    on unseen queries its traces add nothing and every query mode is lower than with ``keywords``."""
    from tqdm.auto import tqdm

    if not 1 <= keep <= candidates:
        raise ValueError(f"keep must be in [1, candidates={candidates}], got {keep}")
    tracer = KeywordTracer(documents, candidates)
    lead = keyword_lead(model)
    lead_ids = model.tokenizer(lead, add_special_tokens=False)["input_ids"] if lead else []
    first: dict[str, str] = {}
    for query, positive in pairs:
        first.setdefault(query, positive)
    heads = dict(zip(first, model.prompt_ids(list(first), "query", reasoning=True)))
    out: dict[str, list[int]] = {}
    for query, positive in tqdm(first.items(), desc="predictable traces", disable=not show_progress, unit="query"):
        terms = tracer.terms(query, positive)
        if len(terms) > keep:
            words = [model.tokenizer(" " + t, add_special_tokens=False)["input_ids"] for t in terms]
            score = term_logprobs(model, heads[query] + lead_ids, words)
            terms = [terms[i] for i in sorted(sorted(range(len(terms)), key=lambda i: (-score[i], i))[:keep])]
        out[query] = keyword_trace_ids(model, terms, max_tokens)
    return out
