"""Run folders: the bookkeeping that both trainers (and the pipeline's training stages) share.

A run folder holds::

    config.json   written *first*: {"kind", "config", ...meta}. A second run into the same folder is
                  refused unless it resumes, and a resume with other settings, another base model or
                  other data (``meta``) is refused too; a folder that holds anything else is foreign
                  and never written into.
    log.jsonl     one JSON row per step; on resume, rows past the checkpoint's step are dropped
    checkpoint/   written atomically (:func:`searchr3.io.atomic_directory`): ``state.pt`` with the step
                  (the data position: both trainers draw their batches as a pure function of it), the
                  RNG states and whatever the trainer adds (weights, optimizer, ...), plus the trainer's
                  own files
    final/        the trained model (loadable by ``SearchR3.from_pretrained``)

A non-finite loss or gradient norm stops a run *before* the optimizer step
(:meth:`RunFolder.check_finite`), so the last checkpoint on disk is the last good state.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .io import atomic_directory, atomic_write_json, atomic_write_text

CONFIG, LOG, CHECKPOINT, FINAL, STATE = "config.json", "log.jsonl", "checkpoint", "final", "state.pt"


class RunError(RuntimeError):
    """A training run that cannot start or go on: a foreign or mismatched run folder, a non-finite loss."""


def read_rows(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-blank line.

    A torn *last* line (a kill in the middle of an append) is dropped; a bad line anywhere else means
    the file is corrupt and raises :class:`RunError`. A missing file has no rows.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                continue
            raise RunError(f"{path}:{n}: corrupted line (not valid JSON); only a torn last line is tolerated") from None
        if not isinstance(row, dict):
            raise RunError(f"{path}:{n}: expected a JSON object")
        rows.append(row)
    return rows


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` is a run folder (it has a ``config.json``): what a resume continues."""
    return (Path(path) / CONFIG).is_file()


def rng_state() -> dict[str, Any]:
    """The torch, numpy and Python RNG states (the global generators both trainers use)."""
    import numpy as np
    import torch

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def differing_settings(configs: Iterable[Mapping[str, Any]], ignore: Iterable[str] = ("out",)) -> list[str]:
    """The settings whose values are not the same in all of ``configs`` (run folders' ``config``), sorted; a
    setting one config lacks counts as ``None`` there. For tables of an ablation's runs (``benchmarks/``)."""
    configs, ignore = list(configs), set(ignore)
    keys = set().union(*configs) - ignore
    return sorted(k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1)


def dataclass_defaults(cls) -> dict[str, Any]:
    """``{field: default}`` of a config dataclass (default factories called): ``RunFolder``'s ``defaults``."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        if dataclasses.is_dataclass(out.get(f.name)):
            out[f.name] = dataclasses.asdict(out[f.name])
    return out


def _with_defaults(old: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``old`` with the settings it lacks taken from ``defaults`` (nested settings too)."""
    out = dict(defaults)
    for k, v in old.items():
        out[k] = _with_defaults(v, defaults[k]) if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v
    return out


def _float(x: Any) -> float:
    return float(x.detach()) if hasattr(x, "detach") else float(x)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


