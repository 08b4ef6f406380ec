"""The MTEB 2.x wrapper and the sentence-transformers-style adapter, against the installed libraries."""

import mteb  # a hard dependency: imported, never skipped
import numpy as np
import pytest
import torch
from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.models_protocols import EncoderProtocol, SearchProtocol

from searchr3.adapters import MTEBSearchR3, STAdapter


@pytest.fixture()
def wrapper(tiny):
    tiny.prompts.max_reasoning_tokens = 4
    return MTEBSearchR3(tiny, reasoning=True)


def test_mteb_protocols(wrapper, tiny):
    assert isinstance(wrapper, AbsEncoder) and isinstance(wrapper, EncoderProtocol) and isinstance(wrapper, SearchProtocol)
    meta = wrapper.mteb_model_meta
    assert meta.embed_dim == tiny.hidden_size and meta.similarity_fn_name == "cosine"


def test_mteb_evaluate_runs_search_with_reasoning(wrapper, tiny):
    calls = []
    reason = tiny.reason
    tiny.reason = lambda texts, **kw: calls.append(len(texts)) or reason(texts, **kw)  # count, then run the real thing
    result = mteb.evaluate(wrapper, [MockRetrievalTask()], cache=None, show_progress_bar=False, raise_error=True)
    scores = result.task_results[0].scores["test"][0]
    assert 0 <= scores["ndcg_at_10"] <= 1 and scores["main_score"] == scores["ndcg_at_10"]
    assert wrapper._doc_ids and calls, "mteb did not use the wrapper's index/search with reasoning queries"


def test_mteb_search_reranks_top_ranked(wrapper):
    from datasets import Dataset
    from mteb.abstasks.task_metadata import TaskMetadata

    task = MockRetrievalTask()
    corpus = Dataset.from_dict({"id": ["a", "b", "c"], "title": ["", "", ""], "text": ["the cat", "paris france", "rain clouds"]})
    queries = Dataset.from_dict({"id": ["q1", "q2"], "text": ["cat", "rain"]})
    md: TaskMetadata = task.metadata
    wrapper.index(corpus, task_metadata=md, hf_split="test", hf_subset="default", encode_kwargs={})
    full = wrapper.search(queries, task_metadata=md, hf_split="test", hf_subset="default", top_k=2, encode_kwargs={})
    assert set(full) == {"q1", "q2"} and all(len(v) == 2 for v in full.values())
    only = wrapper.search(
        queries,
        task_metadata=md,
        hf_split="test",
        hf_subset="default",
        top_k=5,
        encode_kwargs={},
        top_ranked={"q1": ["c"], "q2": []},
    )
    assert list(only["q1"]) == ["c"] and only["q2"] == {}
    fresh = MTEBSearchR3(wrapper.model)
    with pytest.raises(RuntimeError, match="index"):
        fresh.search(queries, task_metadata=md, hf_split="test", hf_subset="default", top_k=1, encode_kwargs={})


def test_st_adapter_runs_sentence_transformers_evaluator(tiny):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    st = STAdapter(tiny)
    corpus = {"a": "the cat sat on the mat", "b": "paris is the capital of france", "c": "rain falls from clouds"}
    ev = InformationRetrievalEvaluator({"q": "cat on a mat"}, corpus, {"q": {"a"}}, show_progress_bar=False, write_csv=False)
    metrics = ev(st)
    assert 0 <= metrics["cosine_ndcg@10"] <= 1 and "cosine_mrr@10" in metrics
    assert st.model_card_data.evaluations[0]["metrics"] == metrics


def test_st_adapter_matches_model(tiny):
    st = STAdapter(tiny)
    q = st.encode_query(["paris"], convert_to_tensor=True)
    d = st.encode(["paris"], prompt_name="document")
    assert isinstance(q, torch.Tensor) and isinstance(d, np.ndarray)
    np.testing.assert_allclose(q.numpy(), tiny.encode_query(["paris"]), atol=1e-6)
    np.testing.assert_allclose(d, tiny.encode_document(["paris"]), atol=1e-6)
    assert st.encode_document(["paris"], truncate_dim=8).shape == (1, 8)
    assert st.get_sentence_embedding_dimension() == tiny.hidden_size
    sim = st.similarity(q, torch.as_tensor(d))
    assert sim.shape == (1, 1) and float(sim) == pytest.approx(float(q[0] @ torch.as_tensor(d[0])), abs=1e-5)
    with pytest.raises(ValueError, match="free-text prompts"):
        st.encode(["x"], prompt="Represent this:")
    with pytest.raises(ValueError, match="unknown prompt_name"):
        st.encode(["x"], prompt_name="classification")


def test_st_adapter_query_modes(tiny):
    """The adapter takes encode_query's three modes; "mix" stays the mix (it once became plain reasoning),
    and documents are always encoded directly."""
    tiny.prompts.max_reasoning_tokens = 4
    st = STAdapter(tiny, reasoning="mix")
    np.testing.assert_allclose(st.encode_query(["paris"]), tiny.encode_query(["paris"], reasoning="mix"), atol=1e-6)
    assert not np.allclose(st.encode_query(["paris"]), tiny.encode_query(["paris"], reasoning="on"), atol=1e-4)
    np.testing.assert_allclose(st.encode_document(["paris"]), tiny.encode_document(["paris"]), atol=1e-6)
    with pytest.raises(ValueError, match="reasoning must be"):
        STAdapter(tiny, reasoning="maybe")
