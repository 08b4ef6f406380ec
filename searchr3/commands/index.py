"""``searchr3 index build|add``: encode a corpus into a persistent search index."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from searchr3.commands import Precision, precision_option

_B = "searchr3.index:build_index"
DEFAULTS = {
    "batch_size": (_B, "batch_size"),
    "exact_threshold": (_B, "exact_threshold"),
    "store_text": (_B, "store_text"),
    "compact": (_B, "compact"),
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
        [d.text for d in docs],
        model_name,
        prompts=model.prompts.to_dict(),
        max_length=model.max_length,
        bf16=bf16,
        concurrency=ray_actors,
        batch_size=batch_size,
        address=ray_address,
    )


def build(
    corpus: Path = typer.Option(
        ..., "--corpus", help="BEIR folder, .jsonl (_id/id, text, title) or .txt (one document per line)."
    ),
    out: Path = typer.Option(..., "--out", help="Index folder to write."),
    model: Optional[str] = typer.Option(None, "--model", help="Model folder or name (default: built-in SmolLM2)."),
    max_length: Optional[int] = typer.Option(
        None, "--max-length", min=16, help="Token limit per document (default: the model's, 512)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    exact_threshold: int = typer.Option(
        20_000, "--exact-threshold", min=0, help="Below this many documents search is exact; above, HNSW."
    ),
    store_text: bool = typer.Option(True, "--store-text/--no-store-text", help="Keep document texts in the index."),
    compact: str = typer.Option(
        "none", "--compact", help="Vector storage: none (float32) or int8 (FAISS scalar quantizer, 4x smaller)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
    bf16: Precision = precision_option(),
    ray: bool = typer.Option(False, "--ray", help="Encode with Ray Data (an actor pool of model replicas)."),
    ray_actors: int = typer.Option(2, "--ray-actors", min=1, help="Model replicas in the Ray actor pool."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (default: start a local Ray)."),
) -> None:
    """Encode a corpus into a new index (exact below --exact-threshold documents, HNSW above)."""
    from searchr3 import SearchR3
    from searchr3.commands import UsageError
    from searchr3.index import COMPACT, build_index, read_corpus

    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists: use `searchr3 index add` to append, or --overwrite")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder: refusing to replace it with an index")
    if compact not in COMPACT:
        raise typer.BadParameter(f"{compact!r} is not one of {', '.join(map(repr, COMPACT))}", param_hint="--compact")
    docs = read_corpus(corpus)
    m = SearchR3.from_pretrained(model, max_length=max_length, bf16=bf16)
    typer.echo(_plan(len(docs), m.hidden_size, compact, exact_threshold))
    vectors = _encode(m, model, docs, batch_size, ray, ray_actors, ray_address, bf16)
    try:
        index = build_index(
            m,
            docs,
            out,
            model_name=model,
            vectors=vectors,
            batch_size=batch_size,
            exact_threshold=exact_threshold,
            store_text=store_text,
            compact=compact,
            sources=[str(corpus)],
        )
    except ValueError as e:  # duplicate ids in the corpus, a vector that is not finite
        raise UsageError(str(e)) from None
    typer.echo(f"indexed {len(index)} documents ({_describe(index)}, dim {index.meta.dim}) into {out}")
    typer.echo(_truncation_line(index.meta.truncated, len(index), index.meta.max_length))


def _plan(n: int, dim: int, compact: str, exact_threshold: int) -> str:
    """What will be built, and what its vectors will take, said before the (long) encoding starts."""
    per_doc = dim if compact == "int8" else 4 * dim
    need = n * per_doc / 2**20
    search = (
        "exact search"
        if n < exact_threshold
        else f"an HNSW graph (approximate search: {n:,} documents >= --exact-threshold {exact_threshold:,})"
    )
    line = f"plan: {n:,} documents -> {'int8' if compact == 'int8' else 'float32'} vectors, {search}; vectors ~{need:,.0f} MiB"
    available = _available_mib()
    if available is not None and need > 0.5 * available:
        hint = "" if compact == "int8" else "; --compact int8 needs a quarter of that"
        line += f"\nwarning: that is over half the memory available now ({available:,.0f} MiB){hint}"
    return line


def _available_mib() -> float | None:
    try:
        for row in Path("/proc/meminfo").read_text().splitlines():
            if row.startswith("MemAvailable:"):
                return int(row.split()[1]) / 1024
    except OSError:
        pass
    return None


def _describe(index) -> str:
    m = index.meta
    kind = "int8" if m.compact == "int8" else "float32"
    if m.backend == "hnsw":
        return f"{kind}, HNSW graph: approximate search, as {m.count:,} documents >= --exact-threshold {m.exact_threshold:,}"
    return f"{kind}, exact search"


def _truncation_line(cut: int, total: int, max_length: int) -> str:
    if not cut:
        return f"no document was cut at --max-length {max_length} tokens"
    return f"{cut} of {total} documents were cut at --max-length {max_length} tokens (their ends are not searchable)"


def add(
    index_dir: Path = typer.Argument(..., help="Existing index folder."),
    corpus: Path = typer.Option(..., "--corpus", help="Documents to append (same formats as build)."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model to encode with; must be the one that built the index (default: it)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    bf16: Precision = precision_option(),
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
        cut_before = index.meta.truncated
        build_index(m, docs, index_dir, base=index, vectors=vectors, batch_size=batch_size, sources=[str(corpus)])
    except ValueError as e:  # ids already in the index
        raise UsageError(str(e)) from None
    typer.echo(f"added {len(docs)} documents; {index_dir} now holds {len(index)} ({_describe(index)})")
    typer.echo(_truncation_line(index.meta.truncated - cut_before, len(docs), index.meta.max_length))
