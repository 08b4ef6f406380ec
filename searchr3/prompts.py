"""Every prompt the model sees, in one place.

A :class:`PromptConfig` is saved with the model (``searchr3.json``) so that a trained model is
always queried the way it was trained. Prompts are rendered through the backbone's own chat
template by :class:`PromptTemplate`, which splits the rendered chat around the user's text so
that long texts can be truncated without ever cutting the template's tail (and with it the
``<|embed_token|>``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

EMBED_TOKEN = "<|embed_token|>"

Kind = Literal["query", "document"]

QUERY_SYSTEM = (
    "You turn a search query into an embedding that finds the passages answering it. End every answer with <|embed_token|>."
)
DOCUMENT_SYSTEM = (
    "You turn a passage into an embedding that search queries about its content can find. End every answer with <|embed_token|>."
)
REASONING_SYSTEM = (
    "You help a search engine understand a query. Analyse the user's text briefly: name its core "
    "concepts, the key terms with short definitions, synonyms, and related topics a relevant "
    "passage would mention. Use at most three short sentences, then end your answer with "
    "<|embed_token|>."
)
DIRECT_ANSWER = "The embedding is <|embed_token|>"

# A character no real text contains, used to find where the user's text sits in the template.
_SLOT = "\ue000"


@dataclass
class PromptConfig:
    """The prompts of one model. ``direct_answer`` must end with ``embed_token``."""

    embed_token: str = EMBED_TOKEN
    query_system: str = QUERY_SYSTEM
    document_system: str = DOCUMENT_SYSTEM
    reasoning_system: str = REASONING_SYSTEM
    direct_answer: str = DIRECT_ANSWER
    # Text the assistant turn starts with when reasoning; the model writes the rest. Stage 1 with keyword
    # traces sets "Key terms:" (its traces continue it), so the format is fixed by the template as the
    # direct answer is, and the model only learns the terms and when to write the token.
    reasoning_prefix: str = ""
    max_reasoning_tokens: int = 96
    # Greedy reasoning of a small model loops ("melt, melt, melt, ..."); >1 divides the logits of tokens
    # it already wrote (CTRL's penalty, generated tokens only), so a term list ends instead of repeating.
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not self.embed_token:
            raise ValueError("embed_token must be a non-empty string")
        if not self.direct_answer.rstrip().endswith(self.embed_token):
            raise ValueError(f"direct_answer must end with the embedding token {self.embed_token!r}, got {self.direct_answer!r}")
        if self.max_reasoning_tokens < 0:
            raise ValueError("max_reasoning_tokens must be >= 0")
        if not self.repetition_penalty >= 1.0:
            raise ValueError(f"repetition_penalty must be >= 1, got {self.repetition_penalty}")

    def system(self, kind: Kind, reasoning: bool) -> str:
        if reasoning:
            if kind != "query":
                raise ValueError("reasoning is only defined for queries; documents are encoded directly")
            return self.reasoning_system
        if kind == "query":
            return self.query_system
        if kind == "document":
            return self.document_system
        raise ValueError(f"kind must be 'query' or 'document', got {kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PromptConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown prompt settings: {sorted(unknown)}")
        return cls(**data)


class PromptTemplate:
    """Token ids of one prompt around the user's text: ``head + text + tail``.

    ``tail`` for a direct prompt ends with the embedding token; for a reasoning prompt it ends
    with the assistant header, where generation starts.
    """

    def __init__(self, tokenizer: Any, system: str, answer_prefix: str) -> None:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": _SLOT}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if rendered.count(_SLOT) != 1:
            raise ValueError("the tokenizer's chat template does not place the user's text exactly once")
        head, tail = rendered.split(_SLOT)
        self.head: list[int] = tokenizer.encode(head, add_special_tokens=False)
        self.tail: list[int] = tokenizer.encode(tail + answer_prefix, add_special_tokens=False)

    @property
    def overhead(self) -> int:
        return len(self.head) + len(self.tail)

    def build(self, text_ids: list[int], max_length: int) -> list[int]:
        """Prompt ids with the text cut (from its end) so the whole fits ``max_length``."""
        room = max_length - self.overhead
        if room < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for text: the prompt template alone takes {self.overhead} tokens"
            )
        return self.head + text_ids[:room] + self.tail
