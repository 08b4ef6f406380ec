"""The HTTP service, started with uvicorn on a free loopback port and called over HTTP."""
import asyncio
import base64
import functools
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from searchr3.index import Doc, build_index
from searchr3.search import Searcher
from searchr3.service import MicroBatcher, ServiceConfig, create_app

post = functools.partial(httpx.post, timeout=60)  # generous: the test machine may be busy
get = functools.partial(httpx.get, timeout=60)
TEXTS = ["the cat sat on the mat", "paris is the capital of france", "proteins fold into shapes", "rain falls from clouds"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tiny, tiny_model_dir, tmp_path):
    """A running server (index of 4 docs); yields (base url, app, model, index dir)."""
    import uvicorn

    tiny.prompts.max_reasoning_tokens = 4
    build_index(tiny, [Doc(f"d{i}", t) for i, t in enumerate(TEXTS)], tmp_path / "idx", model_name=str(tiny_model_dir), show_progress_bar=False)
    cfg = ServiceConfig(max_batch=64, max_wait_ms=30, max_texts=8, max_text_chars=200, max_body_bytes=4000)
    app = create_app(searcher=Searcher(tmp_path / "idx", tiny), config=cfg)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app, tiny, tmp_path / "idx"
    srv.should_exit = True
    thread.join(timeout=10)


def test_embeddings_openai_shape(server):
    url, _, model, _ = server
    r = post(f"{url}/v1/embeddings", json={"input": TEXTS[0], "model": "m"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "m" and body["usage"]["prompt_tokens"] > 0
    (item,) = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    np.testing.assert_allclose(item["embedding"], model.encode_document(TEXTS[0]), atol=1e-5)

    r = post(f"{url}/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64", "extra": {"input_type": "query"}})
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]]
    np.testing.assert_allclose(np.stack(rows), model.encode_query(TEXTS), atol=1e-5)

    r = post(f"{url}/v1/embeddings", json={"input": ["paris"], "extra": {"reasoning": True}})
    assert r.status_code == 200 and isinstance(r.json()["data"][0]["reasoning"], str)
    assert abs(np.linalg.norm(r.json()["data"][0]["embedding"]) - 1) < 1e-4


def test_search_endpoint_matches_python_api(server):
    url, _, model, idx = server
    r = post(f"{url}/search", json={"query": "the cat", "k": 3})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    want = Searcher(idx, model).search("the cat", k=3)
    assert [(h["rank"], h["id"], h["text"]) for h in hits] == [(h.rank, h.id, h.text) for h in want]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in want], atol=1e-5)
    r = post(f"{url}/search", json={"query": "the cat", "k": 2, "reasoning": True})
    assert r.status_code == 200 and isinstance(r.json()["reasoning"], str) and len(r.json()["hits"]) == 2


@pytest.mark.parametrize("body,status,msg", [
    (b"{not json", 400, "not valid JSON"),
    ({"input": []}, 400, "input must not be empty"),
    ({"input": ""}, 400, "input[0] is empty"),
    ({"input": ["a"] * 9}, 413, "too many inputs: 9 > 8"),
    ({"input": "x" * 300}, 413, "over the limit of 200"),
    ({"input": [1, 2]}, 422, "invalid request"),
    ({"model": "m"}, 422, "input: Field required"),
    ({"input": "a", "dimensions": 3}, 400, "dimensions must be"),
    ({"input": "a", "extra": {"reasoning": True, "input_type": "document"}}, 400, "queries only"),
    ({"input": ["word " * 150] * 8}, 413, "request body over the limit"),
])
def test_embeddings_bad_requests(server, body, status, msg):
    url = server[0]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = post(f"{url}/v1/embeddings", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert msg in r.json()["error"]["message"]


@pytest.mark.parametrize("body,status,msg", [({"query": " "}, 400, "empty"), ({"query": "a", "k": 0}, 400, "k must be"), ({"k": 3}, 422, "query")])
def test_search_bad_requests(server, body, status, msg):
    r = post(f"{server[0]}/search", json=body)
    assert r.status_code == status and msg in r.json()["error"]["message"]


def test_concurrent_requests_are_batched(server):
    url, app, model, _ = server
    before = app.state.batcher.batches

    async def load():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json={"input": TEXTS[i % 4]}) for i in range(32)))

    responses = asyncio.run(load())
    assert all(r.status_code == 200 for r in responses)
    calls = app.state.batcher.batches - before
    assert calls < 16, f"32 concurrent requests took {calls} model calls: not batched"
    health = get(f"{url}/health").json()
    assert health["documents"] == 4 and health["batches"] == app.state.batcher.batches and health["texts"] >= 32
    got = np.array([r.json()["data"][0]["embedding"] for r in responses])
    np.testing.assert_allclose(got, model.encode_document([TEXTS[i % 4] for i in range(32)]), atol=1e-5)


def test_micro_batcher_groups_by_kind(tiny):
    batcher = MicroBatcher(tiny, max_batch=16, max_wait_ms=50)
    try:
        futures = [batcher.submit([t], kind) for t in TEXTS for kind in ("query", "document")]
        results = [f.result(timeout=30)[0][0] for f in futures]
    finally:
        batcher.close()
    assert batcher.batches == 2 and batcher.texts == 8  # one call per kind
    np.testing.assert_allclose(results[0::2], tiny.encode_query(TEXTS), atol=1e-5)
    np.testing.assert_allclose(results[1::2], tiny.encode_document(TEXTS), atol=1e-5)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(["x"])
    with pytest.raises(ValueError):
        MicroBatcher(tiny, max_batch=0)


def test_serve_command_help(cli):
    out = cli("serve", "--help")
    assert out.code == 0 and "/v1/embeddings" in out.out and "--max-batch" in out.out
    cli("serve", "/nonexistent/idx").assert_bad_input("does not exist")
