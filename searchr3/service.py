"""HTTP service: OpenAI-style ``POST /v1/embeddings`` and ``POST /search`` (FastAPI).

Requests are not encoded one by one: a :class:`MicroBatcher` collects the texts of requests that
arrive within ``max_wait_ms`` of each other (up to ``max_batch`` texts) and encodes them in one
model call on a single worker thread, which also keeps the model off the event loop.

``/v1/embeddings`` follows the OpenAI request/response shape (``input`` string or list, ``model``,
``encoding_format`` float|base64); Search-R3 options go in ``extra``:
``{"reasoning": "off"|"on"|"mix" (or a bool), "mix_weight": 0.6, "input_type": "query"|"document"}`` (the OpenAI
client sends it with ``extra_body={"extra": {...}}``); ``POST /search`` takes the same ``reasoning`` and
``mix_weight``. ``dimensions`` (1..hidden size) returns the leading dimensions of
each embedding, re-normalised (Matryoshka-style truncation). Each item says whether its text was
cut at ``max_length`` (``truncated``), and ``usage.truncated_inputs`` counts them.

Every text is checked on its own before it reaches the batcher (type, emptiness, length, valid
Unicode, and the tokenizer itself), so a bad text gets a 4xx naming its input index and never joins
a batch; and should a batch still fail, its requests are retried one by one, so one request's
failure is never another's. ``GET /`` is a small search page (``searchr3/static/search.html``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from .model import MIX_WEIGHT, query_mode

log = logging.getLogger(__name__)


@dataclass
class ServiceConfig:
    max_batch: int = 32  # texts per model call
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_texts: int = 64  # inputs per request
    max_text_chars: int = 8_192  # characters per input
    max_body_bytes: int = 1_000_000
    max_k: int = 100
    model_name: str = "searchr3"

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_texts", "max_text_chars", "max_body_bytes", "max_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.max_wait_ms, (int, float)) and math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {self.max_wait_ms!r}")


# ---------------------------------------------------------------------------------------- batching
@dataclass
class _Job:
    texts: list[str]
    kind: str
    mode: str  # the query mode: "off" (and every document), "on", "mix"
    mix_weight: float
    future: Future


class MicroBatcher:
    """One worker thread that encodes queued texts in batches; :meth:`submit` returns a Future.

    The Future's result is ``(embeddings [n, dim] float32, reasoning texts or None)``.
    """

    def __init__(self, model: Any, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000
        self.batches = 0  # model calls made (for tests and benchmarks)
        self.texts = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="searchr3-batcher", daemon=True)
        self._thread.start()

    def submit(
        self, texts: list[str], kind: str = "document", reasoning: bool | str = False, mix_weight: float = MIX_WEIGHT
    ) -> Future:
        if not self._thread.is_alive():
            raise RuntimeError("the batcher is closed")
        fut: Future = Future()
        self._queue.put(_Job(list(texts), kind, query_mode(reasoning), float(mix_weight), fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, n, stop = [first], len(first.texts), False
            deadline = time.monotonic() + self.max_wait
            while n < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                n += len(job.texts)
            groups: dict[tuple[str, str, float], list[_Job]] = {}
            for job in jobs:  # one model call per kind of encoding
                groups.setdefault((job.kind, job.mode, job.mix_weight), []).append(job)
            for key, group in groups.items():
                self._encode(group, key)
            if stop:
                return

    def _call(self, texts: list[str], key: tuple[str, str, float]):
        kind, mode, mix_weight = key
        if mode == "off":
            return self.model.encode(texts, kind=kind, batch_size=self.max_batch), None
        return self.model.encode_query_with_reasoning(texts, mode, batch_size=self.max_batch, mix_weight=mix_weight)

    def _encode(self, jobs: list[_Job], key: tuple[str, str, float]) -> None:
        texts = [t for job in jobs for t in job.texts]
        try:
            emb, thoughts = self._call(texts, key)
        except Exception as e:  # noqa: BLE001 - isolate: retry each request alone, so only the culprit fails
            if len(jobs) == 1:
                jobs[0].future.set_exception(e)
                return
            log.warning("a batch of %d requests failed (%s: %s); retrying them one by one", len(jobs), type(e).__name__, e)
            for job in jobs:
                self._encode([job], key)
            return
        self.batches += 1
        self.texts += len(texts)
        start = 0
        for job in jobs:
            end = start + len(job.texts)
            job.future.set_result((emb[start:end], thoughts[start:end] if thoughts else None))
            start = end


# ---------------------------------------------------------------------------------------- schema
QueryMode = bool | Literal["off", "on", "mix"]  # as SearchR3.encode_query's ``reasoning``
MixWeight = Annotated[float, Field(ge=0.0, le=1.0)]  # "mix": the direct embedding's weight


class EmbeddingExtra(BaseModel):
    reasoning: QueryMode = False
    mix_weight: MixWeight = MIX_WEIGHT
    input_type: Literal["query", "document"] | None = None  # default: query with reasoning, else document


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    extra: EmbeddingExtra = Field(default_factory=EmbeddingExtra)


class SearchRequest(BaseModel):
    query: str
    k: int = 10
    reasoning: QueryMode = False
    mix_weight: MixWeight = MIX_WEIGHT


class ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def shorten(emb: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The leading ``dimensions`` of each row, L2-normalised again (``None``: unchanged)."""
    if dimensions is None or dimensions == emb.shape[-1]:
        return emb
    out = np.asarray(emb[..., :dimensions], dtype=np.float32)
    norms = np.linalg.norm(out, axis=-1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def _lone_surrogate(text: str) -> int | None:
    """Position of the first lone surrogate (valid in JSON as ``"\\ud800"``, but not Unicode text), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _page() -> str:
    from importlib.resources import files

    return files("searchr3").joinpath("static/search.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------- the app
def create_app(model: Any = None, *, searcher: Any = None, config: ServiceConfig | None = None) -> FastAPI:
    """A FastAPI app over ``model`` (a SearchR3) or ``searcher`` (a :class:`~searchr3.search.Searcher`, enables ``/search``)."""
    cfg = config or ServiceConfig()
    if searcher is not None:
        model = searcher.model
    if model is None:
        raise ValueError("create_app needs a model or a searcher")
    state: dict[str, MicroBatcher] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["batcher"] = MicroBatcher(model, cfg.max_batch, cfg.max_wait_ms)
        app.state.batcher = state["batcher"]
        yield
        state.pop("batcher").close()

    app = FastAPI(title="searchr3", lifespan=lifespan)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        if request.method == "POST":
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return _error(
                    415, f"the request body must be JSON (Content-Type: application/json), got {ctype or 'no Content-Type'!r}"
                )
            length = request.headers.get("content-length")
            if length is None:
                return _error(411, "a Content-Length header is required")
            if not length.isdigit() or int(length) > cfg.max_body_bytes:
                return _error(413, f"request body over the limit of {cfg.max_body_bytes} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "the request body is not valid JSON")
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in errors[:5]]
        return _error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError):
        return _error(exc.status, exc.message, "invalid_request_error" if exc.status < 500 else "server_error")

    def check_texts(texts: list[str], kind: str, reasoning: bool, what: str = "input") -> list[bool]:
        """Every check a text can fail, per text, before it joins a batch; returns the truncation flags."""
        if not texts:
            raise ClientError(400, f"{what} must not be empty")
        if len(texts) > cfg.max_texts:
            raise ClientError(413, f"too many inputs: {len(texts)} > {cfg.max_texts} per request")
        for i, t in enumerate(texts):
            name = what if what == "query" else f"{what}[{i}]"
            if not t.strip():
                raise ClientError(400, f"{name} is empty")
            if len(t) > cfg.max_text_chars:
                raise ClientError(413, f"{name} has {len(t)} characters, over the limit of {cfg.max_text_chars}")
            pos = _lone_surrogate(t)
            if pos is not None:
                raise ClientError(
                    400, f"{name} is not valid Unicode text: a lone surrogate U+{ord(t[pos]):04X} at character {pos}"
                )
        try:  # the tokenizer is the last judge; it also tells which texts will be cut at max_length
            return model.truncated(texts, kind, reasoning)
        except Exception:  # noqa: BLE001 - find the text it refuses, and name it
            for i, t in enumerate(texts):
                try:
                    model.truncated([t], kind, reasoning)
                except Exception as e:  # noqa: BLE001
                    raise ClientError(
                        400, f"{what if what == 'query' else f'{what}[{i}]'} cannot be tokenized: {type(e).__name__}"
                    ) from None
            raise

    async def encode(texts: list[str], kind: str, mode: str = "off", mix_weight: float = MIX_WEIGHT):
        try:
            return await asyncio.wrap_future(state["batcher"].submit(texts, kind, mode, mix_weight))
        except Exception as e:  # noqa: BLE001 - this request alone failed (the batcher isolates requests)
            log.error("encoding failed: %s: %s", type(e).__name__, e)
            raise ClientError(500, f"encoding failed: {type(e).__name__}") from None

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return _page()

    @app.get("/health")
    async def health():
        b = state["batcher"]
        return {
            "status": "ok",
            "model": cfg.model_name,
            "dim": model.hidden_size,
            "documents": len(searcher.index) if searcher else 0,
            "search": searcher is not None,
            "batches": b.batches,
            "texts": b.texts,
        }

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest):
        texts = [req.input] if isinstance(req.input, str) else req.input
        dim = model.hidden_size
        if req.dimensions is not None and not 1 <= req.dimensions <= dim:
            raise ClientError(400, f"dimensions must be between 1 and {dim}, got {req.dimensions}")
        mode = query_mode(req.extra.reasoning)
        kind = req.extra.input_type or ("query" if mode != "off" else "document")
        if mode != "off" and kind != "query":
            raise ClientError(400, "reasoning applies to queries only (input_type 'query')")
        cut = check_texts(texts, kind, mode != "off")
        emb, thoughts = await encode(texts, kind, mode, req.extra.mix_weight)
        emb = shorten(emb, req.dimensions)
        tokens = sum(len(ids) for ids in model.tokenizer(texts, add_special_tokens=False)["input_ids"])
        data = []
        for i, row in enumerate(emb):
            vec = base64.b64encode(row.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else row.tolist()
            item = {"object": "embedding", "index": i, "embedding": vec, "truncated": cut[i]}
            if thoughts is not None:
                item["reasoning"] = thoughts[i]
            data.append(item)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "truncated_inputs": sum(cut)}
        return {"object": "list", "data": data, "model": req.model or cfg.model_name, "usage": usage}

    @app.post("/search")
    async def search(req: SearchRequest):
        if searcher is None:
            raise ClientError(404, "this server has no index (start it with `searchr3 serve IDX`)")
        if not 1 <= req.k <= cfg.max_k:
            raise ClientError(400, f"k must be between 1 and {cfg.max_k}")
        mode = query_mode(req.reasoning)
        cut = check_texts([req.query], "query", mode != "off", what="query")
        emb, thoughts = await encode([req.query], "query", mode, req.mix_weight)
        hits = searcher.index.search(np.asarray(emb), req.k)[0]
        return {
            "query": req.query,
            "reasoning": thoughts[0] if thoughts else None,
            "truncated": cut[0],
            "hits": [{"rank": h.rank, "id": h.id, "score": h.score, "text": h.text} for h in hits],
        }

    return app
