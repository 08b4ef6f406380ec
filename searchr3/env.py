"""The RL environment: a corpus in an HNSW graph index that scores query embeddings by retrieval.

* Every document's embedding lives in an ``hnswlib`` graph (inner product on L2-normalised rows =
  cosine) together with the *version* of the policy that encoded it. A mirror matrix of the same
  vectors is kept for exact ranks and drift metrics (:meth:`RetrievalEnv.check_consistency`).
* :meth:`RetrievalEnv.step` retrieves the top ``candidates`` documents of each query embedding and
  returns an nDCG-style reward: ``sum(grade / log2(1 + rank))`` over the relevant documents ranked
  within the cut-off ``k``, divided by the ideal DCG (so a single grade-1 positive at rank ``r``
  scores ``1 / log2(1 + r)``, and 0 past ``k``), minus ``format_penalty`` for a rollout that ended
  its turn without the embedding token, or ``limit_penalty`` for one that ran into the length limit
  without it. Given each rollout's *direct* query embedding too (stage 2 passes the policy's own), the
  reward is the *gain* over the direct embedding's nDCG on the same index: reasoning earns only what
  it adds.
* After each policy update, :meth:`RetrievalEnv.refresh` advances the index's *version* and re-encodes
  with the current weights: ``none`` nothing; ``full`` the whole corpus; ``local`` the documents the
  steps since the last refresh touched (retrieved candidates and positives) plus ``neighbours`` graph
  neighbours of each (found with ``knn_query`` of the document's own stored vector); ``lazy`` nothing
  after the update, but every step re-encodes what it reads (below). Any policy but ``none`` adds the
  staleness budget: every document older than ``max_age`` versions, and the oldest ``sweep_share`` of
  the corpus. Vectors are written back in place (``add_items`` with an existing label replaces it).
* Before scoring a step, ``local`` re-encodes that step's relevant documents whose vectors are older
  than the current weights (``fresh_positives``): a reward is decided by where the relevant documents
  rank, and the refresh after the update only covers what earlier queries touched, so without this
  the new queries' positives are the stalest rows that matter (about one document per query).
* ``lazy`` (re-encode on read, the default) goes further: before scoring, the step's stale positives
  *and* the stale documents that decide each reward are re-encoded, and the step searched again,
  until none of those is stale (at most ``repair_rounds`` rounds). For each of the step's query
  embeddings (rollouts and the direct baselines) the deciding documents are those ranked above its
  lowest-ranked relevant document when every relevant document is in the top ``k``, else the whole
  top ``k`` (any of them may fall below a relevant one); with ``repair_all`` every document among the
  top ``candidates``, so that the contrastive term's negatives are fresh too. The default repairs the
  deciding documents only: over a 50-step run with a decaying learning rate and documents at 96 tokens
  (``benchmarks/results/refresh_doc96.json``, trained with ``repair_all``) it had reward error 0.000 at steps
  10 / 30 / 50 for 32 documents a step (216x less than full) and 23 % of the step's time, against 0.000 /
  0.000 / 0.031, 83 documents and 45 % for ``repair_all``. At the default 256 tokens, in a run trained with
  it (``benchmarks/results/refresh.json``), 24 documents a step and 32 % of the step, and the policy moved
  3x further: error 0.006 / 0.023 / 0.139 (docs/results.md, "refresh policies").
  An earlier 50-step run at a constant learning rate (``benchmarks/results/refresh_session6.json``) ran
  away after step 30 (every partial policy's error with it). Every row that decides
  a reward is then the current weights' own; what the policy can still miss is a stale document whose
  fresh vector would pass a relevant one while its stale one does not. Its work per step is the
  distinct documents the step reads, with no graph neighbours and no re-encoding of what later steps
  never read (measured in ``benchmarks/bench_refresh.py``).
* ``repair_margin`` (``lazy``, off by default) covers that case: a stale row's score can move by at most
  the chord between its stale and fresh unit vectors, estimated by :meth:`RetrievalEnv.reach` from the
  latest re-encoded rows of the same age; each round also re-encodes the stale rows among the top
  ``repair_depth`` whose score is within ``repair_margin`` times that reach of the threshold that
  decides the ranking (:meth:`RetrievalEnv.within_reach`).
* ``repair_clearance`` (``lazy``) prunes the other way: a stale deciding row whose score is further than
  ``repair_clearance`` times its reach from every relevant document's (positives are always fresh)
  stays on the same side of each once re-encoded, so the reward does not depend on it and it is left
  stale (:meth:`RetrievalEnv.unclear`).
* A partly refreshed index mixes two spaces: rows of the current weights and rows of older ones. While
  the weights move little that is harmless; when they move far, a freshly re-encoded relevant document
  beats every stale row whatever the query says, so the reward reads high while the truth is low, and
  the contrastive term (fresh positive against stale negatives) pays the policy to move further
  (measured: ``benchmarks/results/refresh_lr3e-4.json``). ``full_at_drift`` guards against it: a refresh
  whose re-encoded rows moved more than that (mean cosine distance since the last refresh) re-encodes
  the whole corpus.
* Every re-encode is timed (``RefreshStats.encode_seconds``, the step-time ones included) and its
  movement recorded: ``drift`` is the mean cosine distance of the new rows from the rows they replace.
* :meth:`RetrievalEnv.drift` compares the stale index with a fully re-encoded corpus: reward error,
  rank error of the best relevant document, and recall@k of the stale top-k against the true top-k.
"""

