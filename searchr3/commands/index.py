"""``searchr3 index build|add``: encode a corpus into a persistent search index."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

_B = "searchr3.index:build_index"
DEFAULTS = {
    "batch_size": (_B, "batch_size"),
    "exact_threshold": (_B, "exact_threshold"),
    "store_text": (_B, "store_text"),
    "max_length": ("searchr3.model:SearchR3.from_pretrained", "max_length"),
    "model": ("searchr3.model:SearchR3.from_pretrained", "name_or_path"),
    "bf16": ("searchr3.model:SearchR3.from_pretrained", "bf16"),
    "ray_actors": ("searchr3.ray_encode:encode_with_ray", "concurrency"),
    "ray_address": ("searchr3.ray_encode:encode_with_ray", "address"),
}
CLI_ONLY = {"corpus", "out", "overwrite", "ray", "index_dir"}


def _encode(model, model_name, docs, batch_size, ray, ray_actors, ray_address, bf16):
    if not ray:
        return None  # build_index encodes locally (resumable)
    from searchr3.ray_encode import encode_with_ray

    return encode_with_ray(
        [d.text for d in docs], model_name, prompts=model.prompts.to_dict(), max_length=model.max_length,
        bf16=bf16, concurrency=ray_actors, batch_size=batch_size, address=ray_address,
    )


def build(
    corpus: Path = typer.Option(..., "--corpus", help="BEIR folder, .jsonl (_id/id, text, title) or .txt (one document per line)."),
    out: Path = typer.Option(..., "--out", help="Index folder to write."),
    model: Optional[str] = typer.Option(None, "--model", help="Model folder or name (default: built-in SmolLM2)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=16, help="Token limit per document (default: the model's, 512)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    exact_threshold: int = typer.Option(20_000, "--exact-threshold", min=0, help="Below this many documents search is exact; above, HNSW."),
    store_text: bool = typer.Option(True, "--store-text/--no-store-text", help="Keep document texts in the index."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
    bf16: bool = typer.Option(True, "--bf16/--fp32", help="bf16 autocast for encoding."),
    ray: bool = typer.Option(False, "--ray", help="Encode with Ray Data (an actor pool of model replicas)."),
    ray_actors: int = typer.Option(2, "--ray-actors", min=1, help="Model replicas in the Ray actor pool."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (default: start a local Ray)."),
) -> None:
    """Encode a corpus into a new index (exact below --exact-threshold documents, HNSW above)."""
    from searchr3 import SearchR3
    from searchr3.commands import UsageError
    from searchr3.index import build_index, read_corpus

    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists: use `searchr3 index add` to append, or --overwrite")
    docs = read_corpus(corpus)
    m = SearchR3.from_pretrained(model, max_length=max_length, bf16=bf16)
    vectors = _encode(m, model, docs, batch_size, ray, ray_actors, ray_address, bf16)
    try:
        index = build_index(m, docs, out, model_name=model, vectors=vectors, batch_size=batch_size,
                            exact_threshold=exact_threshold, store_text=store_text, sources=[str(corpus)])
    except ValueError as e:  # duplicate ids in the corpus
        raise UsageError(str(e)) from None
    typer.echo(f"indexed {len(index)} documents ({index.meta.backend}, dim {index.meta.dim}) into {out}")


def add(
    index_dir: Path = typer.Argument(..., help="Existing index folder."),
    corpus: Path = typer.Option(..., "--corpus", help="Documents to append (same formats as build)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model to encode with; must be the one that built the index (default: it)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    bf16: bool = typer.Option(True, "--bf16/--fp32"),
    ray: bool = typer.Option(False, "--ray", help="Encode with Ray Data."),
    ray_actors: int = typer.Option(2, "--ray-actors", min=1),
    ray_address: Optional[str] = typer.Option(None, "--ray-address"),
) -> None:
    """Append documents to an index, encoded by the model that built it."""
    from searchr3 import SearchR3
    from searchr3.commands import UsageError
    from searchr3.index import Index, build_index, read_corpus

    index = Index.load(index_dir)
    docs = read_corpus(corpus)
    name = model or index.meta.model
    m = SearchR3.from_pretrained(name, prompts=index.meta.prompts, max_length=index.meta.max_length, bf16=bf16)
    index.check_model(m)  # ModelMismatchError: bad input
    vectors = _encode(m, name, docs, batch_size, ray, ray_actors, ray_address, bf16)
    try:
        build_index(m, docs, index_dir, base=index, vectors=vectors, batch_size=batch_size, sources=[str(corpus)])
    except ValueError as e:  # ids already in the index
        raise UsageError(str(e)) from None
    typer.echo(f"added {len(docs)} documents; {index_dir} now holds {len(index)}")
