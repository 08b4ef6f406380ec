"""``searchr3 serve [IDX]``: the HTTP service (uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from searchr3.commands import Precision, precision_option

_C = "searchr3.service:ServiceConfig"
DEFAULTS = {
    **{name: (_C, name) for name in ("max_batch", "max_wait_ms", "max_texts", "max_body_bytes")},
    "max_length": ("searchr3.model:SearchR3.from_pretrained", "max_length"),
    "bf16": ("searchr3.model:SearchR3.from_pretrained", "bf16"),
    "model": ("searchr3.model:SearchR3.from_pretrained", "name_or_path"),
}
CLI_ONLY = {"index_dir", "host", "port"}


def serve(
    index_dir: Optional[Path] = typer.Argument(
        None, help="Index folder for POST /search (optional: without it only /v1/embeddings)."
    ),
    model: Optional[str] = typer.Option(None, "--model", help="Model (default: the index's model, else built-in SmolLM2)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Texts per model call."),
    max_wait_ms: float = typer.Option(
        5.0, "--max-wait-ms", min=0.0, max=60_000.0, help="How long a request waits for others to share its batch."
    ),
    max_texts: int = typer.Option(64, "--max-texts", min=1, help="Inputs per request."),
    max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", min=1),
    max_length: Optional[int] = typer.Option(
        None, "--max-length", min=16, help="Token limit per text without an index (default: the model's, 512)."
    ),
    bf16: Precision = precision_option(),
) -> None:
    """Serve POST /v1/embeddings (OpenAI-compatible), POST /search and a search page at / over HTTP."""
    import uvicorn

    from searchr3 import SearchR3
    from searchr3.commands import build_config
    from searchr3.search import Searcher
    from searchr3.service import ServiceConfig, create_app

    cfg = build_config(
        ServiceConfig,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_texts=max_texts,
        max_body_bytes=max_body_bytes,
        model_name=Path(model).name if model else "searchr3",
    )
    if index_dir is not None:  # IndexFormatError, ModelMismatchError: bad input
        app = create_app(searcher=Searcher(index_dir, model, bf16=bf16), config=cfg)
    else:
        app = create_app(SearchR3.from_pretrained(model, max_length=max_length, bf16=bf16), config=cfg)
    uvicorn.run(app, host=host, port=port, log_level="warning")
