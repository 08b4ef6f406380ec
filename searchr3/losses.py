"""Loss terms of both training stages. Each takes plain tensors, so each is testable on its own.

* :func:`info_nce` — contrastive cross-entropy over cosine similarities (in-batch + hard negatives).
* :func:`triplet_margin` — hinge on cosine similarity: positive must beat the hardest negative by ``margin``.
* :func:`lm_loss` — next-token cross-entropy on the positions selected by ``labels`` (-100 = ignored).
* :func:`kl_to_reference` — KL(policy || reference) per token on the same positions, for keeping
  the model's language ability near the frozen base.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    query: torch.Tensor,
    docs: torch.Tensor,
    positive: torch.Tensor,
    temperature: float = 0.05,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of picking ``docs[positive[i]]`` for ``query[i]`` among all ``docs``.

    ``docs`` holds every candidate of the batch (the positives of all queries, i.e. in-batch
    negatives, plus any hard negatives); similarities are cosine, divided by ``temperature``.
    ``exclude`` (bool ``[B, N]``) removes candidates that are not negatives of a query (false
    negatives such as another copy of its positive); a query's own positive is never excluded.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if query.shape[0] != positive.shape[0]:
        raise ValueError(f"{query.shape[0]} queries but {positive.shape[0]} positive indices")
    logits = (F.normalize(query, dim=-1) @ F.normalize(docs, dim=-1).T / temperature).float()
    if exclude is not None:
        keep_pos = F.one_hot(positive, docs.shape[0]).bool()
        logits = logits.masked_fill(exclude.to(logits.device) & ~keep_pos, float("-inf"))
    return F.cross_entropy(logits, positive)


def triplet_margin(
    query: torch.Tensor, docs: torch.Tensor, positive: torch.Tensor, margin: float = 0.1, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean ``relu(margin - cos(q, pos) + max_neg cos(q, neg))`` with the hardest negative per query.

    ``exclude`` (bool ``[B, N]``) marks further documents that are not negatives for a query
    (e.g. its other known positives).
    """
    sim = F.normalize(query, dim=-1) @ F.normalize(docs, dim=-1).T
    pos = sim.gather(1, positive[:, None]).squeeze(1)
    mask = F.one_hot(positive, docs.shape[0]).bool()
    if exclude is not None:
        mask = mask | exclude
    hardest = sim.masked_fill(mask, float("-inf")).max(dim=1).values
    if torch.isinf(hardest).any():
        raise ValueError("triplet loss needs at least one negative per query")
    return F.relu(margin - pos + hardest).mean()


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: ``logits[:, t]`` predicts ``labels[:, t + 1]``; ``-100`` is ignored."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    if not (shift_labels != -100).any():
        return logits.sum() * 0.0
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the labelled positions of KL(p_policy || p_reference) over the vocabulary."""
    mask = labels[:, 1:] != -100
    if not mask.any():
        return logits.sum() * 0.0
    logp = F.log_softmax(logits[:, :-1][mask].float(), dim=-1)
    logq = F.log_softmax(ref_logits[:, :-1][mask].float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def matryoshka_info_nce(
    query: torch.Tensor,
    docs: torch.Tensor,
    positive: torch.Tensor,
    temperature: float,
    dims: tuple[int, ...] | list[int] = (),
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`info_nce` averaged over the full embedding and its leading ``dims`` dimensions (each prefix
    re-normalised), so that truncated vectors (the service's ``dimensions``) stay useful
    (Matryoshka representation learning). With no ``dims`` it is :func:`info_nce`."""
    full = query.shape[-1]
    sizes = [d for d in dict.fromkeys(dims) if d != full]
    if any(d < 1 or d > full for d in sizes):
        raise ValueError(f"Matryoshka dimensions must be in [1, {full}], got {list(dims)}")
    terms = [info_nce(query[..., :d], docs[..., :d], positive, temperature, exclude) for d in [full, *sizes]]
    return torch.stack(terms).mean()
