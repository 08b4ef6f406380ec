"""The HTTP service, started with uvicorn on a free loopback port and called over HTTP."""

import asyncio
import base64
import functools
import json

import httpx
import numpy as np
import pytest

from searchr3.index import Doc, build_index
from searchr3.search import Searcher
from searchr3.service import MicroBatcher, ServiceConfig, create_app
from tests.conftest import running_server

post = functools.partial(httpx.post, timeout=60)  # generous: the test machine may be busy
get = functools.partial(httpx.get, timeout=60)
TEXTS = ["the cat sat on the mat", "paris is the capital of france", "proteins fold into shapes", "rain falls from clouds"]


@pytest.fixture()
def server(tiny, tiny_model_dir, tmp_path):
    """A running server (index of 4 docs); yields (base url, app, model, index dir)."""
    tiny.prompts.max_reasoning_tokens = 4
    build_index(
        tiny,
        [Doc(f"d{i}", t) for i, t in enumerate(TEXTS)],
        tmp_path / "idx",
        model_name=str(tiny_model_dir),
        show_progress_bar=False,
    )
    cfg = ServiceConfig(max_batch=64, max_wait_ms=30, max_texts=8, max_text_chars=200, max_body_bytes=4000)
    app = create_app(searcher=Searcher(tmp_path / "idx", tiny), config=cfg)
    with running_server(app) as url:
        yield url, app, tiny, tmp_path / "idx"


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
    r = post(f"{url}/v1/embeddings", json={"input": ["paris", "rain"], "extra": {"reasoning": "mix", "mix_weight": 0.4}})
    assert r.status_code == 200 and all(isinstance(d["reasoning"], str) for d in r.json()["data"])
    got = np.stack([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(got, model.encode_query(["paris", "rain"], reasoning="mix", mix_weight=0.4), atol=1e-5)


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
    for mode in ("on", "mix"):  # the query modes as strings: the same hits and reasoning as the Python API
        r = post(f"{url}/search", json={"query": "the cat", "k": 3, "reasoning": mode, "mix_weight": 0.3})
        assert r.status_code == 200, r.text
        (want,) = Searcher(idx, model).search_many(["the cat"], k=3, reasoning=mode, mix_weight=0.3)
        assert r.json()["reasoning"] == want.reasoning and [h["id"] for h in r.json()["hits"]] == [h.id for h in want.hits]
        np.testing.assert_allclose([h["score"] for h in r.json()["hits"]], [h.score for h in want.hits], atol=1e-5)


# Every bad input tried, with the answer it gets (the README's table is this list). Bodies are sent as
# raw bytes: json.dumps would refuse to write a lone surrogate, a client sends it as the escape "\ud800".
BAD_EMBEDDINGS = [
    ("malformed JSON", b"{not json", 400, "not valid JSON"),
    ("empty list", {"input": []}, 400, "input must not be empty"),
    ("empty text", {"input": ""}, 400, "input[0] is empty"),
    ("whitespace text", {"input": ["ok", " \n\t"]}, 400, "input[1] is empty"),
    (
        "lone high surrogate",
        b'{"input": ["fine", "\\ud800 x"]}',
        400,
        "input[1] is not valid Unicode text: a lone surrogate U+D800",
    ),
    ("lone low surrogate", b'{"input": "\\udfff"}', 400, "input[0] is not valid Unicode text: a lone surrogate U+DFFF"),
    ("reversed surrogate pair", b'{"input": ["a", "b", "\\udc00\\ud800"]}', 400, "input[2] is not valid Unicode text"),
    ("too many inputs", {"input": ["a"] * 9}, 413, "too many inputs: 9 > 8"),
    ("10k inputs", {"input": ["a"] * 10_000}, 413, "request body over the limit of 4000 bytes"),
    ("text over the character limit", {"input": "x" * 300}, 413, "input[0] has 300 characters, over the limit of 200"),
    ("1 MB text", {"input": "x" * 1_000_000}, 413, "request body over the limit of 4000 bytes"),
    ("numbers instead of texts", {"input": [1, 2]}, 422, "invalid request: input"),
    ("input missing", {"model": "m"}, 422, "input: Field required"),
    ("input an object", {"input": {"a": 1}}, 422, "invalid request: input"),
    ("reasoning not a query mode", {"input": "a", "extra": {"reasoning": "maybe"}}, 422, "extra.reasoning"),
    ("mix_weight over 1", {"input": "a", "extra": {"reasoning": "mix", "mix_weight": 1.5}}, 422, "extra.mix_weight"),
    ("unknown encoding_format", {"input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
    ("dimensions 0", {"input": "a", "dimensions": 0}, 400, "dimensions must be between 1 and 32, got 0"),
    ("dimensions over the model's", {"input": "a", "dimensions": 33}, 400, "dimensions must be between 1 and 32, got 33"),
    ("dimensions not an integer", {"input": "a", "dimensions": "all"}, 422, "dimensions"),
    ("reasoning on a document", {"input": "a", "extra": {"reasoning": True, "input_type": "document"}}, 400, "queries only"),
    ("mix on a document", {"input": "a", "extra": {"reasoning": "mix", "input_type": "document"}}, 400, "queries only"),
    ("oversized body", {"input": ["word " * 150] * 8}, 413, "request body over the limit"),
    ("body a JSON list", [1, 2], 422, "invalid request"),
]


@pytest.mark.parametrize("body,status,msg", [c[1:] for c in BAD_EMBEDDINGS], ids=[c[0] for c in BAD_EMBEDDINGS])
def test_embeddings_bad_requests(server, body, status, msg):
    url = server[0]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = post(f"{url}/v1/embeddings", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert msg in r.json()["error"]["message"]
    assert "Traceback" not in r.text


def test_wrong_content_type_and_missing_length(server):
    url = server[0]
    r = post(f"{url}/v1/embeddings", content=b"input=hello", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "must be JSON" in r.json()["error"]["message"]
    r = post(f"{url}/v1/embeddings", content=b'{"input": "a"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "'text/plain'" in r.json()["error"]["message"]
    r = post(f"{url}/search", content=b'{"query": "a"}', headers={"content-type": ""})
    assert r.status_code == 415 and "no Content-Type" in r.json()["error"]["message"]

    def chunks():
        yield b'{"input": "a"}'

    r = post(f"{url}/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})  # chunked: no length
    assert r.status_code == 411 and "Content-Length" in r.json()["error"]["message"]


BAD_SEARCHES = [
    ("empty query", {"query": ""}, 400, "query is empty"),
    ("whitespace query", {"query": " "}, 400, "query is empty"),
    ("lone surrogate query", b'{"query": "\\ud83d"}', 400, "query is not valid Unicode text"),
    ("k 0", {"query": "a", "k": 0}, 400, "k must be between 1 and 100"),
    ("k too big", {"query": "a", "k": 101}, 400, "k must be between 1 and 100"),
    ("k a string", {"query": "a", "k": "ten"}, 422, "k: Input should be a valid integer"),
    ("reasoning not a query mode", {"query": "a", "reasoning": "all"}, 422, "reasoning"),
    ("mix_weight below 0", {"query": "a", "reasoning": "mix", "mix_weight": -0.1}, 422, "mix_weight"),
    ("query missing", {"k": 3}, 422, "query: Field required"),
    ("query a list", {"query": ["a"]}, 422, "query: Input should be a valid string"),
    ("query over the character limit", {"query": "y" * 201}, 413, "query has 201 characters"),
]


@pytest.mark.parametrize("body,status,msg", [c[1:] for c in BAD_SEARCHES], ids=[c[0] for c in BAD_SEARCHES])
def test_search_bad_requests(server, body, status, msg):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = post(f"{server[0]}/search", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status and msg in r.json()["error"]["message"], r.text


POISON = [
    b'{"input": ["\\ud800 x"]}',
    b'{"input": ["ok", "\\udfff"]}',
    b'{"input": "\\udc00\\ud800"}',
    b'{"input": ["a", "b", "c", "\\ud834"]}',
]


def test_poison_requests_fail_alone(server):
    """12 good requests and 4 tokenizer-breaking ones at once: every good one succeeds, every bad one is a 400 naming its input."""
    url, app, model, _ = server

    async def load():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            good = [client.post("/v1/embeddings", json={"input": TEXTS[i % 4]}) for i in range(12)]
            bad = [client.post("/v1/embeddings", content=b, headers={"content-type": "application/json"}) for b in POISON]
            together = good[:6] + bad + good[6:]  # interleaved, so they arrive within one batching window
            return await asyncio.gather(*together)

    for _ in range(3):
        responses = asyncio.run(load())
        good, bad = responses[:6] + responses[6 + len(POISON) :], responses[6 : 6 + len(POISON)]
        assert [r.status_code for r in good] == [200] * 12
        np.testing.assert_allclose(
            [r.json()["data"][0]["embedding"] for r in good], model.encode_document([TEXTS[i % 4] for i in range(12)]), atol=1e-5
        )
        assert [r.status_code for r in bad] == [400] * 4
        for r, where in zip(bad, ["input[0]", "input[1]", "input[0]", "input[3]"]):
            assert r.json()["error"]["message"].startswith(f"{where} is not valid Unicode text"), r.text


def test_batcher_isolates_a_failing_request(tiny):
    """Past the service's checks (here: straight into the batcher), a text the tokenizer refuses fails its own request only."""
    batcher = MicroBatcher(tiny, max_batch=64, max_wait_ms=200)
    try:
        futures = [
            batcher.submit([TEXTS[0]]),
            batcher.submit(["\ud800 x"]),
            batcher.submit([TEXTS[1], TEXTS[2]]),
            batcher.submit(["ok", "\udfff"]),
        ]
        with pytest.raises(TypeError):
            futures[1].result(timeout=60)
        with pytest.raises(TypeError):
            futures[3].result(timeout=60)
        got = np.concatenate([futures[0].result(timeout=60)[0], futures[2].result(timeout=60)[0]])
    finally:
        batcher.close()
    np.testing.assert_allclose(got, tiny.encode_document(TEXTS[:3]), atol=1e-5)


def test_dimensions_and_truncation_fields(server):
    url, _, model, _ = server
    r = post(f"{url}/v1/embeddings", json={"input": [TEXTS[0], TEXTS[1]], "dimensions": 8})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    full = model.encode_document(TEXTS[:2])
    want = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert got.shape == (2, 8)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert [d["truncated"] for d in r.json()["data"]] == [False, False] and r.json()["usage"]["truncated_inputs"] == 0
    # Room for 4 tokens of text after the prompt: the long text is cut, the short one is not.
    model.max_length = max(model.template("document").overhead, model.template("query").overhead) + 4
    try:
        long = "the heart pumps blood through the body " * 4
        assert model.truncated([long, "cat"]) == [True, False]
        r = post(f"{url}/v1/embeddings", json={"input": [long, "cat"]})
        assert [d["truncated"] for d in r.json()["data"]] == [True, False] and r.json()["usage"]["truncated_inputs"] == 1
        assert post(f"{url}/search", json={"query": long, "k": 1}).json()["truncated"] is True
    finally:
        model.max_length = 400


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


@pytest.mark.parametrize(
    "field,value", [("max_batch", 0), ("max_texts", -1), ("max_body_bytes", 0), ("max_wait_ms", float("nan")), ("max_k", 1.5)]
)
def test_service_config_is_checked(field, value):
    with pytest.raises(ValueError, match=field):
        ServiceConfig(**{field: value})


def test_serve_command_help(cli):
    out = cli("serve", "--help")
    assert out.code == 0 and "/v1/embeddings" in out.out and "--max-batch" in out.out
    cli("serve", "/nonexistent/idx").assert_bad_input("does not exist")
    for args, msg in [
        (["--max-batch", "0"], "--max-batch"),
        (["--port", "99999"], "--port"),
        (["--port", "0"], "--port"),
        (["--max-texts", "0"], "--max-texts"),
        (["--max-wait-ms", "-1"], "--max-wait-ms"),
        (["--max-wait-ms", "nan"], "--max-wait-ms"),
    ]:
        cli("serve", *args).assert_bad_input(msg)


# ---------------------------------------------------------------------------------------- the openai client
@pytest.fixture(scope="module")
def wide_server(tmp_path_factory):
    """A server over a tiny model 192 wide, so that dimensions=128 is a real shortening."""
    from searchr3 import SearchR3
    from tests.conftest import build_tiny_model

    model = SearchR3.from_pretrained(
        build_tiny_model(tmp_path_factory.mktemp("wide") / "m", hidden=192), bf16=False, max_length=400
    )
    app = create_app(model, config=ServiceConfig(max_wait_ms=5))
    with running_server(app) as url:
        yield url, model


def test_openai_client(wide_server):
    """The real `openai` client: its default (base64), encoding_format="float", and dimensions=128."""
    from openai import OpenAI

    from searchr3.service import shorten

    url, model = wide_server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    want = model.encode_document(TEXTS)
    got = client.embeddings.create(input=TEXTS, model="searchr3")  # the client asks for base64 and decodes it
    assert [d.index for d in got.data] == [0, 1, 2, 3] and got.model == "searchr3" and got.usage.prompt_tokens > 0
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), want, atol=1e-5)
    got = client.embeddings.create(input=TEXTS[0], model="searchr3", encoding_format="float")
    np.testing.assert_allclose(got.data[0].embedding, want[0], atol=1e-5)
    got = client.embeddings.create(input=TEXTS, model="searchr3", dimensions=128)
    short = np.array([d.embedding for d in got.data])
    assert short.shape == (4, 128)
    np.testing.assert_allclose(short, shorten(want, 128), atol=1e-5)
    np.testing.assert_allclose(short, want[:, :128] / np.linalg.norm(want[:, :128], axis=1, keepdims=True), atol=1e-5)
    got = client.embeddings.create(input=["paris"], model="searchr3", extra_body={"extra": {"input_type": "query"}})
    np.testing.assert_allclose(got.data[0].embedding, model.encode_query("paris"), atol=1e-5)
    import openai

    with pytest.raises(openai.BadRequestError, match="dimensions must be between 1 and 192"):
        client.embeddings.create(input="x", model="searchr3", dimensions=500)
