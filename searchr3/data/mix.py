"""The stage-1 training mix: examples from several sources, drawn by per-source weight.

A batch slot is filled by first drawing a source (probability = its weight, normalised), then the
next example of that source's own shuffled order (a fresh seeded permutation per pass over the
source). The sequence of draws is a pure function of the seed, the source sizes and the weights,
so a resumed run sees exactly the batches an uninterrupted run saw.

Default weights follow the usual temperature sampling of multi-source contrastive training
(``size ** 0.5``): large sources still dominate, small ones are not drowned. Rules for what may
serve as whose negative (e.g. SQuAD paragraphs that answer several questions) are applied by the
trainer through :func:`false_negative_mask`, from the examples' document ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .sources import Example

__all__ = ["MixSchedule", "false_negative_mask", "source_weights"]


def source_weights(sizes: Sequence[int], weights: Sequence[float] | None = None, alpha: float = 0.5) -> np.ndarray:
    """Normalised sampling probabilities: ``weights`` as given, or ``size ** alpha`` when ``None``."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.size == 0 or (sizes <= 0).any():
        raise ValueError(f"every source needs at least one example, got sizes {sizes.astype(int).tolist()}")
    w = sizes**alpha if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != sizes.shape:
        raise ValueError(f"{len(w)} weights for {len(sizes)} sources")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w / w.sum()


class MixSchedule:
    """``batch(step, size)``: the (source, example index) pairs of one optimizer step."""

    def __init__(self, sizes: Sequence[int], probabilities: Sequence[float], seed: int = 0) -> None:
        self.sizes = [int(s) for s in sizes]
        self.p = np.asarray(probabilities, dtype=np.float64)
        if len(self.p) != len(self.sizes):
            raise ValueError("one probability per source")
        self.seed = seed
        self._draws: list[tuple[int, int]] = []
        self._taken = [0] * len(self.sizes)  # examples drawn so far from each source
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _extend(self, n: int) -> None:
        block = 1024
        while len(self._draws) < n:
            rng = np.random.default_rng([self.seed, 7919, len(self._draws) // block])
            for s in rng.choice(len(self.sizes), size=block, p=self.p).tolist():
                epoch, i = divmod(self._taken[s], self.sizes[s])
                key = (s, epoch)
                if key not in self._perms:
                    self._perms = {k: v for k, v in self._perms.items() if k[0] != s}  # keep one pass per source
                    self._perms[key] = np.random.default_rng([self.seed, s, epoch]).permutation(self.sizes[s])
                self._draws.append((s, int(self._perms[key][i])))
                self._taken[s] += 1

    def batch(self, step: int, size: int) -> list[tuple[int, int]]:
        if step < 0 or size < 1:
            raise ValueError("step must be >= 0 and size >= 1")
        self._extend((step + 1) * size)
        return self._draws[step * size : (step + 1) * size]


def false_negative_mask(examples: Sequence[Example], owner: Sequence[int], docs: Sequence[tuple[str, str]]) -> np.ndarray:
    """``[len(owner), len(docs)]`` bool: True where document ``j`` must not count as a negative for
    query row ``r`` (whose example is ``examples[owner[r]]``) although it is not that row's positive column.

    ``docs`` are (id, text) of the batch's documents, the positives of ``examples`` first in order.
    A document is a false negative when its id is among the example's known positives (a paragraph
    that answers several questions, judged for each) or its text equals the example's positive.
    """
    out = np.zeros((len(owner), len(docs)), dtype=bool)
    for r, o in enumerate(owner):
        ex = examples[o]
        for j, (did, text) in enumerate(docs):
            if j != o and ((did and did in ex.positive_ids) or text == ex.positive):
                out[r, j] = True
    return out
