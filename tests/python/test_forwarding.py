"""The gateway forwards request bodies to the engine unchanged.

For every request we take the exact bytes the SDK put on the wire and compare them, as JSON, with
the engine's GET /debug/last-request. The one documented exception: for ``stream: true`` the
gateway sets ``stream_options.include_usage = true`` upstream (it needs usage for metering) and,
when the client did not ask for usage, drops the usage-only final chunk again.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import openai
import pytest

import helpers
from helpers import PERSON_SCHEMA, TOOLS, engine_last_request, user

pytestmark = pytest.mark.clear_path

UNKNOWN_FIELDS = {"my_unknown_param": {"x": [1, 2]}, "test_engine": {"completion_tokens": 4}}

CHAT_CASES: dict[str, dict[str, Any]] = {
    "sampling": dict(
        messages=user(),
        n=2,
        logprobs=True,
        top_logprobs=3,
        stop=["zzz", "\n\n"],
        seed=123,
        max_tokens=20,
        temperature=0.7,
        top_p=0.9,
        user="end-user-1234",
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        logit_bias={"50256": -100},
        extra_body=UNKNOWN_FIELDS,
    ),
    "tools": dict(
        messages=[
            {"role": "system", "content": "You call tools."},
            {"role": "user", "content": [{"type": "text", "text": "What time is it"}, {"type": "text", "text": "in Tokyo?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_abc", "type": "function", "function": {"name": "get_time", "arguments": "{\"timezone\":\"UTC\"}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_abc", "content": "12:00"},
            {"role": "user", "content": "And in Tokyo?"},
        ],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        max_completion_tokens=50,
        extra_body=UNKNOWN_FIELDS,
    ),
    "tool_choice_required": dict(messages=user(), tools=TOOLS, tool_choice="required", parallel_tool_calls=True),
    "json_object": dict(messages=user(), response_format={"type": "json_object"}, seed=0, temperature=0),
    "json_schema": dict(
        messages=user(),
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True}},
        extra_body=UNKNOWN_FIELDS,
    ),
    "stop_string": dict(messages=user(), stop="zzz", max_tokens=5),
}


def _sent_json(raw: Any) -> dict[str, Any]:
    """The JSON body the SDK actually sent for a with_raw_response call."""
    return json.loads(raw.http_request.content)


def _assert_forwarded(engine: httpx.Client, expected: dict[str, Any]) -> None:
    received = engine_last_request(engine)
    assert received == expected, (
        "the engine did not receive the request unchanged\n"
        f"sent:     {json.dumps(expected, sort_keys=True)}\n"
        f"received: {json.dumps(received, sort_keys=True)}"
    )


# The generation cap the gateway holds for, and sends, when a request sets none
# (gateway.default_max_tokens; text completions default to 16, as OpenAI's do).
DEFAULT_CHAT_CAP = 4096


def _upstream_body(sent: dict[str, Any]) -> dict[str, Any]:
    """What the engine must receive for `sent`: the same, except that through the gateway a
    chat request without a cap gets the one its hold covers."""
    expected = copy.deepcopy(sent)
    if helpers.GATEWAY and "max_tokens" not in sent and "max_completion_tokens" not in sent:
        expected["max_tokens"] = DEFAULT_CHAT_CAP
    return expected


def _upstream_stream_body(sent: dict[str, Any]) -> dict[str, Any]:
    expected = _upstream_body(sent)
    if helpers.GATEWAY:
        expected.setdefault("stream_options", {})
        expected["stream_options"]["include_usage"] = True
    return expected


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_chat_body_is_forwarded_unchanged(client: openai.OpenAI, model: str, engine: httpx.Client, case: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, **CHAT_CASES[case])
    assert raw.status_code == 200
    raw.parse()
    sent = _sent_json(raw)
    assert sent["model"] == model
    _assert_forwarded(engine, _upstream_body(sent))


@pytest.mark.parametrize(
    "stream_options",
    [None, {"include_usage": False}, {"include_usage": True}],
    ids=["no_stream_options", "include_usage_false", "include_usage_true"],
)
def test_chat_stream_body_is_forwarded(client: openai.OpenAI, model: str, engine: httpx.Client, stream_options) -> None:
    kwargs: dict[str, Any] = dict(CHAT_CASES["sampling"], stream=True)
    if stream_options is not None:
        kwargs["stream_options"] = stream_options
    raw = client.chat.completions.with_raw_response.create(model=model, **kwargs)
    assert raw.status_code == 200
    with raw.parse() as stream:
        chunks = list(stream)
    _assert_forwarded(engine, _upstream_stream_body(_sent_json(raw)))

    wants_usage = bool(stream_options and stream_options.get("include_usage"))
    usage_chunks = [c for c in chunks if c.usage is not None]
    if wants_usage:
        assert usage_chunks == [chunks[-1]] and chunks[-1].choices == []
    else:
        assert usage_chunks == [], "the usage chunk the gateway asked for must not reach the client"
        assert all(c.choices for c in chunks)


def test_completions_body_is_forwarded(client: openai.OpenAI, model: str, engine: httpx.Client) -> None:
    raw = client.completions.with_raw_response.create(
        model=model,
        prompt=["first prompt", "second prompt"],
        max_tokens=7,
        temperature=0.3,
        top_p=0.5,
        seed=99,
        stop=["zzz"],
        logprobs=2,
        echo=False,
        user="end-user-1",
        presence_penalty=0.1,
        extra_body=UNKNOWN_FIELDS,
    )
    assert raw.status_code == 200
    raw.parse()
    _assert_forwarded(engine, _sent_json(raw))


def test_completions_stream_body_is_forwarded(client: openai.OpenAI, model: str, engine: httpx.Client) -> None:
    raw = client.completions.with_raw_response.create(model=model, prompt="stream me", max_tokens=3, stream=True)
    with raw.parse() as stream:
        chunks = list(stream)
    assert all(c.usage is None and c.choices for c in chunks)
    _assert_forwarded(engine, _upstream_stream_body(_sent_json(raw)))


def test_embeddings_body_is_forwarded(client: openai.OpenAI, model: str, engine: httpx.Client) -> None:
    raw = client.embeddings.with_raw_response.create(
        model=model,
        input=["one", "two three"],
        dimensions=8,
        encoding_format="float",
        user="end-user-2",
        extra_body={"my_unknown_param": {"x": [1, 2]}},
    )
    assert raw.status_code == 200
    raw.parse()
    _assert_forwarded(engine, _sent_json(raw))


def test_raw_body_with_odd_values_is_forwarded(http: httpx.Client, engine: httpx.Client, model: str) -> None:
    """Things an SDK would not send but a gateway must not normalise: unicode, big ints, nulls, nesting."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "héllo 世界 \u2028 \"quoted\" \\ backslash", "name": "x"}],
        "seed": 9007199254740993,
        "temperature": 1.0,
        "top_p": 0.1,
        "max_tokens": 3,
        "metadata": {"k": "v"},
        "store": False,
        "logprobs": False,
        "my_unknown_param": {"nested": [None, True, 1.5e-7, {"deep": []}]},
    }
    r = http.post("chat/completions", json=body)
    assert r.status_code == 200, r.text[:500]
    _assert_forwarded(engine, body)
