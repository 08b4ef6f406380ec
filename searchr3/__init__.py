"""searchr3: Search-R3, a chat LLM as a search embedder whose embeddings come out of its own reasoning.

The public names are imported lazily, so that ``searchr3 --help`` and light submodules do not pay
for importing torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["SearchR3", "Rollouts", "PromptConfig", "EMBED_TOKEN"]
__version__ = "0.1.0"

_LAZY = {"SearchR3": "model", "Rollouts": "model", "PromptConfig": "prompts", "EMBED_TOKEN": "prompts"}

if TYPE_CHECKING:
    from .model import Rollouts, SearchR3
    from .prompts import EMBED_TOKEN, PromptConfig


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'searchr3' has no attribute {name!r}")