class RunFolder:
    """One training run's folder. ``kind`` names the trainer ("SFT", "RL"); ``config`` its settings
    (a JSON-able dict); ``meta`` what else a resume must match (base model, data digest); settings named
    in ``resumable`` may differ on resume (they do not change the steps already taken). ``defaults``: the
    value a setting absent from an older run's ``config.json`` had (a setting added since), so that
    such a run still resumes when the new setting keeps its default."""

    def __init__(
        self,
        path: str | Path,
        kind: str,
        config: Mapping[str, Any],
        meta: Mapping[str, Any] | None = None,
        resumable: Iterable[str] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.defaults = _jsonable(dict(defaults or {}))
        self.kind = kind
        self.config = _jsonable(dict(config))
        self.meta = _jsonable(dict(meta or {}))
        self.resumable = set(resumable)

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def final(self) -> Path:
        return self.path / FINAL

    def has_checkpoint(self) -> bool:
        return (self.checkpoint / STATE).is_file()

    # ------------------------------------------------------------------ opening
    def check(self, resume: bool) -> bool:
        """Validate the folder for a fresh run or a resume (rules: module doc); writes nothing.

        Returns whether there is a checkpoint to resume from.
        """
        cfg_path = self.path / CONFIG
        if cfg_path.is_file():
            try:
                old = json.loads(cfg_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise RunError(f"{cfg_path} is corrupted ({e.msg}): not a run folder to resume") from None
            if not isinstance(old, dict) or old.get("kind", self.kind) != self.kind:
                found = old.get("kind") if isinstance(old, dict) else None
                raise RunError(f"{self.path} is not a searchr3 {self.kind} run folder (it holds a {found} run)")
            if not resume:
                raise RunError(f"{self.path} already holds a run: pass --resume to continue it, or choose another --out")
            old_cfg = _with_defaults(old.get("config", {}), self.defaults)
            diffs = {k: (old_cfg.get(k), v) for k, v in self.config.items() if k not in self.resumable and old_cfg.get(k) != v}
            diffs.update({k: (old.get(k), v) for k, v in self.meta.items() if old.get(k) != v})
            if diffs:
                raise RunError(
                    f"{self.path} is a run of different settings or another model or data; differences (old, new): {diffs}"
                )
            return self.has_checkpoint()
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise RunError(f"{self.path} exists and is not a searchr3 {self.kind} run folder: refusing to write into it")
        if resume:
            raise RunError(f"--resume, but {self.path} holds no run to resume (no {CONFIG})")
        return False

    def open(self, resume: bool) -> bool:
        """:meth:`check`, then create the folder and write ``config.json`` (before any training)."""
        has_checkpoint = self.check(resume)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / CONFIG, {"kind": self.kind, "config": self.config, **self.meta})
        return has_checkpoint

    # ------------------------------------------------------------------ log
    def reset_log(self, step: int, path: Path | None = None) -> None:
        """Keep only the rows of steps ``<= step`` (none for a fresh start) of ``log.jsonl`` (or another
        per-step JSONL file of the run): a resumed run rewrites the rest."""
        path = path or self.log_path
        keep = [r for r in read_rows(path) if r.get("step", 0) <= step] if step else []
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))

    def log(self, row: Mapping[str, Any]) -> None:
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(dict(row)) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, state: Mapping[str, Any], write_files: Callable[[Path], None] | None = None) -> Path:
        """Atomically replace ``checkpoint/`` with ``state.pt`` (step, RNG states, ``state``) and the
        files ``write_files(folder)`` adds."""
        import torch

        with atomic_directory(self.checkpoint) as tmp:
            if write_files is not None:
                write_files(tmp)
            torch.save({**state, "step": step, "rng": rng_state()}, tmp / STATE)
            atomic_write_json(tmp / "state.json", {"step": step})
        return self.checkpoint

    def load_checkpoint(self) -> dict[str, Any]:
        """The saved state, with the RNG states already restored."""
        import torch

        if not self.has_checkpoint():
            raise RunError(f"no checkpoint to resume in {self.checkpoint}")
        state = torch.load(self.checkpoint / STATE, weights_only=False)
        set_rng_state(state["rng"])
        return state

    # ------------------------------------------------------------------ guard
    def check_finite(self, step: int, name: str, value: Any, **parts: Any) -> None:
        """Raise :class:`RunError` if ``value`` (the loss, a gradient norm) is not finite; called before
        the optimizer step, so nothing bad is saved."""
        v = _float(value)
        if math.isfinite(v):
            return
        detail = f" ({ {k: _float(p) for k, p in parts.items()} })" if parts else ""
        raise RunError(
            f"step {step}: {name} is {v}{detail}; stopped before the optimizer step and without saving; "
            f"the last good checkpoint is in {self.checkpoint}"
        )