from __future__ import annotations

import io
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes
from .retrieval import HnswGraph, exact_top_k

Encode = Callable[[list[int]], np.ndarray]  # corpus positions -> L2-normalised float32 rows
POLICIES = ("none", "local", "lazy", "full")


@dataclass
class EnvConfig:
    """Reward, retrieval and refresh settings of the environment."""

    k: int = 10  # reward cut-off: relevant documents ranked past k earn nothing
    candidates: int = 10  # documents retrieved per query (>= k): touched, and the contrastive negatives
    format_penalty: float = 0.1  # subtracted when the rollout ended its turn without the embedding token
    limit_penalty: float = 0.5  # subtracted instead when it ran into the length limit without the token
    refresh: str = "lazy"  # none | local | lazy | full (module doc)
    neighbours: int = 2  # graph neighbours of each touched document also refreshed (local)
    max_age: int = 0  # staleness budget: re-encode documents older than this many versions (0 = off)
    sweep_share: float = 0.0  # staleness budget: also re-encode the oldest share of the corpus per refresh
    ef: int = 128  # hnswlib search breadth (ef >= candidates)
    M: int = 16  # hnswlib graph degree
    seed: int = 0
    fresh_positives: bool = True  # local: re-encode a step's stale relevant documents before scoring
    repair_rounds: int = 3  # lazy: re-encode-and-search rounds per step until what decides the rewards is fresh
    repair_all: bool = (
        False  # lazy: re-encode every stale top candidate (fresh negatives too), not only those that decide the reward
    )
    full_at_drift: float = 0.0  # local/lazy: re-encode the whole corpus at a refresh where the rows re-encoded since the last one moved more than this (mean cosine distance; 0 = never)
    repair_margin: float = 0.0  # lazy: also re-encode stale rows below the top whose drift could lift them into it (multiplier of the reach; 0 = off)
    repair_depth: int = 50  # lazy: how deep the margin looks (documents per query)
    repair_clearance: float = 0.0  # lazy: leave a stale deciding row whose score clears every relevant document's by more than this multiple of its reach (its refresh could not reorder them; 0 = off)

    def __post_init__(self) -> None:
        if self.refresh not in POLICIES:
            raise ValueError(f"refresh must be one of {POLICIES}, got {self.refresh!r}")
        if self.k < 1 or self.candidates < self.k:
            raise ValueError(f"need 1 <= k <= candidates, got k={self.k}, candidates={self.candidates}")
        if self.neighbours < 0 or self.max_age < 0 or not 0.0 <= self.sweep_share <= 1.0 or self.repair_rounds < 1:
            raise ValueError("neighbours and max_age must be >= 0, repair_rounds >= 1 and sweep_share in [0, 1]")
        if self.full_at_drift < 0 or self.repair_margin < 0 or self.repair_clearance < 0:
            raise ValueError("full_at_drift, repair_margin and repair_clearance must be >= 0")
        if self.repair_depth < self.candidates:
            raise ValueError(f"repair_depth must be >= candidates ({self.candidates}), got {self.repair_depth}")
        if self.format_penalty < 0 or self.limit_penalty < 0:
            raise ValueError("format_penalty and limit_penalty must be >= 0")


