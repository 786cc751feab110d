"""Wire format, checked without the SDK: every response body and every SSE chunk must validate
against the matching component of OpenAI's own OpenAPI document."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

import helpers
from helpers import MODEL, PERSON_SCHEMA, TOOLS, UNKNOWN_MODEL, parse_sse, user
from openai_schema import validate

CHAT_CASES = {
    "plain": {},
    "n2": {"n": 2, "seed": 4},
    "logprobs": {"logprobs": True, "top_logprobs": 3},
    "tools": {"tools": TOOLS, "tool_choice": "required"},
    "tools_auto_by_name": {"tools": TOOLS, "messages": user("please call get_time now")},
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True}}
    },
    "length": {"max_tokens": 2},
    "stop": {"stop": "e"},
}


def _post_json(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    if helpers.GATEWAY:
        assert r.headers.get("x-request-id")
    return r.json()


def _post_stream(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/event-stream")
    if helpers.GATEWAY:
        assert r.headers.get("x-request-id")
    return parse_sse(r.content)


# --------------------------------------------------------------------------- chat


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_chat_response_schema(http: httpx.Client, case: str) -> None:
    body = {"model": MODEL, "messages": user(), **CHAT_CASES[case]}
    data = _post_json(http, "chat/completions", body)
    validate("CreateChatCompletionResponse", data)
    assert data["object"] == "chat.completion"
    assert len(data["choices"]) == body.get("n", 1)
    if "tools" in body:
        assert data["choices"][0]["finish_reason"] == "tool_calls"
        assert data["choices"][0]["message"]["tool_calls"]


@pytest.mark.parametrize("include_usage", [False, True], ids=["no_usage", "include_usage"])
@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_chat_stream_chunk_schema(http: httpx.Client, case: str, include_usage: bool) -> None:
    body = {"model": MODEL, "messages": user(), "stream": True, **CHAT_CASES[case]}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    chunks = _post_stream(http, "chat/completions", body)
    assert chunks
    for i, chunk in enumerate(chunks):
        try:
            validate("CreateChatCompletionStreamResponse", chunk)
        except AssertionError as exc:
            raise AssertionError(f"chunk #{i}: {chunk}\n{exc}") from None
        assert chunk["object"] == "chat.completion.chunk"
    assert len({c["id"] for c in chunks}) == 1, "all chunks share one id"

    usage_chunks = [c for c in chunks if c.get("usage") is not None]
    if include_usage:
        assert usage_chunks == [chunks[-1]], "exactly one usage chunk, the last one"
        assert chunks[-1]["choices"] == []
        assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    else:
        assert usage_chunks == []
        assert all(c["choices"] for c in chunks), "no usage-only chunk when include_usage is not set"

    finishes = [ch for c in chunks for ch in c["choices"] if ch["finish_reason"] is not None]
    assert sorted(ch["index"] for ch in finishes) == list(range(body.get("n", 1))), "one finish_reason per choice"


# --------------------------------------------------------------------------- completions


def _validate_completion_chunk(chunk: dict[str, Any]) -> None:
    """OpenAI says streamed completions share CreateCompletionResponse's shape, but its stream sends
    ``finish_reason: null`` until the end and, with include_usage, ``usage: null`` on every chunk but
    the last, neither of which that schema allows. Accept exactly those two nulls, nothing else."""
    relaxed = copy.deepcopy(chunk)
    for choice in relaxed.get("choices", []):
        if "finish_reason" in choice and choice["finish_reason"] is None:
            choice["finish_reason"] = "stop"
    if "usage" in relaxed and relaxed["usage"] is None:
        del relaxed["usage"]
    validate("CreateCompletionResponse", relaxed)


@pytest.mark.parametrize("extra", [{}, {"logprobs": 2}, {"max_tokens": 2}, {"n": 2}], ids=["plain", "logprobs", "length", "n2"])
def test_completion_response_schema(http: httpx.Client, extra: dict[str, Any]) -> None:
    data = _post_json(http, "completions", {"model": MODEL, "prompt": "Once upon a time", **extra})
    validate("CreateCompletionResponse", data)
    assert data["object"] == "text_completion"
    assert [c["index"] for c in data["choices"]] == list(range(extra.get("n", 1)))


@pytest.mark.parametrize("include_usage", [False, True], ids=["no_usage", "include_usage"])
@pytest.mark.parametrize("extra", [{}, {"logprobs": 2}, {"n": 2}], ids=["plain", "logprobs", "n2"])
def test_completion_stream_chunk_schema(http: httpx.Client, extra: dict[str, Any], include_usage: bool) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "stream": True, **extra}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    chunks = _post_stream(http, "completions", body)
    assert chunks
    for chunk in chunks:
        _validate_completion_chunk(chunk)
        assert chunk["object"] == "text_completion"
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    else:
        assert all(c["choices"] and c.get("usage") is None for c in chunks)


# --------------------------------------------------------------------------- models, embeddings, errors


def test_list_models_schema(http: httpx.Client) -> None:
    r = http.get("models")
    assert r.status_code == 200
    data = r.json()
    validate("ListModelsResponse", data)
    assert MODEL in [m["id"] for m in data["data"]]


@pytest.mark.gateway
def test_retrieve_model_schema(http: httpx.Client) -> None:
    r = http.get(f"models/{MODEL}")
    assert r.status_code == 200
    validate("Model", r.json())


@pytest.mark.parametrize("input_", ["one text", ["a", "b c"], [1, 2, 3], [[1, 2], [3]]], ids=["str", "list", "tokens", "token_lists"])
def test_embedding_response_schema(http: httpx.Client, input_: Any) -> None:
    data = _post_json(http, "embeddings", {"model": MODEL, "input": input_, "encoding_format": "float"})
    validate("CreateEmbeddingResponse", data)
    expected = 1 if isinstance(input_, str) or isinstance(input_[0], int) else len(input_)
    assert [d["index"] for d in data["data"]] == list(range(expected))


def test_embedding_base64_wire_format(http: httpx.Client) -> None:
    data = _post_json(http, "embeddings", {"model": MODEL, "input": "x", "encoding_format": "base64"})
    # OpenAI's schema types `embedding` as an array; on the wire base64 is a string.
    assert isinstance(data["data"][0]["embedding"], str)
    data["data"][0]["embedding"] = [0.0]
    validate("CreateEmbeddingResponse", data)


@pytest.mark.parametrize("path, body", [
    ("chat/completions", {"model": UNKNOWN_MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("completions", {"model": UNKNOWN_MODEL, "prompt": "hi"}),
    ("embeddings", {"model": UNKNOWN_MODEL, "input": "hi"}),
], ids=["chat", "completions", "embeddings"])
def test_error_response_schema(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    r = http.post(path, json=body)
    assert r.status_code == 404
    validate("ErrorResponse", r.json())
    assert r.json()["error"]["code"] == "model_not_found"
