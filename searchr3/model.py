"""The Search-R3 embedder: embeddings read off a chat LM at the ``<|embed_token|>`` position.

Two ways to get an embedding, both ending at the same token:

* **direct** (documents, and queries with reasoning off): the assistant turn is fixed text that
  ends with the token, so one batched forward pass gives every embedding.
* **reasoning** (queries): the model writes a short analysis and then the token. Generation runs
  with the KV cache; the token is fed back through the cache to get its hidden state, so the
  text is never re-encoded. If the model stops (end of turn) or hits the length limit without the
  token, the token is appended in its place and the embedding is still produced.

The embedding is the final-layer hidden state after the final norm, L2-normalised by default.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from .backbone import FORMAT_VERSION, SEARCHR3_CONFIG, ModelLoadError, load_backbone, model_source, native_bf16
from .io import atomic_directory, atomic_write_json
from .prompts import EMBED_TOKEN, Kind, PromptConfig, PromptTemplate

log = logging.getLogger(__name__)


@dataclass
class Rollouts:
    """What reasoning encoding produced for a batch of queries (also the RL stage's rollouts)."""

    embeddings: torch.Tensor  # [n, hidden], float32, normalised if asked
    texts: list[str]  # the generated reasoning, decoded, without the embedding token
    prompt_ids: list[list[int]]  # the prompt each rollout continued
    completion_ids: list[list[int]]  # generated ids, ending with the embedding token
    emitted: list[bool] = field(default_factory=list)  # did the model emit the token itself?


QUERY_MODES = ("off", "on", "mix")


def query_mode(reasoning: bool | str) -> str:
    """Normalise a ``reasoning`` argument: ``False``/"off", ``True``/"on" or "mix" (see :meth:`SearchR3.encode_query`)."""
    if reasoning is True or reasoning is False:
        return "on" if reasoning else "off"
    if isinstance(reasoning, str) and reasoning in QUERY_MODES:
        return reasoning
    raise ValueError(f"reasoning must be True, False or one of {QUERY_MODES}, got {reasoning!r}")


MIN_SHARED_PREFIX = 8  # shorter common prompt prefixes are not worth a separate pass


def shared_prefix(ids: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every sequence of ``ids`` starts with, leaving each at least one token."""
    if not ids:
        return 0
    return min(len(os.path.commonprefix([list(x) for x in ids])), min(len(x) for x in ids) - 1)


MIX_WEIGHT = 0.6  # the "mix" query mode's default weight of the direct embedding


def mix_embeddings(direct: torch.Tensor, reasoned: torch.Tensor, weight: float) -> torch.Tensor:
    """The ``"mix"`` query mode's embedding: ``weight * direct + (1 - weight) * reasoned``, each row
    L2-normalised first (used at query time, by stage 1's trained mix and by its trace bank)."""
    unit = torch.nn.functional.normalize
    return weight * unit(direct, dim=-1) + (1.0 - weight) * unit(reasoned, dim=-1)


def _check_mix_weight(weight: float) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
        raise ValueError(f"mix_weight must be in [0, 1], got {weight!r}")


def _as_list(texts: str | Sequence[str]) -> tuple[list[str], bool]:
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, (dict, bytes, bytearray)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts is a {type(texts).__name__}; expected a string or a list of strings")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return texts, False


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _check_sampling(temperature: Any, top_p: Any) -> None:
    import math

    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:  # NaN fails the comparison too
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


class SearchR3:
    """A chat LM used as a search embedder. Construct with :meth:`from_pretrained`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        embed_token_id: int,
        prompts: PromptConfig,
        *,
        base_model: str,
        max_length: int = 512,
        bf16: bool | None = None,
    ) -> None:
        self.token_input: torch.Tensor | None = None  # see pin_token_input
        self._pin_handle = None
        self.embed_token_id = embed_token_id
        self.model = model
        self.tokenizer = tokenizer
        self._templates: dict[tuple[str, bool], PromptTemplate] = {}
        self.prompts = prompts
        self.base_model = base_model
        self.max_length = max_length
        self.bf16 = bf16  # None: bf16 autocast where the device computes bf16 natively (see the property)
        self.model.eval()

    # ------------------------------------------------------------------ the embedding token's input vector
    @property
    def model(self) -> Any:
        return self._model

    @model.setter
    def model(self, value: Any) -> None:
        """Replacing the network (peft wrapping, merging) keeps the token's pinned input vector."""
        self._model = value
        self._hook_token_input()

    def pin_token_input(self, row: torch.Tensor | None) -> None:
        """Fix the vector the embedding token *reads* (its input embedding) to ``row``, whatever its
        tied output row learns: training teaches emission through the token's output row at a high
        learning rate (``token_lr``), and with tied embeddings that row is also the input at the very
        position the embedding is read from. Measured on the built-in model, the default 12 SFT steps:
        held-out nDCG@10 0.26 -> 0.07 with the input drifting, -> 0.37 pinned; restoring the base input
        on the drifted run's weights: 0.22 -> 0.44 on msmarco-mini[20q/300d]
        (``benchmarks/results/token_row_ablation.json``). Saved in ``searchr3.json``; ``None`` unpins."""
        self.token_input = None if row is None else row.detach().float().cpu().clone()
        self._hook_token_input()

    def _hook_token_input(self) -> None:
        if self._pin_handle is not None:
            self._pin_handle.remove()
            self._pin_handle = None
        if self.token_input is None:
            return
        row, tid = self.token_input, self.embed_token_id

        def pin(module, args, out):
            if not args or not torch.is_tensor(args[0]):
                return out
            return torch.where((args[0] == tid)[..., None], row.to(out.device, out.dtype), out)

        self._pin_handle = self._model.get_input_embeddings().register_forward_hook(pin)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        *,
        prompts: PromptConfig | dict | None = None,
        max_length: int | None = None,
        bf16: bool | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "SearchR3":
        """Load the built-in SmolLM2 (``None`` or ``"smollm2"``), a HF causal-LM folder or a saved searchr3 model.

        Prompts come from, in order: the ``prompts`` argument, the saved model's ``searchr3.json``,
        the defaults in :mod:`searchr3.prompts`. ``max_length`` likewise: the argument, the saved
        model's, then 512. ``bf16``: autocast the forward passes to bf16 (True), keep fp32 (False), or
        (None) bf16 where the model's device computes it natively (:func:`~searchr3.backbone.native_bf16`).
        """
        if isinstance(prompts, dict):
            prompts = PromptConfig.from_dict(prompts)
        token = prompts.embed_token if prompts else PromptConfig().embed_token
        model, tokenizer, token_id, meta = load_backbone(name_or_path, token, dtype)
        if prompts is None:
            prompts = PromptConfig.from_dict(meta["prompts"]) if meta else PromptConfig()
        base = meta.get("base_model") if meta and meta.get("adapter") else model_source(name_or_path)
        if max_length is None:
            max_length = int(meta["max_length"]) if meta and "max_length" in meta else 512
        out = cls(model, tokenizer, token_id, prompts, base_model=base, max_length=max_length, bf16=bf16)
        if meta and meta.get("token_input") is not None:
            try:
                row = torch.tensor(meta["token_input"], dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                row = None
            if row is None or row.shape != (out.hidden_size,) or not bool(torch.isfinite(row).all()):
                raise ModelLoadError(f"{name_or_path}: token_input in {SEARCHR3_CONFIG} is not {out.hidden_size} finite numbers")
            out.pin_token_input(row)
        return out

    def save_pretrained(self, path: str | os.PathLike, *, merge: bool = False) -> Path:
        """Save atomically: the LoRA adapter (or merged weights with ``merge=True``), tokenizer, prompts."""
        path = Path(path)
        is_peft = hasattr(self.model, "peft_config")
        with atomic_directory(path) as tmp:
            if is_peft and merge:
                merged = copy.deepcopy(self.model).merge_and_unload()
                merged.save_pretrained(tmp)
            else:
                self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            adapter = is_peft and not merge
            atomic_write_json(
                tmp / SEARCHR3_CONFIG,
                {
                    "format_version": FORMAT_VERSION,
                    "adapter": adapter,
                    "base_model": self.base_model if adapter else None,
                    "max_length": self.max_length,
                    "embed_token_id": self.embed_token_id,
                    "prompts": self.prompts.to_dict(),
                    "token_input": None if self.token_input is None else self.token_input.tolist(),
                },
            )
        return path

    def fingerprint(self) -> str:
        """A short hash of the weights' identity and prompts, to tell indexes of different models apart."""
        import hashlib

        h = hashlib.sha256()
        h.update(json.dumps(self.prompts.to_dict(), sort_keys=True).encode())
        h.update(str(self.max_length).encode())
        if self.token_input is not None:
            h.update(self.token_input.numpy().tobytes())
        for name, p in sorted(self.model.state_dict().items()):
            t = p.detach().float().flatten()
            h.update(name.encode())
            # A few exact values per tensor identify the weights without hashing 500 MB.
            idx = torch.linspace(0, t.numel() - 1, steps=min(64, t.numel())).long().clamp_(max=t.numel() - 1)
            h.update(t[idx].numpy().tobytes())
            h.update(np.float64(t.double().sum().item()).tobytes())
        return h.hexdigest()[:16]

    def embedding_key(self) -> str:
        """:meth:`fingerprint` and the precision: what cached embeddings of this model are stored under.

        Indexes check the fingerprint alone (an index built in bf16 is searched in fp32 as well); cached
        corpus embeddings are reused only at the precision they were made in.
        """
        return f"{self.fingerprint()}|{'bf16' if self.bf16 else 'fp32'}"

    # ------------------------------------------------------------------ prompts and batches
    @property
    def bf16(self) -> bool:
        """Whether forward passes autocast to bf16: as set, or by the current device when set to None."""
        return native_bf16(self.device) if self._bf16 is None else self._bf16

    @bf16.setter
    def bf16(self, value: bool | None) -> None:
        self._bf16 = value

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def prompts(self) -> PromptConfig:
        return self._prompts

    @prompts.setter
    def prompts(self, value: PromptConfig) -> None:
        """Setting new prompts drops the token templates rendered from the old ones."""
        self._prompts = value
        self._templates.clear()

    def template(self, kind: Kind, reasoning: bool = False) -> PromptTemplate:
        key = (kind, reasoning)
        if key not in self._templates:
            answer = self.prompts.reasoning_prefix if reasoning else self.prompts.direct_answer
            self._templates[key] = PromptTemplate(self.tokenizer, self.prompts.system(kind, reasoning), answer)
        return self._templates[key]

    def prompt_ids(self, texts: Sequence[str], kind: Kind, reasoning: bool = False) -> list[list[int]]:
        """Token ids of each text's full prompt, truncated to ``max_length`` keeping the template's tail."""
        tpl = self.template(kind, reasoning)
        room = self.max_length
        if reasoning:  # leave space for the reasoning and the token
            room = self.max_length - self.prompts.max_reasoning_tokens - 1
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [tpl.build(ids, room) for ids in encoded]

    def truncated(self, texts: Sequence[str], kind: Kind = "document", reasoning: bool = False) -> list[bool]:
        """For each text, whether encoding it cuts it at ``max_length`` (see :meth:`prompt_ids`)."""
        items, _ = _as_list(texts)
        if not items:
            return []
        tpl = self.template(kind, reasoning)
        room = self.max_length - (self.prompts.max_reasoning_tokens + 1 if reasoning else 0) - tpl.overhead
        return [len(ids) > room for ids in self.tokenizer(items, add_special_tokens=False)["input_ids"]]

    def collate(self, ids: Sequence[Sequence[int]], *, left: bool = False) -> dict[str, torch.Tensor]:
        """Pad id lists to one batch. ``embed_index`` is each row's last real position."""
        pad = self.tokenizer.pad_token_id
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            if left:
                input_ids[i, width - len(x) :] = torch.tensor(x)
                mask[i, width - len(x) :] = 1
            else:
                input_ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
        last = torch.full((len(ids),), width - 1) if left else mask.sum(1) - 1
        return {"input_ids": input_ids, "attention_mask": mask, "embed_index": last}

    def autocast(self):
        """bf16 autocast on the model's device when ``self.bf16`` (a no-op context otherwise)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def decoder_and_head(self):
        """``(decoder body, output layer)`` of the (possibly LoRA-wrapped) causal LM."""
        # The causal LM's body (LlamaModel, Qwen2Model, ...): its last_hidden_state is after the final norm.
        # For a peft model, get_base_model() is the wrapped causal LM, whose layers carry the LoRA weights.
        lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return lm.base_model, lm.get_output_embeddings()

    def hidden_at(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        index: torch.Tensor,
        prefix: tuple[DynamicCache, int] | None = None,
    ) -> torch.Tensor:
        """Final-layer hidden state at ``index`` of each row (differentiable; used by the trainers).
        ``prefix``: (the keys and values of one row, their length) of tokens every row starts with;
        ``input_ids`` (right-padded) and ``index`` then cover only what follows them."""
        decoder, _ = self.decoder_and_head()
        kwargs: dict[str, Any] = {}
        if prefix is not None:
            cache, n = prefix
            rows, width = input_ids.shape
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(rows)
            attention_mask = torch.cat([attention_mask.new_ones((rows, n)), attention_mask], 1)
            positions = torch.arange(n, n + width, device=input_ids.device).expand(rows, width)
            kwargs = {"position_ids": positions, "past_key_values": past, "use_cache": True}
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]

    # ------------------------------------------------------------------ direct encoding
    @contextlib.contextmanager
    def evaluating(self, max_length: int | None = None) -> Iterator["SearchR3"]:
        """Eval mode and, if given, ``max_length`` tokens for the block; both restored after it (the
        trainers encode their corpus between updates, at the environment's document length)."""
        was_training, saved_length = self.model.training, self.max_length
        self.model.eval()
        self.max_length = max_length or saved_length
        try:
            yield self
        finally:
            self.model.train(was_training)
            self.max_length = saved_length

    @contextlib.contextmanager
    def _layer_inputs(self, layer: int | None) -> Iterator[list[torch.Tensor]]:
        """While active, every forward appends the hidden states entering decoder layer ``layer`` to the
        yielded list (nothing is recorded when ``layer`` is None)."""
        seen: list[torch.Tensor] = []
        if layer is None:
            yield seen
            return
        decoder, _ = self.decoder_and_head()

        def record(module, args, kwargs):
            seen.append((args[0] if args else kwargs["hidden_states"]).detach())

        handle = decoder.layers[layer].register_forward_pre_hook(record, with_kwargs=True)
        try:
            yield seen
        finally:
            handle.remove()

    @torch.no_grad()
    def _prefix_cache(self, ids: Sequence[Sequence[int]]) -> tuple[DynamicCache, int] | None:
        """``(keys and values, length)`` of the token prefix every row of ``ids`` starts with, run once,
        or None when it is shorter than :data:`MIN_SHARED_PREFIX`. Every text of a kind starts with the
        same prompt (system turn, instruction: 42 tokens of the built-in model's document prompt, 41 of
        its reasoning prompt), so each batch then runs only what follows (transformers' prefix caching
        is for ``generate()``, which the reasoning path cannot use, see :meth:`_generate`)."""
        n = shared_prefix(ids) if len(ids) > 1 else 0
        if n < MIN_SHARED_PREFIX:
            return None
        decoder, _ = self.decoder_and_head()
        with self.autocast():
            return decoder(input_ids=torch.tensor([list(ids[0][:n])], device=self.device), use_cache=True).past_key_values, n

    @torch.no_grad()
    def _encode_ids(self, ids: list[list[int]], batch_size: int, show_progress_bar: bool, desc: str, capture: int | None = None):
        """Embeddings (unnormalised, fp32) of prompt id lists. With ``capture`` = a layer index, also the
        hidden states entering that layer: returns ``(embeddings, prefix states [p, H], [states of each
        row after the prefix])`` (see :mod:`searchr3.trunk`)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: padding stays small
        out = torch.empty((len(ids), self.hidden_size), dtype=torch.float32)
        states: list[torch.Tensor | None] = [None] * len(ids)
        prefix_states = torch.empty((0, self.hidden_size))
        with self._layer_inputs(capture) as seen:
            shared = self._prefix_cache(ids)
            prefix = shared[1] if shared else 0
            if shared and capture is not None:
                prefix_states = seen.pop()[0].cpu()
            starts = range(0, len(ids), batch_size)
            for s in tqdm(starts, desc=desc, disable=not show_progress_bar, unit="batch"):
                rows = order[s : s + batch_size]
                batch = {k: v.to(self.device) for k, v in self.collate([ids[i][prefix:] for i in rows]).items()}
                with self.autocast():
                    h = self.hidden_at(batch["input_ids"], batch["attention_mask"], batch["embed_index"], prefix=shared)
                out[rows] = h.float().cpu()
                if capture is not None:
                    x = seen.pop().cpu()
                    for j, i in enumerate(rows):
                        states[i] = x[j, : len(ids[i]) - prefix].clone()
        return out if capture is None else (out, prefix_states, states)

    @torch.no_grad()
    def encode_from_layer(
        self, layer: int, prefix_states: torch.Tensor, states: Sequence[torch.Tensor], batch_size: int = 16
    ) -> torch.Tensor:
        """Embeddings (unnormalised, fp32) from hidden states that enter decoder layer ``layer``: each row
        is ``prefix_states`` followed by its ``states`` (as :meth:`_encode_ids` with ``capture`` returns
        them), run through layers ``layer..`` and the final norm only. Equal to the full forward as long
        as the layers below ``layer`` have not changed since the states were taken."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        decoder, _ = self.decoder_and_head()
        if not 0 <= layer < len(decoder.layers):
            raise ValueError(f"layer must be in [0, {len(decoder.layers)}), got {layer}")
        out = torch.empty((len(states), self.hidden_size), dtype=torch.float32)
        order = sorted(range(len(states)), key=lambda i: -len(states[i]))
        p = len(prefix_states)
        everything = decoder.layers
        # The decoder runs its own layer list on inputs_embeds (rotary positions and the causal mask as
        # usual); for this call the list is the top layers only, so no model internals are called here.
        decoder.layers = torch.nn.ModuleList(list(everything)[layer:])
        try:
            for s in range(0, len(states), batch_size):
                rows = order[s : s + batch_size]
                width = p + len(states[rows[0]])
                x = torch.zeros((len(rows), width, self.hidden_size), dtype=states[rows[0]].dtype)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for j, i in enumerate(rows):
                    n = p + len(states[i])
                    x[j, :p], x[j, p:n], mask[j, :n] = prefix_states, states[i], 1
                with self.autocast():
                    h = decoder(inputs_embeds=x.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
                out[rows] = h[torch.arange(len(rows)), mask.sum(1).to(h.device) - 1].float().cpu()
        finally:
            decoder.layers = everything
        return out

    def _finish(self, emb: torch.Tensor, single: bool, normalize: bool, convert_to_numpy: bool, convert_to_tensor: bool):
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        if single:
            emb = emb[0]
        if convert_to_tensor or not convert_to_numpy:
            return emb
        return emb.numpy()

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        kind: Kind = "document",
        reasoning: bool = False,
        batch_size: int = 16,
        show_progress_bar: bool = False,
        normalize_embeddings: bool = True,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        **generation: Any,
    ) -> np.ndarray | torch.Tensor:
        """Embed texts as ``kind`` ("query" or "document"). Returns ``[n, hidden]`` (or ``[hidden]`` for one string).

        Empty and whitespace-only texts are valid: they embed the prompt with nothing in it.
        Texts longer than ``max_length`` are cut at the end of the text, never of the prompt.
        """
        items, single = _as_list(texts)
        _check_batch_size(batch_size)
        if not items:
            return self._finish(torch.empty((0, self.hidden_size)), False, False, convert_to_numpy, convert_to_tensor)
        mode = query_mode(reasoning)
        if mode != "off" and kind != "query":
            raise ValueError("reasoning is only defined for queries; documents are encoded directly")
        emb, _ = self._query_or_document(items, kind, mode, batch_size, show_progress_bar, **generation)
        return self._finish(emb, single, normalize_embeddings, convert_to_numpy, convert_to_tensor)

    def encode_query(self, texts: str | Sequence[str], *, reasoning: bool | str = False, **kwargs: Any):
        """Embed search queries in one of three modes:

        * ``reasoning=False`` / ``"off"``: direct, one forward pass;
        * ``reasoning=True`` / ``"on"``: the model reasons first, the embedding is read at the token
          that ends its reasoning (see :meth:`reason`);
        * ``"mix"``: ``mix_weight * direct + (1 - mix_weight) * reasoning`` (each L2-normalised first),
          the reasoning part being the mean of ``samples`` rollouts (greedy when ``samples=1``, else
          sampled at ``temperature``).
        """
        return self.encode(texts, kind="query", reasoning=reasoning, **kwargs)

    def encode_after_trace(
        self,
        texts: Sequence[str],
        traces: Sequence[str | Sequence[int]],
        *,
        batch_size: int = 16,
        show_progress_bar: bool = False,
        convert_to_tensor: bool = False,
    ):
        """Normalised embeddings of queries read after given traces, without generating: each query's
        reasoning prompt, its trace (text, or completion token ids as :meth:`reason` returns them) and
        ``<|embed_token|>`` (appended unless the ids already end with it). What reasoning-on would give if
        the model had written that trace: for probes of which traces help, and for reading one model's
        traces with another."""
        items, _ = _as_list(texts)
        _check_batch_size(batch_size)
        if len(traces) != len(items):
            raise ValueError(f"{len(items)} queries but {len(traces)} traces")
        tok = self.embed_token_id
        comps = []
        for i, t in enumerate(traces):
            ids = self.tokenizer(t, add_special_tokens=False)["input_ids"] if isinstance(t, str) else [int(x) for x in t]
            if tok in ids[:-1]:
                raise ValueError(f"traces[{i}] has {EMBED_TOKEN} before its end")
            comps.append(ids if ids[-1:] == [tok] else ids + [tok])
        seqs = [head + c for head, c in zip(self.prompt_ids(items, "query", reasoning=True), comps)]
        emb = torch.nn.functional.normalize(self._encode_ids(seqs, batch_size, show_progress_bar, "encode after traces"), dim=-1)
        return emb if convert_to_tensor else emb.numpy()

    def encode_query_with_stats(
        self,
        texts: Sequence[str],
        *,
        reasoning: bool | str = False,
        batch_size: int = 16,
        show_progress_bar: bool = False,
        **generation: Any,
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Normalised query embeddings and what reasoning did: ``emit_rate`` (share of rollouts that wrote
        the token themselves) and ``mean_new_tokens`` (tokens generated per rollout, the token included);
        both are absent for direct encoding. ``seconds``: the wall time of the call's encoding."""
        mode = query_mode(reasoning)
        return self.encode_query_modes(texts, [mode], batch_size=batch_size, show_progress_bar=show_progress_bar, **generation)[
            mode
        ]

    def encode_query_modes(
        self,
        texts: Sequence[str],
        modes: Sequence[bool | str],
        *,
        batch_size: int = 16,
        show_progress_bar: bool = False,
        **generation: Any,
    ) -> dict[str, tuple[np.ndarray, dict[str, float]]]:
        """:meth:`encode_query_with_stats` for several query modes at once, keyed "off"/"on"/"mix": the
        rollouts of "on" and "mix" are generated once and the direct pass of "off" and "mix" is run once
        (a greedy rollout is deterministic, so "mix" is exactly its weighted sum with "off"). Each mode's
        ``seconds`` is the time that mode alone costs: direct pass, rollouts, or both."""
        items, _ = _as_list(texts)
        _check_batch_size(batch_size)
        wanted = list(dict.fromkeys(query_mode(r) for r in modes))
        out = self._query_modes(items, wanted, batch_size, show_progress_bar, **generation)
        return {k: (torch.nn.functional.normalize(e, dim=-1).numpy(), st) for k, (e, st) in out.items()}

    def encode_query_with_reasoning(
        self,
        texts: str | Sequence[str],
        reasoning: bool | str = True,
        *,
        batch_size: int = 8,
        mix_weight: float = MIX_WEIGHT,
        **generation: Any,
    ) -> tuple[np.ndarray, list[str] | None]:
        """Normalised query embeddings and the reasoning each was read after: what search shows its users.

        ``reasoning`` is a query mode as in :meth:`encode_query`; "off" returns no texts (``None``), "on"
        and "mix" one rollout per query (greedy unless ``do_sample``) and its text, "mix" the same
        embedding as ``encode_query(reasoning="mix")`` with one rollout. ``generation``: as :meth:`reason`."""
        items, _ = _as_list(texts)
        mode = query_mode(reasoning)
        if mode == "off":
            return self.encode_query(items, batch_size=batch_size, **generation), None
        _check_mix_weight(mix_weight)
        ro = self.reason(items, batch_size=batch_size, **generation)
        emb = ro.embeddings
        if mode == "mix":
            emb = mix_embeddings(self.encode_query(items, batch_size=batch_size, convert_to_tensor=True), emb, mix_weight)
        return torch.nn.functional.normalize(emb.float(), dim=-1).numpy(), ro.texts

    def _query_or_document(
        self,
        items: list[str],
        kind: Kind,
        mode: str,
        batch_size: int,
        show_progress_bar: bool,
        mix_weight: float = MIX_WEIGHT,
        samples: int = 1,
        **generation: Any,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if kind == "document":
            if generation:
                raise TypeError(f"generation settings {sorted(generation)} need reasoning=True or 'mix'")
            return self._encode_ids(self.prompt_ids(items, kind), batch_size, show_progress_bar, "encode documents"), {}
        return self._query_modes(items, [mode], batch_size, show_progress_bar, mix_weight, samples, **generation)[mode]

    def _query_modes(
        self,
        items: list[str],
        modes: list[str],
        batch_size: int,
        show_progress_bar: bool,
        mix_weight: float = MIX_WEIGHT,
        samples: int = 1,
        **generation: Any,
    ) -> dict[str, tuple[torch.Tensor, dict[str, float]]]:
        if modes == ["off"] and generation:
            raise TypeError(f"generation settings {sorted(generation)} need reasoning=True or 'mix'")
        if samples < 1:
            raise ValueError("samples must be >= 1")
        _check_mix_weight(mix_weight)
        out: dict[str, tuple[torch.Tensor, dict[str, float]]] = {}
        direct = reasoned = None
        direct_s = reason_s = 0.0
        stats: dict[str, float] = {}
        if "off" in modes or "mix" in modes:
            start = time.perf_counter()
            direct = self._encode_ids(
                self.prompt_ids(items, "query"), batch_size, show_progress_bar and modes == ["off"], "encode queries"
            )
            direct_s = time.perf_counter() - start
        if "on" in modes or "mix" in modes:
            if samples > 1:
                generation.setdefault("do_sample", True)
            start = time.perf_counter()
            ro = self.reason(
                [t for t in items for _ in range(samples)],
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
                **generation,
            )
            reasoned = ro.embeddings.view(len(items), samples, -1).mean(1)
            reason_s = time.perf_counter() - start
            stats = {
                "emit_rate": float(np.mean(ro.emitted)),
                "mean_new_tokens": float(np.mean([len(c) for c in ro.completion_ids])),
            }
        for mode in modes:
            if mode == "off":
                out[mode] = direct, {"seconds": direct_s}
            elif mode == "on":
                out[mode] = reasoned, {**stats, "seconds": reason_s}
            else:
                out[mode] = mix_embeddings(direct, reasoned, mix_weight), {**stats, "seconds": direct_s + reason_s}
        return out

    def encode_document(self, texts: str | Sequence[str], **kwargs: Any):
        """Embed documents (always direct: one forward pass)."""
        return self.encode(texts, kind="document", reasoning=False, **kwargs)

    # ------------------------------------------------------------------ reasoning encoding
    def stop_token_ids(self) -> list[int]:
        """Tokens that end a turn (EOS and the chat template's end-of-turn), besides the embedding token."""
        ids = set()
        for tid in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(tid, int):
                ids.add(tid)
            elif isinstance(tid, (list, tuple)):
                ids.update(int(t) for t in tid)
        vocab = self.tokenizer.get_vocab()
        for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"):
            if name in vocab:
                ids.add(vocab[name])
        ids.discard(self.embed_token_id)
        return sorted(ids)

    def reason(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 8,
        show_progress_bar: bool = False,
        normalize_embeddings: bool = True,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | Sequence[int] | None = None,
        repetition_penalty: float | None = None,
        min_new_tokens: int = 0,
    ) -> Rollouts:
        """Generate reasoning for each query and embed it at the ``<|embed_token|>`` that ends it.

        ``max_new_tokens`` and ``repetition_penalty`` default to the model's prompt settings. ``seed``:
        one seed for the whole call, or one per text (each text then samples from its own generator,
        so its rollout does not depend on the other texts of the batch: what data-parallel GRPO needs).
        ``min_new_tokens``: the embedding token and the end-of-turn tokens are masked for the first N
        generated tokens (stage 1's trace exploration: the model must write something before it may stop)."""
        items, _ = _as_list(texts)
        _check_batch_size(batch_size)
        _check_sampling(temperature, top_p)
        if max_new_tokens is None:
            max_new_tokens = self.prompts.max_reasoning_tokens
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if not 0 <= min_new_tokens <= max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={max_new_tokens}], got {min_new_tokens}")
        penalty = self.prompts.repetition_penalty if repetition_penalty is None else float(repetition_penalty)
        if not penalty >= 1.0:
            raise ValueError(f"repetition_penalty must be >= 1, got {penalty}")
        per_text = isinstance(seed, (list, tuple))
        if per_text and len(seed) != len(items):
            raise ValueError(f"{len(seed)} seeds for {len(items)} texts")
        seeds = list(seed) if per_text else [] if seed is None else [seed]
        generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        prompts = self.prompt_ids(items, "query", reasoning=True)
        order = sorted(range(len(items)), key=lambda i: -len(prompts[i]))
        emb = torch.empty((len(items), self.hidden_size), dtype=torch.float32)
        completions: list[list[int]] = [[] for _ in items]
        emitted = [False] * len(items)
        shared = self._prefix_cache(prompts)
        starts = range(0, len(items), batch_size)
        for s in tqdm(starts, desc="reason queries", disable=not show_progress_bar, unit="batch"):
            rows = order[s : s + batch_size]
            generator = [generators[i] for i in rows] if per_text else generators[0] if generators else None
            h, comp, emit = self._generate(
                [prompts[i] for i in rows],
                max_new_tokens,
                do_sample,
                temperature,
                top_p,
                generator,
                penalty,
                min_new_tokens,
                shared,
            )
            emb[rows] = h
            for j, i in enumerate(rows):
                completions[i], emitted[i] = comp[j], emit[j]
        if normalize_embeddings:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        prefix = self.prompts.reasoning_prefix
        texts_out = [f"{prefix} {self.tokenizer.decode(c[:-1], skip_special_tokens=True).strip()}".strip() for c in completions]
        return Rollouts(emb, texts_out, prompts, completions, emitted)

    @torch.no_grad()
    def _generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_p: float,
        generator: torch.Generator | list[torch.Generator] | None,
        repetition_penalty: float = 1.0,
        min_new_tokens: int = 0,
        prefix: tuple[DynamicCache, int] | None = None,
    ) -> tuple[torch.Tensor, list[list[int]], list[bool]]:
        """Batched generation with the KV cache. ``prefix``: (keys and values, length) of the head every
        prompt starts with (:meth:`_prefix_cache`); the prompts' remainders are then left-padded after it.

        Written as a small loop rather than ``model.generate`` because the embedding is the hidden
        state *of* the final token, which ``generate`` never computes (it stops after sampling it),
        and because a stop token must be replaced by the embedding token and fed through the cache.
        """
        decoder, lm_head = self.decoder_and_head()
        dev = self.device
        head = prefix[1] if prefix else 0
        batch = self.collate([p[head:] for p in prompts], left=True)
        ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
        n = ids.shape[0]
        positions = head + (mask.cumsum(-1) - 1).clamp(min=0)
        if prefix:
            cache = copy.deepcopy(prefix[0])
            cache.batch_repeat_interleave(n)
            mask = torch.cat([mask.new_ones((n, head)), mask], 1)
        else:
            cache = DynamicCache()
        stops = torch.tensor(self.stop_token_ids(), dtype=torch.long, device=dev)
        embed = torch.full((n,), self.embed_token_id, dtype=torch.long, device=dev)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        emitted = torch.zeros(n, dtype=torch.bool, device=dev)
        out_emb = torch.zeros((n, self.hidden_size), dtype=torch.float32)
        completions: list[list[int]] = [[] for _ in range(n)]
        next_pos = positions[:, -1]
        seen = None  # [n, vocab] tokens each row has generated, for the repetition penalty
        with self.autocast():
            hidden = decoder(
                input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
            ).last_hidden_state[:, -1]
            for step in range(max_new_tokens + 1):
                if step == max_new_tokens:
                    token = embed.clone()  # length limit: append the token
                else:
                    logits = lm_head(hidden).float()
                    if repetition_penalty != 1.0 and seen is None:
                        seen = torch.zeros(logits.shape, dtype=torch.bool, device=dev)
                    if seen is not None:
                        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
                        logits = torch.where(seen, penalised, logits)
                    if step < min_new_tokens:
                        logits[:, stops] = float("-inf")
                        logits[:, self.embed_token_id] = float("-inf")
                    token = self._next_token(logits, do_sample, temperature, top_p, generator)
                is_embed = token == self.embed_token_id
                emitted |= is_embed & ~done & (step < max_new_tokens)
                finishing = ~done & (is_embed | torch.isin(token, stops))
                feed = torch.where(finishing, embed, token)
                feed = torch.where(done, torch.full_like(feed, self.tokenizer.pad_token_id), feed)
                for i in (~done).nonzero().flatten().tolist():
                    completions[i].append(int(feed[i]))
                if seen is not None and step < max_new_tokens:
                    seen[torch.arange(n, device=dev), token] = True
                mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
                next_pos = next_pos + 1
                hidden = decoder(
                    input_ids=feed[:, None],
                    attention_mask=mask,
                    position_ids=next_pos[:, None],
                    past_key_values=cache,
                    use_cache=True,
                ).last_hidden_state[:, -1]
                out_emb[finishing.cpu()] = hidden[finishing].float().cpu()
                done |= finishing
                if bool(done.all()):
                    break
        return out_emb, completions, emitted.cpu().tolist()

    @staticmethod
    def _next_token(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, generator) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, idx = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        if isinstance(generator, list):  # one generator per row
            return torch.cat([torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, generator)]).squeeze(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
