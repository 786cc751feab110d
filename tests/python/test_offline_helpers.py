"""Offline checks of the test helpers themselves (no server needed): the OpenAPI -> JSON Schema
conversion, validation against hand-written objects, and the strict SSE parser."""

from __future__ import annotations

import copy

import pytest

from helpers import assemble_chat, parse_sse
from openai_schema import SchemaError, component_names, convert, validate

pytestmark = pytest.mark.offline

CHAT = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "cocoon-test",
    "system_fingerprint": "fp_cocoon_test",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "alpha beta", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "total_tokens": 11,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}

CHUNK = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "cocoon-test",
    "system_fingerprint": "fp_cocoon_test",
    "choices": [{"index": 0, "delta": {"content": " beta"}, "logprobs": None, "finish_reason": None}],
    "usage": None,
}


# --------------------------------------------------------------------------- conversion


def test_convert_nullable_with_type() -> None:
    assert convert({"type": "string", "nullable": True}) == {"type": ["string", "null"]}


def test_convert_nullable_enum_accepts_null() -> None:
    out = convert({"type": "string", "enum": ["a", "b"], "nullable": True})
    assert out == {"type": ["string", "null"], "enum": ["a", "b", None]}


def test_convert_nullable_ref_is_wrapped() -> None:
    out = convert({"$ref": "#/components/schemas/X", "nullable": True, "description": "d"})
    assert out == {"anyOf": [{"$ref": "#/components/schemas/X", "description": "d"}, {"type": "null"}]}


def test_convert_is_recursive_and_leaves_the_rest_alone() -> None:
    src = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer", "nullable": True}}},
           "nullable": False, "x-oaiMeta": {"nullable": "not a schema keyword here"}}
    out = convert(src)
    assert out["properties"]["a"]["items"] == {"type": ["integer", "null"]}
    assert "nullable" not in out
    assert src["properties"]["a"]["items"]["nullable"] is True, "input must not be modified"


def test_no_nullable_left_in_components() -> None:
    from openai_schema import _registry

    def walk(node):
        if isinstance(node, dict):
            assert node.get("nullable") is not True
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(_registry()[1])
    assert {"ErrorResponse", "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
            "CreateCompletionResponse", "ListModelsResponse", "CreateEmbeddingResponse"} <= set(component_names())


# --------------------------------------------------------------------------- validation


def test_valid_samples_pass() -> None:
    validate("CreateChatCompletionResponse", CHAT)
    validate("CreateChatCompletionStreamResponse", CHUNK)
    validate("CreateChatCompletionStreamResponse", {**CHUNK, "choices": [], "usage": CHAT["usage"]})
    validate("ErrorResponse", {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}})
    validate("ListModelsResponse", {"object": "list", "data": [
        {"id": "cocoon-test", "object": "model", "created": 0, "owned_by": "cocoon-test-engine"}]})
    validate("CreateEmbeddingResponse", {"object": "list", "model": "m", "data": [
        {"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}], "usage": {"prompt_tokens": 1, "total_tokens": 1}})


def test_nullable_finish_reason_in_stream_chunk() -> None:
    """finish_reason is declared with OpenAPI 3.0 `nullable: true` + enum: null must pass, junk must not."""
    validate("CreateChatCompletionStreamResponse", CHUNK)
    bad = copy.deepcopy(CHUNK)
    bad["choices"][0]["finish_reason"] = "exploded"
    with pytest.raises(SchemaError, match=r"\$\.choices\[0\]\.finish_reason"):
        validate("CreateChatCompletionStreamResponse", bad)


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d["choices"][0].pop("finish_reason"), r"'finish_reason' is a required property"),
    (lambda d: d["choices"][0]["message"].update(content=42), r"\$\.choices\[0\]\.message\.content"),
    (lambda d: d.update(object="chat.completion.chunk"), r"\$\.object"),
    (lambda d: d["usage"].update(total_tokens="11"), r"\$\.usage\.total_tokens"),
])
def test_invalid_samples_fail_with_a_readable_path(mutate, where: str) -> None:
    bad = copy.deepcopy(CHAT)
    mutate(bad)
    with pytest.raises(SchemaError, match=where) as info:
        validate("CreateChatCompletionResponse", bad)
    assert "CreateChatCompletionResponse" in str(info.value)


def test_error_response_needs_all_four_keys() -> None:
    with pytest.raises(SchemaError, match="'code' is a required property"):
        validate("ErrorResponse", {"error": {"message": "m", "type": "t", "param": None}})


def test_unknown_component() -> None:
    with pytest.raises(KeyError):
        validate("NoSuchComponent", {})


# --------------------------------------------------------------------------- SSE parsing


def test_parse_sse_ok() -> None:
    body = b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    assert parse_sse(body) == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize("body", [
    b'data: {"a": 1}\n\n',                              # no [DONE]
    b'data: {"a": 1}\ndata: [DONE]\n\n',                # single newline between events
    b'event: x\ndata: {"a": 1}\n\ndata: [DONE]\n\n',    # extra field line
    b'data: {"a": 1}\r\n\r\ndata: [DONE]\n\n',          # CRLF framing
    b'data: not json\n\ndata: [DONE]\n\n',
    b'data: [DONE]\n\ndata: [DONE]\n\n',
])
def test_parse_sse_rejects_bad_framing(body: bytes) -> None:
    with pytest.raises(AssertionError):
        parse_sse(body)


def test_assemble_chat_from_dicts() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 1, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]},
        {"choices": [{"index": 1, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                               "function": {"name": "f", "arguments": ""}}]},
                      "finish_reason": None}]},
        {"choices": [{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
                      "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": " b"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [{"index": 1, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"total_tokens": 1}},
    ]
    out = assemble_chat(chunks)
    assert out[0].text == "a b" and out[0].finish_reason == "stop" and out[0].role == "assistant"
    assert out[1].tool_calls == {0: {"id": "call_1", "type": "function", "name": "f", "arguments": "{}"}}
    assert out[1].finish_reason == "tool_calls"
