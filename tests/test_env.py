"""The RL environment: rewards, refresh policies, index consistency, drift, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from searchr3.env import EnvConfig, RetrievalEnv, dcg_reward, model_encoder

TEXTS = [
    f"document number {i} about {w}"
    for i, w in enumerate(
        "cats mats paris france proteins folding search engines hearts blood rain clouds vectors text meaning "
        "rivers mountains music stars planets bread cheese trains boats".split()
    )
]


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Table:
    """An encoder that reads rows of a matrix the test controls (and counts what it encoded)."""

    def __init__(self, rows):
        self.rows = unit(rows)
        self.calls: list[list[int]] = []

    def __call__(self, positions):
        self.calls.append(list(positions))
        return self.rows[positions]


def line_env(n=12, **cfg):
    """Documents on a circle arc: the query at angle 0 ranks them 0, 1, 2, ... exactly."""
    angles = np.linspace(0, 1.2, n)
    table = Table(np.stack([np.cos(angles), np.sin(angles), np.zeros(n)], 1))
    env = RetrievalEnv([f"d{i}" for i in range(n)], table, EnvConfig(**{"k": 3, "candidates": 5, **cfg}))
    return env, table


def test_reward_matches_hand_computation():
    env, _ = line_env()
    q = unit([[1, 0, 0], [1, 0, 0]])
    res = env.step(["q1", "q2"], q, [{"d1": 2, "d3": 1}, {"d7": 1}], emitted=[True, False])
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert res.rewards[0] == pytest.approx((2 / math.log2(3)) / ideal)  # d1 at rank 2, d3 at rank 4 > k
    assert res.ranks.tolist() == [2, 0]  # d7 is not among the 5 candidates
    assert res.rewards[1] == pytest.approx(-0.1)  # nothing in the top 3, token missing
    assert res.candidates[0] == [0, 1, 2, 3, 4]
    assert dcg_reward([5, 9, 2], {2: 1}, k=3) == (pytest.approx(1 / math.log2(4)), 3)


def test_missing_token_is_penalised(tiny):
    tiny.prompts.max_reasoning_tokens = 3
    env = RetrievalEnv(
        [f"d{i}" for i in range(len(TEXTS))], model_encoder(tiny, TEXTS), EnvConfig(k=5, candidates=8, format_penalty=0.25)
    )
    ro = tiny.reason(["cats on mats", "paris"], max_new_tokens=3)
    assert ro.emitted == [False, False]  # a random model does not emit the token in 3 tokens
    pos = [{"d0": 1}, {"d2": 1}]
    clean = env.step(["a", "b"], ro.embeddings.numpy(), pos, emitted=[True, True]).rewards
    penalised = env.step(["a", "b"], ro.embeddings.numpy(), pos, emitted=ro.emitted).rewards
    np.testing.assert_allclose(penalised, clean - 0.25, atol=1e-6)


def _perturb(tiny, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tiny.model.model.layers[0].parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def test_local_refresh_updates_exactly_the_touched_ids_and_their_neighbours(tiny):
    encode = model_encoder(tiny, TEXTS)
    env = RetrievalEnv([f"d{i}" for i in range(len(TEXTS))], encode, EnvConfig(k=2, candidates=3, neighbours=1, refresh="local"))
    before = env.emb.copy()
    q = tiny.encode_query(["proteins folding"])
    res = env.step(["q"], q, [{"d20": 1}])
    touched = set(res.candidates[0]) | {20}
    expected = touched | set(env.search(env.emb[sorted(touched)], 2).ravel().tolist())
    assert len(expected) < env.size
    _perturb(tiny, 1)
    stats = env.refresh()
    changed = set(np.flatnonzero(env.versions == 1).tolist())
    assert changed == expected and stats.encoded == len(expected) and stats.touched == len(touched)
    fresh = encode(list(range(env.size)))
    for i in range(env.size):
        np.testing.assert_allclose(env.emb[i], fresh[i] if i in expected else before[i], atol=1e-5)
    assert not np.allclose(fresh[sorted(expected)], before[sorted(expected)], atol=1e-3)
    env.check_consistency()


def test_policies_and_staleness_budget():
    env, table = line_env(n=20, refresh="none")
    env.step(["q"], unit([[1, 0, 0]]), [{"d0": 1}])
    assert env.refresh().encoded == 0
    env.config.refresh = "full"
    assert env.refresh().encoded == 20 and (env.versions == 2).all()
    env.config.refresh, env.config.neighbours, env.config.max_age = "local", 0, 2
    env.refresh()  # version 3: nothing touched, nothing older than 2
    assert env.refresh_set() == ([], 0)
    env.step(["q"], unit([[1, 0, 0]]), [{"d0": 1}])  # touches d0..d4
    env.refresh()  # version 4: d0..d4 re-encoded; the rest are 2 versions old, not > 2
    env.refresh()  # version 5: the rest are 3 old -> forced by the budget
    assert (env.versions[5:] == 5).all() and (env.versions[:5] == 4).all()
    env.config.max_age, env.config.sweep_share = 0, 0.1
    stats = env.refresh()  # version 6: the 2 oldest (d0, d1: stable order among equals)
    assert stats.encoded == 2 and env.versions[:2].tolist() == [6, 6]
    assert stats.mean_age == pytest.approx(np.mean(6 - env.versions))


def test_local_policy_scores_with_fresh_positives():
    q = unit([[math.cos(-0.1), math.sin(-0.1), 0]])
    for policy in ("local", "none"):
        env, table = line_env(n=12, neighbours=0, refresh=policy)
        env.step(["q"], unit([[1, 0, 0]]), [{"d0": 1}])
        env.refresh()  # version 1; local re-encoded d0..d4, d5..d11 are stale
        table.rows[9] = unit([math.cos(-0.1), math.sin(-0.1), 0])  # the new weights put d9 right on q
        calls = len(table.calls)
        res = env.step(["q"], q, [{"d9": 1}])
        if policy == "local":  # d9 was re-encoded before scoring: rank 1, full reward
            assert table.calls[calls:] == [[9]] and env.versions[9] == 1
            assert res.ranks.tolist() == [1] and res.rewards[0] == pytest.approx(1.0)
            assert env.refresh().encoded == 1 + 5  # the fresh positive + the 5 touched candidates (d9 among them)
        else:  # its stale vector sits at the far end of the arc: not retrieved, no reward
            assert len(table.calls) == calls and res.ranks.tolist() == [0] and res.rewards[0] == 0
        env.check_consistency()
    env, table = line_env(n=12, refresh="local", fresh_positives=False)
    env.refresh()
    env.step(["q"], q, [{"d9": 1}])
    assert env.versions[9] == 0  # switched off: scored with the stale row


def test_index_stays_consistent_after_many_refreshes():
    rng = np.random.default_rng(0)
    n, dim = 60, 8
    table = Table(rng.normal(size=(n, dim)))
    env = RetrievalEnv([f"d{i}" for i in range(n)], table, EnvConfig(k=3, candidates=6, neighbours=2, sweep_share=0.05))
    for round_ in range(25):
        table.rows = unit(table.rows + 0.3 * rng.normal(size=(n, dim)))  # the "policy" changed
        q = unit(rng.normal(size=(3, dim)))
        env.step(["a", "b", "c"], q, [{f"d{rng.integers(n)}": 1} for _ in range(3)])
        chosen, _ = env.refresh_set()
        env.refresh()
        np.testing.assert_allclose(env.emb[chosen], table.rows[chosen], atol=1e-6)
        env.check_consistency()
    # the graph answers like exact search over its own vectors
    q = unit(rng.normal(size=(10, dim)))
    exact = np.argsort(-(q @ env.emb.T), axis=1)[:, :6]
    assert (env.search(q, 6) == exact).mean() > 0.95


def test_drift_is_zero_after_full_refresh_and_positive_when_stale():
    rng = np.random.default_rng(1)
    n, dim = 40, 6
    table = Table(rng.normal(size=(n, dim)))
    env = RetrievalEnv([f"d{i}" for i in range(n)], table, EnvConfig(k=5, candidates=10, refresh="none"))
    q = unit(table.rows[:8] + 0.1 * rng.normal(size=(8, dim)))
    pos = [{f"d{i}": 1} for i in range(8)]
    table.rows = unit(rng.normal(size=(n, dim)))  # every document moved
    d_stale = env.drift(q, env.step(list("abcdefgh"), q, pos), table.rows)
    env.config.refresh = "full"
    env.refresh()
    d_fresh = env.drift(q, env.step(list("abcdefgh"), q, pos), table.rows)
    assert d_fresh == {"reward_error": pytest.approx(0, abs=1e-6), "rank_error": 0.0, "recall@5": 1.0}
    assert d_stale["reward_error"] > 0.1 and d_stale["recall@5"] < 0.5


def test_save_and_load_roundtrip(tmp_path):
    env, table = line_env()
    env.step(["q"], unit([[1, 0, 0]]), [{"d1": 1}])
    env.refresh()
    env.save(tmp_path / "env.npz")
    back = RetrievalEnv.load(tmp_path / "env.npz", table, EnvConfig(k=3, candidates=5))
    assert back.version == 1 and back.doc_ids == env.doc_ids
    np.testing.assert_array_equal(back.emb, env.emb)
    np.testing.assert_array_equal(back.versions, env.versions)
    back.check_consistency()


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="refresh must be one of"):
        EnvConfig(refresh="sometimes")
    with pytest.raises(ValueError, match="k <= candidates"):
        EnvConfig(k=10, candidates=5)
    with pytest.raises(ValueError, match="too small"):
        RetrievalEnv(["a", "b"], Table(np.eye(2)), EnvConfig(k=1, candidates=5))
    with pytest.raises(ValueError, match="unique"):
        RetrievalEnv(["a"] * 8, Table(np.eye(8)), EnvConfig(k=1, candidates=2))
    env, _ = line_env()
    with pytest.raises(ValueError, match="2 queries, 1 embeddings"):
        env.step(["a", "b"], unit([[1, 0, 0]]), [{"d1": 1}, {"d2": 1}])
    with pytest.raises(ValueError, match=r"query 'a'.*none of the judged"):
        env.step(["a"], unit([[1, 0, 0]]), [{"nope": 1}])
    with pytest.raises(ValueError, match=r"must be \[n, 3\]"):
        env.step(["a"], unit([[1, 0, 0, 0]]), [{"d1": 1}])
    with pytest.raises(ValueError, match="positions must be in"):
        env.update([99])


def test_gain_reward_and_penalties_by_hand():
    """reward = nDCG(rollout) - nDCG(direct embedding of the same query) - penalty, where the penalty is
    format_penalty for a turn ended without the token and limit_penalty for a length-limit stop."""
    env, _ = line_env(format_penalty=0.1, limit_penalty=0.5)
    first, third = unit([[1, 0, 0]] * 4), unit([[np.cos(0.25), np.sin(0.25), 0]] * 4)  # rank d0..., or d2 d1 d3 ...
    pos = [{"d2": 1}] * 4
    res = env.step(["q"] * 4, third, pos, emitted=[True, False, False, True], hit_limit=[False, False, True, False], direct=first)
    at1, at3 = 1.0, 1 / math.log2(4)  # d2 ranks 1st after the rollout's embedding, 3rd after the direct one
    assert res.ndcg == pytest.approx([at1] * 4)
    assert res.direct_ndcg == pytest.approx([at3] * 4)
    assert res.rewards == pytest.approx([at1 - at3, at1 - at3 - 0.1, at1 - at3 - 0.5, at1 - at3])
    assert env.score(["q"], first[:1], pos[:1]) == pytest.approx([at3])  # the baseline alone, no side effect
    with pytest.raises(ValueError, match="direct"):
        env.step(["q"], third[:1], pos[:1], direct=first)


def test_lazy_policy_re_encodes_exactly_what_the_step_reads():
    q = unit([[math.cos(-0.05), math.sin(-0.05), 0]])
    env, table = line_env(n=12, refresh="lazy", repair_margin=0, repair_all=False)
    assert EnvConfig().refresh == "lazy" and not EnvConfig().repair_all and not EnvConfig().repair_margin  # the library default
    env.step(["q"], q, [{"d0": 1}])  # version 0: everything is fresh, nothing re-encoded
    assert table.calls == [list(range(12))]
    stats = env.refresh()  # version 1: lazy re-encodes nothing after the update
    assert stats.encoded == 0 and table.calls[-1] == list(range(12))
    # The new weights: d9 lands right on q, d1 turns away to the far end; the rest keep their place.
    table.rows[9] = q[0]
    table.rows[1] = unit([math.cos(1.5), math.sin(1.5), 0])
    calls = len(table.calls)
    res = env.step(["q"], q, [{"d9": 1}])
    # The stale positive is re-encoded first; it then heads the ranking: nothing else decides the reward.
    assert table.calls[calls:] == [[9]] and res.ranks.tolist() == [1] and res.rewards[0] == pytest.approx(1.0)
    env, table = line_env(n=12, refresh="lazy", repair_margin=0, repair_all=True)  # the same step, every top candidate repaired
    env.refresh()
    table.rows[9] = q[0]
    table.rows[1] = unit([math.cos(1.5), math.sin(1.5), 0])
    calls = len(table.calls)
    res = env.step(["q"], q, [{"d9": 1}])
    rounds = table.calls[calls:]
    # the stale positive first; then the stale rows of the top 5 it now heads (d0..d3); then what the
    # second search brought up (d4, in the top 5 since d1 left); then nothing stale is read
    assert rounds == [[9], [0, 1, 2, 3], [4]]
    assert res.ranks.tolist() == [1] and res.rewards[0] == pytest.approx(1.0)
    assert res.candidates[0] == [9, 0, 2, 3, 4]
    assert env.versions[[0, 1, 2, 3, 4, 9]].tolist() == [1] * 6 and (env.versions[[5, 6, 7, 8, 10, 11]] == 0).all()
    stats = env.refresh()
    assert stats.encoded == 6 and stats.touched == 5  # every encode of the step is counted at the refresh
    env.check_consistency()


def test_lazy_policy_repairs_the_direct_baselines_reads_too():
    env, table = line_env(n=12, refresh="lazy", repair_margin=0, candidates=3, k=3, repair_all=False)
    env.refresh()
    calls = len(table.calls)
    far = unit([[math.cos(1.2), math.sin(1.2), 0]])  # the direct embedding reads the other end of the arc
    env.step(["q"], unit([[1, 0, 0]]), [{"d0": 1}], direct=far)
    read = sorted(p for c in table.calls[calls:] for p in c)
    # d0 (the stale positive) heads the rollout's ranking; the direct embedding's top 3 miss it, so all decide
    assert read == [0, 9, 10, 11]


def test_lazy_repair_stops_after_its_rounds():
    env, table = line_env(n=12, refresh="lazy", repair_margin=0, repair_rounds=1, repair_all=True)
    env.refresh()
    table.rows[1] = unit([math.cos(1.5), math.sin(1.5), 0])  # d1 leaves the top 5: d5 comes in, stale
    calls = len(table.calls)
    res = env.step(["q"], unit([[1, 0, 0]]), [{"d0": 1}])
    assert table.calls[calls:] == [[0], [1, 2, 3, 4]]  # the stale positive, then one round of repair
    assert env.versions[5] == 0 and 5 in res.candidates[0]
    with pytest.raises(ValueError, match="repair_rounds"):
        EnvConfig(repair_rounds=0)


def test_refresh_reports_drift_and_encode_time():
    env, table = line_env(n=12, refresh="full")
    table.rows = unit(table.rows + np.array([0, 0, 0.5]))  # every row tilts out of the plane
    cos = (unit(table.rows) * env.emb).sum(1)
    stats = env.refresh()
    assert stats.encoded == 12 and stats.drift == pytest.approx(float((1 - cos).mean()), rel=1e-5)
    assert stats.drift_age == pytest.approx(1.0) and stats.encode_seconds > 0
    assert env.refresh().drift == pytest.approx(0, abs=1e-6)  # nothing moved since


def test_the_documents_that_decide_a_reward():
    env, _ = line_env(n=12, refresh="lazy", repair_margin=0, k=3, candidates=5, repair_all=False)
    ranking = [5, 3, 7, 1, 0]
    assert env.deciding(ranking, {7: 1}) == [5, 3]  # above the only relevant document
    assert env.deciding(ranking, {5: 1}) == []  # it is first: nothing can change its reward but itself
    assert env.deciding(ranking, {7: 1, 9: 1}) == [5, 3, 7]  # d9 is outside the top 3: any of them may fall below it
    assert env.deciding(ranking, {1: 1}) == [5, 3, 7]  # past k: the whole top k
    env.config.repair_all = True
    assert env.deciding(ranking, {7: 1}) == ranking


def test_a_refresh_after_large_drift_re_encodes_everything():
    q = unit([[1, 0, 0]])
    encoded = {}
    for guard in (0.0, 0.1, 0.9):
        env, table = line_env(n=12, refresh="lazy", repair_margin=0, full_at_drift=guard)
        env.refresh()
        table.rows = unit(table.rows + np.array([0, 0, 1.5]))  # the new weights moved every row (cosine distance ~0.45)
        env.step(["q"], q, [{"d0": 1}])  # re-encodes what it reads: their move is what the guard sees
        stats = env.refresh()
        encoded[guard] = stats.encoded
        assert stats.drift > 0.2
        assert (env.versions == 2).all() == (guard == 0.1)
        env.check_consistency()
    assert encoded[0.0] == encoded[0.9] < 12 and encoded[0.1] == encoded[0.0] + 12
    with pytest.raises(ValueError, match="full_at_drift"):
        EnvConfig(full_at_drift=-1)


def test_lazy_margin_re_encodes_stale_rows_their_drift_could_lift_into_the_ranking():
    """The new weights turn every row by 0.1 rad along the arc (a chord of ~0.1 per version) and bring d2
    in front of the positive d0. d2's stale row ranks below d0, so only the margin finds it: the stale
    rows whose score is within their reach (the chord of re-encoded rows as old) of the threshold are re-encoded, and the reward is the
    truth's; the far end of the arc is never read. Without the margin d2 stays stale and the reward is 1."""
    q = unit([[1, 0, 0]])
    angles = np.linspace(0, 1.2, 12) + 0.1
    angles[2] = 0.05
    moved = unit(np.stack([np.cos(angles), np.sin(angles), np.zeros(12)], 1))
    truth = 1 / math.log2(3)  # d2 fresh ranks first, d0 second
    for margin in (0.0, 1.0):
        env, table = line_env(n=12, refresh="lazy", repair_all=False, repair_margin=margin)
        env.refresh()
        table.rows = moved.copy()
        calls = len(table.calls)
        res = env.step(["q"], q, [{"d0": 1}])
        read = sorted({p for c in table.calls[calls:] for p in c})
        if margin == 0:
            assert read == [0] and res.rewards[0] == pytest.approx(1.0)  # d0 fresh heads the stale rows: the miss
        else:
            # the 90th percentile of the re-encoded rows' chords: the 0.1 rad turn's and d2's longer move
            one, two, fresh = env.reach(np.array([1, 2, 0]))
            assert 2 * math.sin(0.05) - 1e-6 < one < 2 * math.sin((1.2 * 2 / 11 - 0.05) / 2)
            assert two == pytest.approx(2 * one) and fresh == 0  # past every observed age: scaled by the age ratio
            assert 2 in read and not {9, 10, 11} & set(read)
            assert res.rewards[0] == pytest.approx(truth) and res.candidates[0][:2] == [2, 0]
        env.check_consistency()
    with pytest.raises(ValueError, match="repair_depth"):
        EnvConfig(candidates=10, repair_depth=5)
    with pytest.raises(ValueError, match="repair_margin"):
        EnvConfig(repair_margin=-1)


