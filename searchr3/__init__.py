"""searchr3: Search-R3, a chat LLM as a search embedder whose embeddings come out of its own reasoning."""
from .model import Rollouts, SearchR3
from .prompts import EMBED_TOKEN, PromptConfig

__all__ = ["SearchR3", "Rollouts", "PromptConfig", "EMBED_TOKEN"]
__version__ = "0.1.0"
