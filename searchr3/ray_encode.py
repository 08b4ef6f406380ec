"""Encode a corpus with Ray Data: an actor pool of model replicas, one per CPU/GPU slot.

``ray.data.from_items(rows).map_batches(EncoderActor, concurrency=N, batch_size=B)`` ships batches
of texts to N long-lived actors, each holding one copy of the model; vectors come back with their
row numbers, so the result is in corpus order and equals the local path's
(:func:`searchr3.index.encode_documents`) up to float rounding. On a cluster pass ``address``
(or set ``RAY_ADDRESS``); see docs/scale-out.md.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class EncoderActor:
    """One model replica; called with a batch ``{"row": [...], "text": [...]}``."""

    def __init__(
        self, model: str | None, prompts: dict[str, Any] | None, max_length: int, bf16: bool | None, batch_size: int
    ) -> None:
        from searchr3 import SearchR3

        self.model = SearchR3.from_pretrained(model, prompts=prompts, max_length=max_length, bf16=bf16)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb = self.model.encode_document([str(t) for t in batch["text"]], batch_size=self.batch_size)
        return {"row": batch["row"], "embedding": emb}


def encode_with_ray(
    texts: Sequence[str],
    model: str | None,
    *,
    prompts: dict[str, Any] | None = None,
    max_length: int = 512,
    bf16: bool | None = None,
    concurrency: int = 2,
    batch_size: int = 16,
    num_cpus: float = 1,
    num_gpus: float = 0,
    address: str | None = None,
) -> np.ndarray:
    """Document embeddings ``[len(texts), dim]`` (float32, normalised) computed by ``concurrency`` Ray actors.

    Starts a local Ray (``num_cpus * concurrency`` CPUs) unless one is running or ``address`` is given;
    shuts down only what it started. ``model`` must be a path or name every Ray worker can load.
    """
    import ray

    if concurrency < 1 or batch_size < 1:
        raise ValueError("concurrency and batch_size must be >= 1")
    if not texts:
        raise ValueError("no texts to encode")
    started = not ray.is_initialized()
    if started:
        local = {} if address else {"num_cpus": max(int(np.ceil(num_cpus * concurrency)), 1)}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
    try:
        ds = ray.data.from_items([{"row": i, "text": t} for i, t in enumerate(texts)])
        ds = ds.map_batches(
            EncoderActor,
            fn_constructor_kwargs={
                "model": model,
                "prompts": prompts,
                "max_length": max_length,
                "bf16": bf16,
                "batch_size": batch_size,
            },
            concurrency=concurrency,
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )
        rows, embs = [], []
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            rows.append(np.asarray(batch["row"]))
            embs.append(np.asarray(batch["embedding"], dtype=np.float32))
    finally:
        if started:
            ray.shutdown()
    rows_all, emb_all = np.concatenate(rows), np.concatenate(embs)
    if sorted(rows_all.tolist()) != list(range(len(texts))):
        raise RuntimeError("Ray returned an incomplete set of rows")
    out = np.empty_like(emb_all)
    out[rows_all] = emb_all
    return out