def test_lazy_clearance_leaves_stale_rows_that_cannot_reorder_the_relevant_ones():
    """d3 (relevant) ranks 4th, past k = 3, so d0-d2 decide the reward. The new weights turn every row by
    0.02 rad and carry d2, whose score is within that of d3's, past it. With the clearance only d2 (and the
    positive) are re-encoded: d0 and d1 clear d3's score by far more than any row moved. The reward is
    the truth's either way (d3 third: 1 / log2(4))."""
    angles = np.array([0.0, 0.3, 0.5, 0.52, 0.9, 1.0, 1.1, 1.2])
    moved = angles + 0.02
    moved[2] = 0.56
    arc = lambda a: unit(np.stack([np.cos(a), np.sin(a), np.zeros(len(a))], 1))  # noqa: E731
    q = unit([[1, 0, 0]])
    read = {}
    for clearance in (0.0, 1.0):
        table = Table(arc(angles))
        env = RetrievalEnv(
            [f"d{i}" for i in range(8)], table, EnvConfig(k=3, candidates=5, refresh="lazy", repair_clearance=clearance)
        )
        assert env.unclear(q[0], [0, 1, 2], {3: 1}) == [0, 1, 2]  # no re-encode seen yet: the reach is unknown
        env.refresh()
        table.rows = arc(moved)
        calls = len(table.calls)
        res = env.step(["q"], q, [{"d3": 1}])
        read[clearance] = sorted({p for c in table.calls[calls:] for p in c})
        assert res.rewards[0] == pytest.approx(1 / math.log2(4))
        env.check_consistency()
    assert read[0.0] == [0, 1, 2, 3] and read[1.0] == [2, 3]
    with pytest.raises(ValueError, match="repair_clearance"):
        EnvConfig(repair_clearance=-0.5)
