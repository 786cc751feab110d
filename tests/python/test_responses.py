"""The Responses API through the official SDK (`client.responses.create`, `.stream`, `.parse`)
and on the wire: every Response object and every stream event validates against OpenAI's
OpenAPI document, events carry gapless `sequence_number`s, stored responses chain through
`previous_response_id` (gateway only), and what is not served (built-in tools, background)
is refused with a clear error.

The worker translates /v1/responses to the engine's chat completions inside the TEE, so the
same tests run against the gateway and through `cocoon client-proxy` (sealed end to end; the
proxy validates the body with the gateway's own rules, refuses `store`/`previous_response_id`
and answers the stored-response routes itself: nothing sealed end to end is stored)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

import helpers
from helpers import MODEL
from openai_schema import validate

WEATHER = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]


def parse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """A Responses stream as OpenAI frames it: `event: <type>` then `data: <json>` per event,
    no `[DONE]`; SSE comments (Cocoon's receipt) allowed."""
    text = body.decode("utf-8")
    assert "[DONE]" not in text
    out = []
    for block in text.split("\n\n"):
        if not block or block.startswith(":"):
            continue
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block[:200]
        kind, data = lines[0][len("event: "):], json.loads(lines[1][len("data: "):])
        assert data["type"] == kind
        out.append((kind, data))
    return out


def test_create_returns_a_valid_response(client: openai.OpenAI, http: httpx.Client) -> None:
    r = client.responses.create(model=MODEL, input="Say hello", instructions="Be brief.", max_output_tokens=64)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed"
    assert r.output_text
    assert r.usage is not None and r.usage.output_tokens == len(r.output_text.split())
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    raw = http.post("responses", json={"model": MODEL, "input": [{"role": "user", "content": "hi"}], "temperature": 0.5})
    assert raw.status_code == 200, raw.text
    validate("Response", raw.json())


def test_stream_events_are_openais(client: openai.OpenAI, http: httpx.Client) -> None:
    with client.responses.stream(model=MODEL, input="Tell me a story", max_output_tokens=64) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert final.status == "completed" and final.output_text

    raw = http.post("responses", json={"model": MODEL, "input": "Tell me a story", "stream": True, "max_output_tokens": 64})
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    events = parse_events(raw.content)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    deltas = "".join(d["delta"] for k, d in events if k == "response.output_text.delta")
    assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == deltas
    for _, data in events:
        validate("ResponseStreamEvent", data)


def test_function_tool_call_and_its_output(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Weather in Paris?", tools=WEATHER, tool_choice="required")
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    follow = client.responses.create(
        model=MODEL,
        tools=WEATHER,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'},
        ],
    )
    assert follow.output[0].type == "message" and follow.output_text

    with client.responses.stream(model=MODEL, input="Weather?", tools=WEATHER, tool_choice="required") as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    assert final.output[0].type == "function_call" and final.output[0].arguments == deltas


class Person(BaseModel):
    name: str
    age: int


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    r = client.responses.parse(model=MODEL, input="A person", text_format=Person)
    assert isinstance(r.output_parsed, Person)


def test_what_is_not_served_is_refused(client: openai.OpenAI) -> None:
    if helpers.E2E_PROXY:
        # Sealed end to end: nothing is stored, and the proxy refuses stateful fields.
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model=MODEL, input="hi", previous_response_id="resp_123")
        assert e.value.body["param"] == "previous_response_id"
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model=MODEL, input="hi", store=True)
        assert e.value.body["param"] == "store"
    else:
        with pytest.raises(openai.NotFoundError) as e:
            client.responses.create(model=MODEL, input="hi", previous_response_id="resp_123")
        assert "store: true" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert e.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="hi", background=True)
    assert e.value.body["param"] == "background"
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve("resp_123")
    assert e.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete("resp_123")


@pytest.mark.gateway
def test_stored_responses_chain_retrieve_and_delete(client: openai.OpenAI) -> None:
    """store=True keeps a response for its account; previous_response_id continues it;
    retrieve, input_items.list and delete work through the official SDK."""
    first = client.responses.create(model=MODEL, input="My name is Ada.", store=True)
    assert first.store is True
    assert client.responses.retrieve(first.id).id == first.id
    alone = client.responses.create(model=MODEL, input="What is my name?")
    assert alone.store is False
    with client.responses.stream(model=MODEL, input="What is my name?", previous_response_id=first.id, store=True) as stream:
        second = stream.get_final_response()
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > alone.usage.input_tokens
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["message", "message", "message"]
    third = client.responses.create(model=MODEL, input="And again?", previous_response_id=second.id)
    assert third.usage.input_tokens > second.usage.input_tokens
    deleted = client.responses.delete(first.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