@dataclass
class StepResult:
    """Rewards of one batch of query embeddings, and what was retrieved to compute them."""

    rewards: np.ndarray  # [n] float32: ndcg minus the baseline (if any) minus the format / length penalties
    ranks: np.ndarray  # [n] 1-based rank of the best relevant document among the candidates, 0 = not retrieved
    candidates: list[list[int]]  # retrieved corpus positions per query, best first
    positives: list[dict[int, int]]  # corpus position -> grade, per query
    emitted: np.ndarray  # [n] bool
    ndcg: np.ndarray | None = None  # [n] float32, the retrieval part of the reward alone
    direct_ndcg: np.ndarray | None = None  # [n] float32, the direct embeddings' (the gain's baseline), if given


@dataclass
class RefreshStats:
    """What one refresh did."""

    version: int
    encoded: int  # documents re-encoded since the last refresh (steps' fresh positives included)
    share: float  # encoded / corpus size
    touched: int  # documents the steps touched (before neighbours and budget)
    mean_age: float  # mean version age of the index after the refresh
    max_age: int
    seconds: float = 0.0  # wall time of refresh() itself
    encode_seconds: float = 0.0  # time spent re-encoding since the last refresh (the steps' re-encodes included)
    drift: float = 0.0  # mean cosine distance of the re-encoded rows from the rows they replaced
    drift_age: float = 0.0  # mean number of versions those replaced rows were old
    extra: dict = field(default_factory=dict)


@dataclass
class _Reencoded:
    """What re-encoding did since the last refresh (the steps' re-encodes and the refresh's own)."""

    rows: int = 0
    distance: float = 0.0  # summed cosine distance of the new rows from the rows they replaced
    age: float = 0.0  # summed number of versions those replaced rows were old
    seconds: float = 0.0


def dcg_reward(ranked: Sequence[int], positives: Mapping[int, int], k: int) -> tuple[float, int]:
    """(nDCG@k with linear gains, 1-based rank of the best relevant document or 0) for one ranking."""
    gains = sorted((g for g in positives.values() if g > 0), reverse=True)
    if not gains:
        raise ValueError("a query needs at least one positive with grade > 0")
    dcg, first = 0.0, 0
    for r, doc in enumerate(ranked[:k], start=1):
        g = positives.get(doc, 0)
        if g > 0:
            dcg += g / math.log2(1 + r)
    for r, doc in enumerate(ranked, start=1):
        if positives.get(doc, 0) > 0:
            first = r
            break
    ideal = sum(g / math.log2(1 + r) for r, g in enumerate(gains[:k], start=1))
    return dcg / ideal, first


