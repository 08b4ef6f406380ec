"""Adapters for other tools: a sentence-transformers-style encoder and an MTEB 2.x model wrapper.

* :class:`STAdapter` has the methods sentence-transformers' evaluators call on a
  ``SentenceTransformer`` (``encode``/``encode_query``/``encode_document`` with ``prompt_name``,
  ``convert_to_tensor``..., ``similarity``, ``similarity_fn_name``), so e.g.
  ``InformationRetrievalEvaluator`` runs on a Search-R3 model unchanged.
* :class:`MTEBSearchR3` implements MTEB's ``EncoderProtocol`` (via ``AbsEncoder``) *and*
  ``SearchProtocol``: with ``reasoning=True`` (or ``"mix"``) queries are embedded after the model reasons, which a
  plain encoder interface cannot express. ``mteb.evaluate(MTEBSearchR3(model), tasks)`` runs it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .model import SearchR3, query_mode
from .retrieval import dense_retrieve, exact_top_k


def _kind(prompt_name: str | None) -> str:
    if prompt_name in (None, "document", "passage", "corpus"):
        return "document"
    if prompt_name == "query":
        return "query"
    raise ValueError(f"unknown prompt_name {prompt_name!r}: use 'query' or 'document'")


class _EvaluationLog:
    """Stands in for ST's model-card data: evaluators report their metrics here (``.evaluations``)."""

    def __init__(self) -> None:
        self.evaluations: list[dict[str, Any]] = []

    def set_evaluation_metrics(self, evaluator: Any, metrics: dict[str, Any], epoch: int = 0, step: int = 0) -> None:
        self.evaluations.append({"evaluator": type(evaluator).__name__, "metrics": dict(metrics), "epoch": epoch, "step": step})


class STAdapter:
    """A :class:`SearchR3` with the calling conventions of ``sentence_transformers.SentenceTransformer``."""

    similarity_fn_name = "cosine"

    def __init__(self, model: SearchR3, *, reasoning: bool | str = False) -> None:
        self.model = model
        self.reasoning = query_mode(reasoning)  # the query mode of encode_query: "off", "on" or "mix"
        self.model_card_data = _EvaluationLog()

    @property
    def max_seq_length(self) -> int:
        return self.model.max_length

    def get_sentence_embedding_dimension(self) -> int:
        return self.model.hidden_size

    def encode(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 16,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = True,
        truncate_dim: int | None = None,
        **kwargs: Any,
    ) -> np.ndarray | torch.Tensor:
        """Embed as a document, or as a query with ``prompt_name="query"``.

        ``prompt`` (free text) is refused: Search-R3's prompts are part of the model (see ``model.prompts``).
        """
        if prompt is not None:
            raise ValueError("free-text prompts are not supported; the model's prompts are set in model.prompts")
        kind = _kind(prompt_name)
        emb = self.model.encode(
            sentences,
            kind=kind,
            reasoning=self.reasoning if kind == "query" else "off",
            batch_size=batch_size,
            show_progress_bar=bool(show_progress_bar),
            normalize_embeddings=normalize_embeddings,
            convert_to_numpy=convert_to_numpy,
            convert_to_tensor=convert_to_tensor,
        )
        if truncate_dim is not None:
            emb = emb[..., :truncate_dim]
        return emb

    def encode_query(self, sentences: str | Sequence[str], **kwargs: Any):
        kwargs.pop("prompt_name", None)
        return self.encode(sentences, prompt_name="query", **kwargs)

    def encode_document(self, sentences: str | Sequence[str], **kwargs: Any):
        kwargs.pop("prompt_name", None)
        return self.encode(sentences, prompt_name="document", **kwargs)

    def similarity(self, a, b) -> torch.Tensor:
        from sentence_transformers.util import cos_sim

        return cos_sim(a, b)

    def similarity_pairwise(self, a, b) -> torch.Tensor:
        from sentence_transformers.util import pairwise_cos_sim

        return pairwise_cos_sim(torch.as_tensor(a), torch.as_tensor(b))


def _mteb_base():
    from mteb.models.abs_encoder import AbsEncoder

    return AbsEncoder


