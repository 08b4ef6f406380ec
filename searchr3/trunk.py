"""The frozen trunk: documents re-encoded through the adapted layers only.

When stage 2's adapter trains only the top N decoder layers (``GRPOConfig.lora_layers``), the hidden
states that enter the first adapted layer never change during the run: the layers below it are the
initial model's. :class:`DocumentTrunk` keeps those states for every document of the environment's
corpus (taken in the same pass as the initial embeddings), and its encoder re-encodes a document by
running only the N adapted layers and the final norm (:meth:`searchr3.SearchR3.encode_from_layer`):
N/L of a full forward for an L-layer model, with the same result as the full forward.

The states are cached beside the corpus embeddings (one file per model, layer, document length and
corpus, written atomically); a damaged file is rebuilt with a warning. They are held in memory: about
documents × prompt tokens × hidden size × 2 bytes in bf16, 4 in fp32 (2.3 GB / 4.6 GB for 6,849 paragraphs
at 256 tokens with the built-in model); for a corpus too large for that, ``lora_layers=0`` adapts every layer and
re-encodes with the full forward instead.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .env import Encode
from .io import atomic_write_bytes

log = logging.getLogger(__name__)


class TrunkCacheWarning(UserWarning):
    """A cached trunk file could not be read and is rebuilt."""


@dataclass
class DocumentTrunk:
    """Hidden states entering decoder layer ``layer``: the documents' shared prompt head (``prefix``,
    ``[p, H]``) and what follows it in each document's prompt (``states[i]``, ``[n_i, H]``)."""

    layer: int
    prefix: torch.Tensor
    states: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self.prefix, *self.states])

    @classmethod
    def build(
        cls,
        model,
        texts: Sequence[str],
        layer: int,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        show_progress_bar: bool = False,
    ) -> tuple["DocumentTrunk", np.ndarray]:
        """The trunk of ``texts`` as documents and, from the same forward passes, their normalised direct
        embeddings (equal to ``model.encode_document``'s)."""
        with model.evaluating(max_length):
            ids = model.prompt_ids(list(texts), "document")
            emb, prefix, states = model._encode_ids(
                ids, batch_size, show_progress_bar, "encode documents (and keep their trunk)", capture=layer
            )
        return cls(layer, prefix, states), torch.nn.functional.normalize(emb, dim=-1).numpy()

    def encoder(self, model, batch_size: int = 16) -> Encode:
        """An encoder over positions (the environment's :data:`~searchr3.env.Encode`): normalised
        embeddings from the current weights of the layers from ``layer`` up, in eval mode."""

        def encode(positions: list[int]) -> np.ndarray:
            with model.evaluating():
                emb = model.encode_from_layer(self.layer, self.prefix, [self.states[i] for i in positions], batch_size)
            return torch.nn.functional.normalize(emb, dim=-1).numpy()

        return encode

    # ------------------------------------------------------------------ the cache file
    def save(self, path: str | Path, key: str) -> None:
        """Write the trunk to ``path`` atomically (safetensors; ``key`` and the layer in its metadata)."""
        from safetensors.torch import save

        lengths = torch.tensor([len(s) for s in self.states], dtype=torch.long)
        flat = torch.cat(self.states) if self.states else torch.empty((0, self.prefix.shape[-1]), dtype=self.prefix.dtype)
        tensors = {"prefix": self.prefix.contiguous(), "flat": flat.contiguous(), "lengths": lengths}
        atomic_write_bytes(path, save(tensors, metadata={"key": key, "layer": str(self.layer)}))

    @classmethod
    def load(cls, path: str | Path, key: str, n: int) -> "DocumentTrunk | None":
        """The trunk in ``path`` if it is complete and for ``key`` (``n`` documents); None (with a
        warning if the file exists but is damaged or for something else) otherwise."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != key:
                    raise ValueError("it is for another model, layer or corpus")
                z = {name: f.get_tensor(name) for name in ("prefix", "flat", "lengths")}
            lengths = z["lengths"].tolist()
            if len(lengths) != n or sum(lengths) != len(z["flat"]):
                raise ValueError("it is for another model, layer or corpus")
            return cls(int(meta["layer"]), z["prefix"], list(torch.split(z["flat"], lengths)))
        except Exception as e:  # noqa: BLE001 - any damage means: rebuild
            warnings.warn(f"cached trunk {path} is unusable ({e}); rebuilding it", TrunkCacheWarning, stacklevel=2)
            return None


def cached_trunk(
    model,
    texts: Sequence[str],
    layer: int,
    *,
    key: str,
    cache_dir: str | Path,
    batch_size: int = 16,
    max_length: int | None = None,
    show_progress_bar: bool = False,
    write: bool = True,
) -> tuple[DocumentTrunk, np.ndarray | None]:
    """The trunk of ``texts`` through ``<cache_dir>/trunk-<key>.safetensors``; the embeddings come back too
    when it was built (None when it was read: the corpus-embedding cache has them)."""
    path = Path(cache_dir) / f"trunk-{key}.safetensors"
    hit = DocumentTrunk.load(path, key, len(texts))
    if hit is not None:
        return hit, None
    trunk, emb = DocumentTrunk.build(
        model, texts, layer, batch_size=batch_size, max_length=max_length, show_progress_bar=show_progress_bar
    )
    if write:
        trunk.save(path, key)
        log.info("cached the trunk of %d documents at layer %d (%.2f GB) in %s", len(texts), layer, trunk.nbytes / 1e9, path)
    return trunk, emb