class RetrievalEnv:
    """A corpus of ``size`` documents (positions ``0..size-1``) embedded by ``encode`` into an HNSW graph."""

    def __init__(
        self,
        doc_ids: Sequence[str],
        encode: Encode,
        config: EnvConfig | None = None,
        embeddings: np.ndarray | None = None,
        versions: np.ndarray | None = None,
        version: int = 0,
    ) -> None:
        self.config = config or EnvConfig()
        self.doc_ids = list(doc_ids)
        if len(set(self.doc_ids)) != len(self.doc_ids):
            raise ValueError("doc_ids must be unique")
        if len(self.doc_ids) <= self.config.candidates:
            raise ValueError(f"corpus of {len(self.doc_ids)} documents is too small for {self.config.candidates} candidates")
        self.position = {d: i for i, d in enumerate(self.doc_ids)}
        self.encode = encode
        self.version = version
        if embeddings is None:
            embeddings = self._encode(list(range(self.size)))
            versions = np.full(self.size, version, dtype=np.int64)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.shape[0] != self.size or embeddings.ndim != 2:
            raise ValueError(f"expected {self.size} embeddings, got shape {embeddings.shape}")
        self.emb = embeddings
        self.versions = np.zeros(self.size, np.int64) if versions is None else np.asarray(versions, np.int64).copy()
        self.index = HnswGraph.build(
            self.emb, space="ip", M=self.config.M, ef_construction=max(200, self.config.ef), seed=self.config.seed, num_threads=1
        )
        self.index.set_ef(max(self.config.ef, self.config.candidates + self.config.neighbours + 1))
        self._touched: set[int] = set()
        self._since_refresh = _Reencoded()
        self._moves: deque[tuple[int, float]] = deque(maxlen=1024)  # (age, chord) of the latest re-encoded rows (reach)
        self.total_encoded = 0

    @property
    def size(self) -> int:
        return len(self.doc_ids)

    def _encode(self, positions: list[int]) -> np.ndarray:
        out = np.asarray(self.encode(positions), dtype=np.float32)
        if out.shape[0] != len(positions):
            raise ValueError(f"encode returned {out.shape[0]} rows for {len(positions)} documents")
        return out

    # ------------------------------------------------------------------ reward
    def positions_of(self, qrels: Mapping[str, int]) -> dict[int, int]:
        """Map a query's judgments {doc id: grade} to {corpus position: grade}, keeping grades > 0."""
        out = {self.position[d]: int(g) for d, g in qrels.items() if d in self.position and g > 0}
        if not out:
            raise ValueError(f"none of the judged documents {sorted(qrels)[:3]} is in the corpus with grade > 0")
        return out

    def search(self, query_embeddings: np.ndarray, n: int) -> np.ndarray:
        """Corpus positions of the ``n`` nearest documents per query in the graph, best first."""
        q = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.emb.shape[1]:
            raise ValueError(f"query embeddings must be [n, {self.emb.shape[1]}], got {q.shape}")
        labels, _ = self.index.search(q, n, num_threads=1)
        return labels

    def _positions(self, queries: Sequence[str], positives: Sequence[Mapping[str, int]]) -> list[dict[int, int]]:
        out = []
        for q, pos in zip(queries, positives):
            try:
                out.append(self.positions_of(pos))
            except ValueError as e:
                raise ValueError(f"query {q!r}: {e}") from None
        return out

    def _rank(self, query_embeddings: np.ndarray, pos_maps: list[dict[int, int]]):
        cfg, n = self.config, len(pos_maps)
        ranked = self.search(query_embeddings, cfg.candidates) if n else np.zeros((0, cfg.candidates), np.int64)
        ndcg, ranks = np.zeros(n, np.float32), np.zeros(n, np.int64)
        for i, pos in enumerate(pos_maps):
            ndcg[i], ranks[i] = dcg_reward(ranked[i].tolist(), pos, cfg.k)
        return ranked, ndcg, ranks

    def score(self, queries: Sequence[str], query_embeddings: np.ndarray, positives: Sequence[Mapping[str, int]]) -> np.ndarray:
        """nDCG@k of each query embedding against the index as it is, with no side effect (nothing is
        touched or refreshed): the baseline a step's rewards are measured against."""
        if not len(query_embeddings) == len(positives) == len(queries):
            raise ValueError(f"{len(queries)} queries, {len(query_embeddings)} embeddings and {len(positives)} positive sets")
        return self._rank(query_embeddings, self._positions(queries, positives))[1]

    def step(
        self,
        queries: Sequence[str],
        query_embeddings: np.ndarray,
        positives: Sequence[Mapping[str, int]],
        emitted: Sequence[bool] | None = None,
        hit_limit: Sequence[bool] | None = None,
        direct: np.ndarray | None = None,
    ) -> StepResult:
        """Score each query embedding by the rank of its relevant documents; remember what was touched.

        ``queries`` are ids (for error messages), ``positives`` each query's {doc id: grade};
        ``emitted[i]``: rollout i wrote the token itself; ``hit_limit[i]``: it stopped at the length
        limit (penalised by ``limit_penalty`` rather than ``format_penalty`` when it did not emit);
        ``direct[i]``: the direct embedding of the same query, whose nDCG (scored after the step's
        stale positives are refreshed, like the rollouts') is subtracted: the gain reward.
        """
        n = len(queries)
        if not (len(query_embeddings) == len(positives) == n):
            raise ValueError(f"{n} queries, {len(query_embeddings)} embeddings and {len(positives)} positive sets")
        emitted = np.ones(n, bool) if emitted is None else np.asarray(emitted, bool)
        hit_limit = np.zeros(n, bool) if hit_limit is None else np.asarray(hit_limit, bool)
        if emitted.shape != (n,) or hit_limit.shape != (n,) or (direct is not None and len(direct) != n):
            raise ValueError(f"emitted, hit_limit and direct must have {n} entries")
        cfg = self.config
        pos_maps = self._positions(queries, positives)
        if cfg.refresh == "lazy" or (cfg.refresh == "local" and cfg.fresh_positives):
            self.update(sorted(set(self.stale(p for pos in pos_maps for p in pos))))
        if cfg.refresh == "lazy":
            read = query_embeddings if direct is None else np.concatenate([query_embeddings, direct])
            self._repair(read, pos_maps if direct is None else pos_maps + pos_maps)
        ranked, ndcg, ranks = self._rank(query_embeddings, pos_maps)
        base = np.zeros(n, np.float32) if direct is None else self._rank(direct, pos_maps)[1]
        for i, pos in enumerate(pos_maps):
            self._touched.update(ranked[i].tolist())
            self._touched.update(pos)
        penalty = np.where(emitted, 0.0, np.where(hit_limit, cfg.limit_penalty, cfg.format_penalty)).astype(np.float32)
        rewards = ndcg - base - penalty
        return StepResult(rewards, ranks, [r.tolist() for r in ranked], pos_maps, emitted, ndcg, None if direct is None else base)

    def deciding(self, ranked: Sequence[int], positives: Mapping[int, int]) -> list[int]:
        """The documents of one ranking that decide its reward (``lazy``, module doc): those above the
        lowest-ranked relevant document when all relevant ones are in the top ``k``, else the top ``k``;
        with ``repair_all``, the whole ranking."""
        return self._cut(ranked, positives)[0]

    def _cut(self, ranked: Sequence[int], positives: Mapping[int, int]) -> tuple[list[int], int]:
        """(the deciding documents of a ranking, the document whose score a stale row must reach to change
        the reward: the lowest-ranked relevant one when all are in the top ``k``, else the last deciding one)."""
        if self.config.repair_all:
            return list(ranked), ranked[-1]
        top = list(ranked[: self.config.k])
        hits = [r for r, d in enumerate(top) if d in positives]
        if len(hits) == len(positives):
            return top[: max(hits)], top[max(hits)]
        return top, top[-1]

    def reach(self, ages: np.ndarray) -> np.ndarray:
        """How far the scores of stale rows of the given ages may move once re-encoded: the 90th percentile
        of the chord ``|new - old|`` among the latest re-encoded rows at least as old (the chord grows with
        age; bf16 batch noise alone gives ~0.01); for an age past every observed one, the oldest rows'
        chord scaled by the age ratio. 0 before any re-encode; fresh rows (age 0) 0."""
        ages = np.asarray(ages)
        out = np.zeros(ages.shape, np.float64)
        if not self._moves:
            return out
        seen = np.array(self._moves, np.float64)  # [n, 2]: age, chord
        top = seen[:, 0].max()
        for a in np.unique(ages[ages > 0]):
            if a <= top:
                out[ages == a] = np.quantile(seen[seen[:, 0] >= a, 1], 0.9)
            else:
                out[ages == a] = np.quantile(seen[seen[:, 0] == top, 1], 0.9) * a / top
        return out

    def within_reach(self, query_embeddings: np.ndarray, ranked: np.ndarray, pos_maps: list[dict[int, int]]) -> set[int]:
        """``lazy`` with ``repair_margin``: stale rows below a ranking's deciding part that their drift could
        lift into it. For unit rows a query's score of a document moves by at most the chord between its
        stale and fresh rows, estimated as ``repair_margin * reach(age)``; a row within that of the
        threshold (the last candidate's score with ``repair_all``, else the lowest relevant document's when
        all are in the top ``k``, else the ``k``-th) may pass it once fresh."""
        cfg = self.config
        if cfg.repair_margin <= 0 or not self._moves or not len(query_embeddings):
            return set()
        q = np.asarray(query_embeddings, np.float32)
        deep = self.search(q, min(cfg.repair_depth, self.size))
        scores = np.einsum("qd,qnd->qn", q, self.emb[deep])
        reach = np.minimum(2.0, cfg.repair_margin * self.reach(self.version - self.versions[deep]))
        out: set[int] = set()
        for i, (row, pos) in enumerate(zip(ranked.tolist(), pos_maps)):
            threshold = float(q[i] @ self.emb[self._cut(row, pos)[1]])
            out.update(deep[i][(reach[i] > 0) & (scores[i] + reach[i] >= threshold)].tolist())
        return out

    def _repair(self, query_embeddings: np.ndarray, pos_maps: list[dict[int, int]]) -> None:
        """``lazy``: re-encode the stale rows that decide the rewards of ``query_embeddings`` and search
        again, until none is stale or ``repair_rounds`` rounds are done."""
        for _ in range(self.config.repair_rounds):
            ranked = self.search(query_embeddings, self.config.candidates)
            stale: set[int] = set()
            for q, row, pos in zip(query_embeddings, ranked.tolist(), pos_maps):
                stale.update(self.unclear(q, self.stale(self.deciding(row, pos)), pos))
            stale.update(self.stale(self.within_reach(query_embeddings, ranked, pos_maps)))
            if not stale:
                return
            self.update(sorted(stale))

    def stale(self, rows: Iterable[int]) -> list[int]:
        """Those of ``rows`` encoded by older weights than the current version."""
        return [d for d in rows if self.versions[d] < self.version]

    def unclear(self, query_embedding: np.ndarray, rows: Sequence[int], positives: Mapping[int, int]) -> list[int]:
        """``lazy`` with ``repair_clearance``: of a ranking's stale deciding ``rows``, those whose re-encode
        could move them past one of the (fresh) relevant documents: a row's score moves by at most its
        chord, estimated as ``repair_clearance * reach(age)``, so a row whose score differs from every
        relevant document's by more than that stays on the same side of each, and the reward is what
        it is without it. All of ``rows`` while no re-encode has been observed (the reach is unknown)."""
        rows = list(rows)
        if self.config.repair_clearance <= 0 or not rows or not self._moves or not positives:
            return rows
        q = np.asarray(query_embedding, np.float32)
        scores = self.emb[rows] @ q
        pos_scores = self.emb[list(positives)] @ q
        reach = self.config.repair_clearance * self.reach(self.version - self.versions[rows])
        near = (np.abs(scores[:, None] - pos_scores[None, :]) <= reach[:, None]).any(1)
        return [r for r, keep in zip(rows, near.tolist()) if keep]

    # ------------------------------------------------------------------ refresh
    def refresh_set(self) -> tuple[list[int], int]:
        """(sorted positions the policy would re-encode now, number touched by steps) — see module doc."""
        cfg = self.config
        touched = sorted(self._touched)
        if cfg.refresh == "none":
            return [], len(touched)
        done = self._since_refresh
        moved = done.distance / done.rows if done.rows else 0.0
        if cfg.refresh == "full" or (cfg.full_at_drift and moved > cfg.full_at_drift):
            return list(range(self.size)), len(touched)
        chosen = set(touched) if cfg.refresh == "local" else set()
        if cfg.refresh == "local" and cfg.neighbours and touched:
            # Graph neighbours: the nearest documents to each touched document's own stored vector.
            near = self.search(self.emb[touched], cfg.neighbours + 1)
            chosen.update(near.ravel().tolist())
        age = self.version - self.versions
        if cfg.max_age:
            chosen.update(np.flatnonzero(age > cfg.max_age).tolist())
        if cfg.sweep_share:
            n_sweep = int(math.ceil(cfg.sweep_share * self.size))
            rest = np.array(sorted(set(range(self.size)) - chosen), dtype=np.int64)
            oldest = rest[np.argsort(-age[rest], kind="stable")[:n_sweep]]
            chosen.update(oldest.tolist())
        return sorted(chosen), len(touched)

    def refresh(self) -> RefreshStats:
        """Advance to the next policy version and re-encode what the policy asks for, in place."""
        start = time.perf_counter()
        self.version += 1
        chosen, touched = self.refresh_set()
        self.update(chosen)
        done, self._since_refresh = self._since_refresh, _Reencoded()
        self._touched.clear()
        age = self.version - self.versions
        per_row = max(1, done.rows)
        return RefreshStats(
            self.version,
            done.rows,
            done.rows / self.size,
            touched,
            float(age.mean()),
            int(age.max()),
            time.perf_counter() - start,
            done.seconds,
            done.distance / per_row,
            done.age / per_row,
        )

    def update(self, positions: Sequence[int], embeddings: np.ndarray | None = None) -> None:
        """Write new vectors (encoded now unless given) for ``positions`` into the graph and the mirror."""
        positions = list(positions)
        if not positions:
            return
        if min(positions) < 0 or max(positions) >= self.size:
            raise ValueError(f"positions must be in [0, {self.size})")
        start = time.perf_counter()
        vecs = self._encode(positions) if embeddings is None else np.asarray(embeddings, np.float32)
        done = self._since_refresh
        if embeddings is None:  # a re-encode: record how far the rows moved
            distance = 1.0 - (self.emb[positions] * vecs).sum(1)
            age = self.version - self.versions[positions]
            done.rows += len(positions)
            done.distance += float(distance.sum())
            done.age += float(age.sum())
            moved = age > 0
            self._moves.extend(zip(age[moved].tolist(), np.sqrt(2 * np.maximum(distance[moved], 0)).tolist()))
            self.total_encoded += len(positions)
        self.index.add(vecs, positions, num_threads=1)
        self.emb[positions] = vecs
        self.versions[positions] = self.version
        done.seconds += time.perf_counter() - start

    def check_consistency(self, atol: float = 1e-6) -> None:
        """Raise if the graph's labels or vectors differ from the mirror (every position, exactly once)."""
        labels = sorted(self.index.labels())
        if labels != list(range(self.size)) or len(self.index) != self.size:
            raise AssertionError(f"index holds {len(labels)} labels, expected positions 0..{self.size - 1}")
        stored = self.index.items(range(self.size))
        if not np.allclose(stored, self.emb, atol=atol):
            raise AssertionError("index vectors differ from the mirror")

    # ------------------------------------------------------------------ drift against the truth
    def drift(self, query_embeddings: np.ndarray, result: StepResult, true_embeddings: np.ndarray) -> dict[str, float]:
        """Compare ``result`` (this index's step) with exact retrieval over a fully re-encoded corpus."""
        cfg = self.config
        q = np.asarray(query_embeddings, np.float32)
        true_scores, stale_scores = q @ true_embeddings.T, q @ self.emb.T
        _, true_top = exact_top_k(q, true_embeddings, cfg.candidates)
        rew_err, rank_err, recall = [], [], []
        for i, pos in enumerate(result.positives):
            order = true_top[i]
            true_reward, _ = dcg_reward(order[: cfg.candidates].tolist(), pos, cfg.k)
            stale_reward = float(result.ndcg[i])  # the retrieval part alone (no penalty, no gain baseline)
            rew_err.append(abs(float(stale_reward) - true_reward))
            best = max(pos, key=lambda d: (pos[d], -d))
            rank_true = 1 + int((true_scores[i] > true_scores[i, best]).sum())
            rank_stale = 1 + int((stale_scores[i] > stale_scores[i, best]).sum())
            rank_err.append(abs(rank_true - rank_stale))
            recall.append(len(set(order[: cfg.k].tolist()) & set(result.candidates[i][: cfg.k])) / cfg.k)
        return {
            "reward_error": float(np.mean(rew_err)),
            "rank_error": float(np.mean(rank_err)),
            f"recall@{cfg.k}": float(np.mean(recall)),
        }

    # ------------------------------------------------------------------ persistence
    def state_bytes(self) -> bytes:
        """The index state (vectors, versions, ids, config) as ``.npz`` bytes; the graph is rebuilt on load."""
        buf = io.BytesIO()
        np.savez(
            buf,
            emb=self.emb,
            versions=self.versions,
            version=np.int64(self.version),
            doc_ids=np.array(self.doc_ids),
            total_encoded=np.int64(self.total_encoded),
            config=np.array(repr(asdict(self.config))),
        )
        return buf.getvalue()

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(path, self.state_bytes())

    @classmethod
    def load(cls, path: str | Path, encode: Encode, config: EnvConfig | None = None) -> "RetrievalEnv":
        """Restore a saved state (``config`` overrides the saved settings, e.g. another refresh policy)."""
        with np.load(path) as z:
            env = cls(
                [str(d) for d in z["doc_ids"]],
                encode,
                config,
                embeddings=z["emb"],
                versions=z["versions"],
                version=int(z["version"]),
            )
            env.total_encoded = int(z["total_encoded"])
        return env


def model_encoder(
    model, texts: Sequence[str], batch_size: int = 16, show_progress_bar: bool = False, max_length: int | None = None
) -> Encode:
    """An :data:`Encode` over ``texts`` with a :class:`~searchr3.SearchR3` (documents, direct, normalised),
    in eval mode and at ``max_length`` tokens (default: the model's)."""

    def encode(positions: list[int]) -> np.ndarray:
        with model.evaluating(max_length):
            return model.encode_document(
                [texts[i] for i in positions],
                batch_size=batch_size,
                show_progress_bar=show_progress_bar and len(positions) > 4 * batch_size,
            )

    return encode
