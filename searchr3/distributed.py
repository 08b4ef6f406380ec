"""Data-parallel training under ``accelerate launch``: the process-group bits both trainers share.

``Dist`` wraps an :class:`accelerate.Accelerator`. Started as a plain process (no ``accelerate
launch``) it is one rank of one, every collective below is the identity, and the trainers compute
exactly what they computed before this module existed. Under ``accelerate launch --num_processes N``
(or ``torchrun``) there are N ranks and:

* each optimizer step's examples, drawn as a pure function of the step (the same on every rank),
  are cut into N contiguous shards (:meth:`Dist.shard`): no example is seen twice in a step, and
  ``--batch-size`` / ``--queries-per-step`` stay the *global* sizes, so the same command trains the
  same model with any N (up to float summation order);
* every rank's loss is its *share* of the global loss (the shares sum to what one process computes
  on the whole batch), so the gradients are **summed** over ranks (:meth:`Dist.reduce_gradients`),
  once per optimizer step, after the last micro-batch;
* only rank 0 (:attr:`Dist.is_main`) writes the run folder: config, log, checkpoints, plots, the
  final model.

Why gradients are reduced here and not by a DDP wrapper: DDP synchronises gradients only for a
forward pass through its own ``__call__``, once per backward. The SFT loss runs the decoder body
several times per backward (queries, documents, a no-grad reference pass with the adapter switched
off) and projects only the predicted positions onto the vocabulary, and GRPO does the same with the
policy and reference log-probs; routing all of that through one DDP forward would mean computing
full-vocabulary logits. One explicit all-reduce per optimizer step is what DDP's ``no_sync`` plus a
synchronised last micro-batch does, without the wrapper. The Accelerator still starts the process
group, picks the device, prepares the optimizer and scheduler, and counts gradient accumulation
(:meth:`accelerate.Accelerator.accumulate`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as tdist

from .runs import RunError

T = TypeVar("T")


class GatherRows(torch.autograd.Function):
    """All-gather of equally shaped row blocks that keeps the gradient (``[rows, ...]`` -> ``[world * rows, ...]``).

    Forward: every rank gets every rank's rows (``torch.distributed.all_gather``, which has no
    autograd). Backward: each rank holds d(its loss share)/d(all rows); the global loss is the sum of
    the shares, so the gradient of a rank's own rows is the *sum* over ranks of those blocks: an
    all-reduce, then each rank keeps its block. (``torch.distributed.nn.functional.all_gather`` does
    the same, but emulates reduce-scatter on gloo with per-rank scatters; this is one call.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = tdist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        tdist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = tdist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


class Dist:
    """The ranks of one training run (one rank without ``accelerate launch``)."""

    def __init__(self, grad_accum: int = 1) -> None:
        from accelerate import Accelerator

        # step_scheduler_with_optimizer=False: the scheduler is written for optimizer steps of the
        # global batch, so it steps once per step (by default accelerate steps it N times, assuming N
        # times fewer steps of a per-process batch).
        # cpu=True without CUDA: the launcher's processes then form a gloo group on the CPU (accelerate
        # would otherwise run each of them as a lone process), e.g. `accelerate launch --multi_gpu
        # --num_processes 2` or `torchrun --nproc_per_node 2` on a CPU machine.
        self.acc = Accelerator(
            gradient_accumulation_steps=grad_accum, step_scheduler_with_optimizer=False, cpu=not torch.cuda.is_available()
        )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.acc.num_processes:
            raise RunError(
                f"started as {launched} processes, but accelerate sees {self.acc.num_processes}: see docs/scale-out.md"
            )
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        self.is_main = self.acc.is_main_process
        self.device = self.acc.device

    # ------------------------------------------------------------------ data
    def per_rank(self, n: int, what: str) -> int:
        """``n / world``, or :class:`~searchr3.runs.RunError` (bad input, before anything is written)."""
        if n % self.world:
            raise RunError(f"{what}={n} does not split over {self.world} processes: use a multiple of {self.world}")
        return n // self.world

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of ``items`` (the same list on every rank)."""
        n = self.per_rank(len(items), "batch")
        return list(items[self.rank * n : (self.rank + 1) * n])

    # ------------------------------------------------------------------ collectives (identity on one rank)
    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of a tensor without gradient (loss shares for the log, token counts)."""
        if self.world == 1:
            return x
        x = x.detach().clone()
        tdist.all_reduce(x)
        return x

    def gather_rows(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``x`` (row counts may differ), with gradient (:class:`GatherRows`), in rank order."""
        if self.world == 1:
            return [x]
        counts = self.gather_objects(x.shape[0])
        pad = max(counts) - x.shape[0]
        padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
        rows = GatherRows.apply(padded)
        width = max(counts)
        return [rows[r * width : r * width + c] for r, c in enumerate(counts)]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients over ranks (one flat all-reduce; see the module doc for why not DDP)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        tdist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def broadcast_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Give every rank rank 0's values (the replicas start equal whatever RNG each rank used before)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in params:
                tdist.broadcast(p.data, 0)

    def barrier(self) -> None:
        if self.world > 1:
            self.acc.wait_for_everyone()

    # ------------------------------------------------------------------ run folder and environment
    def open_folder(self, folder, resume: bool) -> bool:
        """Check the run folder on every rank *before* rank 0 writes its ``config.json`` (else the other
        ranks would find a run there and refuse it); returns whether there is a checkpoint to resume."""
        has_checkpoint = folder.check(resume)
        self.barrier()
        if self.is_main:
            folder.open(resume)
        self.barrier()
        return has_checkpoint

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. writes a cache), then the others (which read it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def encoder(self, encode: Callable[[list[int]], np.ndarray]) -> Callable[[list[int]], np.ndarray]:
        """An encoder over corpus positions whose work is split over the ranks and all-gathered.

        The RL environment is replicated: every rank applies the same steps to its own copy, so every
        rank asks for the same positions at the same time; each encodes a contiguous slice, and all
        receive the same rows, bit for bit, so the replicas never drift apart.
        """
        if self.world == 1:
            return encode

        def split_encode(positions: list[int]) -> np.ndarray:
            n = -(-len(positions) // self.world)
            mine = positions[self.rank * n : (self.rank + 1) * n]
            rows = np.asarray(encode(mine), dtype=np.float32) if mine else None
            parts = [p for p in self.gather_objects(rows) if p is not None]
            return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

        return split_encode