class MTEBSearchR3(_mteb_base()):
    """MTEB 2.x wrapper: ``EncoderProtocol`` (documents/queries by ``prompt_type``) + ``SearchProtocol`` (reasoning queries)."""

    def __init__(
        self,
        model: SearchR3 | str | None = None,
        revision: str | None = None,
        *,
        reasoning: bool | str = False,
        batch_size: int = 16,
        name: str = "searchr3/search-r3",
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        from mteb.models.model_meta import ModelMeta

        if model is None or isinstance(model, str):
            model = SearchR3.from_pretrained(model, **kwargs)
        self.model, self.reasoning, self.batch_size = model, query_mode(reasoning), batch_size
        self._doc_ids: list[str] = []
        self._doc_emb = np.zeros((0, model.hidden_size), np.float32)
        self.mteb_model_meta = ModelMeta(
            loader=None,
            name=name,
            revision=revision or "local",
            release_date=None,
            languages=None,
            n_parameters=sum(p.numel() for p in model.model.parameters()),
            memory_usage_mb=None,
            max_tokens=model.max_length,
            embed_dim=model.hidden_size,
            license=None,
            open_weights=True,
            public_training_code=None,
            public_training_data=None,
            framework=["PyTorch"],
            similarity_fn_name="cosine",
            use_instructions=False,
            training_datasets=None,
        )

    # -------------------------------------------------------------- EncoderProtocol
    def encode(
        self, inputs, *, task_metadata=None, hf_split: str = "", hf_subset: str = "", prompt_type=None, **kwargs: Any
    ) -> np.ndarray:
        """Embed a DataLoader of ``{"text": [...]}`` batches; queries when ``prompt_type`` is query."""
        from mteb.types import PromptType

        texts = [t for batch in inputs for t in batch["text"]]
        if prompt_type == PromptType.query:
            return self.model.encode_query(texts, reasoning=self.reasoning, batch_size=self.batch_size)
        return self.model.encode_document(texts, batch_size=self.batch_size)

    # -------------------------------------------------------------- SearchProtocol
    def index(
        self,
        corpus,
        *,
        task_metadata,
        hf_split: str,
        hf_subset: str,
        encode_kwargs: dict,
        num_proc: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Embed the corpus (title + text, as MTEB joins them) and keep it for :meth:`search`."""
        from mteb._create_dataloaders import create_dataloader
        from mteb.types import PromptType

        loader = create_dataloader(
            corpus, task_metadata=task_metadata, prompt_type=PromptType.document, num_proc=num_proc, **encode_kwargs
        )
        self._doc_ids = [str(i) for i in corpus["id"]]
        self._doc_emb = self.encode(loader, task_metadata=task_metadata, prompt_type=PromptType.document)

    def search(
        self,
        queries,
        *,
        task_metadata,
        hf_split: str,
        hf_subset: str,
        top_k: int,
        encode_kwargs: dict,
        top_ranked: dict[str, list[str]] | None = None,
        num_proc: int | None = None,
        **kwargs: Any,
    ) -> dict[str, dict[str, float]]:
        """Rank the indexed corpus (or each query's ``top_ranked`` candidates) by cosine similarity."""
        from mteb._create_dataloaders import create_dataloader
        from mteb.types import PromptType

        if not self._doc_ids:
            raise RuntimeError("call index(corpus, ...) before search(...)")
        loader = create_dataloader(
            queries, task_metadata=task_metadata, prompt_type=PromptType.query, num_proc=num_proc, **encode_kwargs
        )
        q_emb = self.encode(loader, task_metadata=task_metadata, prompt_type=PromptType.query)
        qids = [str(q) for q in queries["id"]]
        if top_ranked is None:
            return dense_retrieve(q_emb, self._doc_emb, self._doc_ids, qids, top_k)
        pos = {d: i for i, d in enumerate(self._doc_ids)}
        out: dict[str, dict[str, float]] = {}
        for qid, q in zip(qids, q_emb):
            cand = np.array([pos[d] for d in top_ranked.get(qid, []) if d in pos], dtype=np.int64)
            if cand.size == 0:
                out[qid] = {}
                continue
            scores, best = exact_top_k(q[None], self._doc_emb[cand], top_k)
            out[qid] = {self._doc_ids[cand[i]]: float(sc) for i, sc in zip(best[0], scores[0])}
        return out
