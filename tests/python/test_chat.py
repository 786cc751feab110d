"""Chat completions through the OpenAI Python SDK: plain, streamed, n>1, logprobs, tools,
structured outputs, stop and length limits."""

from __future__ import annotations

import json
from typing import Literal, Optional

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from helpers import PERSON_SCHEMA, PROMPT_TOKENS, TOOL_PARAMS, TOOLS, assemble_chat, user

def _words(text: str) -> int:
    return len(text.split())


def _check_usage(usage, *, prompt_tokens: int | None = PROMPT_TOKENS) -> None:
    assert usage is not None
    if prompt_tokens is not None:
        assert usage.prompt_tokens == prompt_tokens
    assert usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# --------------------------------------------------------------------------- plain


def test_chat_non_stream(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=user(), seed=1)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == model
    assert isinstance(r.created, int) and r.created > 0
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    _check_usage(r.usage)
    assert r.usage.completion_tokens == _words(choice.message.content)


def test_chat_is_deterministic_for_a_seed(client: openai.OpenAI, model: str) -> None:
    a = client.chat.completions.create(model=model, messages=user(), seed=42)
    b = client.chat.completions.create(model=model, messages=user(), seed=42)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens == b.usage.completion_tokens


def test_chat_array_content_and_system_message(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are terse"},
            {"role": "user", "content": [{"type": "text", "text": "two words"}, {"type": "text", "text": "three more words"}]},
        ],
    )
    # 3 + (2 + 3) words, plus 3 per message.
    assert r.usage.prompt_tokens == 3 + 5 + 2 * 3
    assert r.choices[0].message.content


# --------------------------------------------------------------------------- streaming


def test_chat_stream_with_usage_matches_non_stream(client: openai.OpenAI, model: str) -> None:
    plain = client.chat.completions.create(model=model, messages=user(), seed=7)
    with client.chat.completions.create(
        model=model, messages=user(), seed=7, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)

    assert len(chunks) >= 3, "expected a role chunk, content chunks, a finish chunk and a usage chunk"
    assert {c.id for c in chunks} == {chunks[0].id}, "every chunk must carry the same id"
    for c in chunks:
        assert c.object == "chat.completion.chunk"
        assert c.model == model

    *body, last = chunks
    assert last.choices == [], "the usage chunk must have no choices"
    assert last.usage is not None
    for c in body:
        assert c.usage is None, "only the last chunk carries usage"
        assert len(c.choices) == 1

    assert body[0].choices[0].delta.role == "assistant"
    assembled = assemble_chat(body)[0]
    assert assembled.text == plain.choices[0].message.content
    assert assembled.finish_reason == plain.choices[0].finish_reason
    assert body[-1].choices[0].finish_reason is not None, "finish_reason comes on the last choice chunk"

    assert last.usage.prompt_tokens == plain.usage.prompt_tokens
    assert last.usage.completion_tokens == plain.usage.completion_tokens
    assert last.usage.total_tokens == plain.usage.total_tokens


@pytest.mark.parametrize("stream_options", [None, {"include_usage": False}], ids=["absent", "include_usage_false"])
def test_chat_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI, model: str, stream_options) -> None:
    kwargs = {} if stream_options is None else {"stream_options": stream_options}
    with client.chat.completions.create(model=model, messages=user(), seed=7, stream=True, **kwargs) as stream:
        chunks = list(stream)
    assert chunks
    for c in chunks:
        assert c.usage is None, f"no usage expected when the client did not ask for it: {c}"
        assert len(c.choices) == 1, f"no usage-only (empty choices) chunk expected: {c}"
    assembled = assemble_chat(chunks)
    assert list(assembled) == [0]
    assert assembled[0].text
    assert assembled[0].finish_reason in ("stop", "length")


# --------------------------------------------------------------------------- n > 1


def test_chat_n2_non_stream(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=user(), n=2, seed=3)
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert c.message.content
        assert c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens == sum(_words(c.message.content) for c in r.choices)


def test_chat_n2_stream(client: openai.OpenAI, model: str) -> None:
    plain = client.chat.completions.create(model=model, messages=user(), n=2, seed=3)
    with client.chat.completions.create(
        model=model, messages=user(), n=2, seed=3, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    assembled = assemble_chat(chunks)
    assert sorted(assembled) == [0, 1]
    for i in (0, 1):
        assert assembled[i].role == "assistant"
        assert assembled[i].text == plain.choices[i].message.content
        assert assembled[i].finish_reason == plain.choices[i].finish_reason
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


# --------------------------------------------------------------------------- logprobs


def _check_token_logprobs(entries, *, top: int) -> None:
    assert entries, "expected logprobs for every token"
    for e in entries:
        assert isinstance(e.token, str)
        assert e.logprob <= 0
        assert e.bytes == list(e.token.encode("utf-8"))
        assert len(e.top_logprobs) == top
        for t in e.top_logprobs:
            assert t.logprob <= 0
            assert t.bytes == list(t.token.encode("utf-8"))


def test_chat_logprobs(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=user(), logprobs=True, top_logprobs=3, seed=5)
    choice = r.choices[0]
    assert choice.logprobs is not None
    assert choice.logprobs.refusal is None
    _check_token_logprobs(choice.logprobs.content, top=3)
    assert "".join(e.token for e in choice.logprobs.content) == choice.message.content
    assert len(choice.logprobs.content) == r.usage.completion_tokens


def test_chat_logprobs_stream(client: openai.OpenAI, model: str) -> None:
    with client.chat.completions.create(
        model=model, messages=user(), logprobs=True, top_logprobs=3, seed=5, stream=True
    ) as stream:
        assembled = assemble_chat(stream)[0]
    assert assembled.text
    assert "".join(e.token for e in assembled.logprobs) == assembled.text
    _check_token_logprobs(assembled.logprobs, top=3)


# --------------------------------------------------------------------------- tools


def _check_tool_arguments(name: str, arguments: str) -> None:
    args = json.loads(arguments)
    assert isinstance(args, dict)
    jsonschema.validate(args, TOOL_PARAMS[name])


def test_chat_tools_required(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model, messages=user("What is the weather in Paris?"), tools=TOOLS, tool_choice="required"
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name in TOOL_PARAMS
    _check_tool_arguments(call.function.name, call.function.arguments)


def test_chat_tools_named_choice(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model,
        messages=user("Anything"),
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_time"
    _check_tool_arguments("get_time", call.function.arguments)
    assert r.choices[0].finish_reason == "tool_calls"


def test_chat_tools_none_gives_text(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=user("call get_weather"), tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")


def test_chat_tools_required_stream(client: openai.OpenAI, model: str) -> None:
    with client.chat.completions.create(
        model=model,
        messages=user("What is the weather in Paris?"),
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        stream=True,
    ) as stream:
        chunks = list(stream)
    assembled = assemble_chat(chunks)[0]
    assert assembled.finish_reason == "tool_calls"
    assert assembled.text == ""
    assert list(assembled.tool_calls) == [0]
    call = assembled.tool_calls[0]
    assert call["type"] == "function"
    assert call["id"] and call["id"].startswith("call_")
    assert call["name"] in TOOL_PARAMS
    _check_tool_arguments(call["name"], call["arguments"])


# --------------------------------------------------------------------------- structured outputs


def test_chat_response_format_json_object(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model, messages=user("Reply in JSON"), response_format={"type": "json_object"}
    )
    content = json.loads(r.choices[0].message.content)
    assert isinstance(content, dict)
    assert isinstance(content.get("answer"), str) and content["answer"]


def test_chat_response_format_json_schema(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model,
        messages=user("Describe a person"),
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True}},
    )
    content = json.loads(r.choices[0].message.content)
    jsonschema.validate(content, PERSON_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert r.choices[0].finish_reason == "stop"


class Address(BaseModel):
    street: str
    city: str
    zip_code: str


class Pet(BaseModel):
    name: str
    species: Literal["cat", "dog", "parrot"]
    age: int = Field(ge=0, le=30)


class Person(BaseModel):
    name: str
    nickname: Optional[str]
    age: int = Field(ge=18, le=99)
    height_m: float
    employed: bool
    address: Address
    pets: list[Pet]
    tags: list[str]


def test_chat_parse_pydantic(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.parse(model=model, messages=user("Describe a person"), response_format=Person)
    message = r.choices[0].message
    assert message.refusal is None
    parsed = message.parsed
    assert isinstance(parsed, Person)
    assert isinstance(parsed.address, Address)
    assert isinstance(parsed.pets, list) and parsed.pets
    assert all(isinstance(p, Pet) for p in parsed.pets)
    assert 18 <= parsed.age <= 99
    assert parsed.nickname is None or isinstance(parsed.nickname, str)
    # The same JSON, validated independently of the SDK.
    Person.model_validate_json(message.content)


# --------------------------------------------------------------------------- stop / length


def test_chat_stop(client: openai.OpenAI, model: str) -> None:
    full = client.chat.completions.create(model=model, messages=user(), seed=11, max_tokens=12).choices[0].message.content
    words = full.split(" ")
    assert len(words) >= 4, full
    stop = " " + words[3]
    r = client.chat.completions.create(model=model, messages=user(), seed=11, max_tokens=12, stop=[stop, "zzz-never"])
    text = r.choices[0].message.content
    assert stop not in text
    assert full.startswith(text), f"{text!r} must be a prefix of {full!r}"
    assert len(text) < len(full)
    assert r.choices[0].finish_reason == "stop"


def test_chat_max_tokens_gives_length(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=user(), max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    assert _words(r.choices[0].message.content) == 3


def test_chat_max_completion_tokens_gives_length(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=user(), max_completion_tokens=2)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 2


def test_chat_test_engine_override_via_extra_body(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model, messages=user(), extra_body={"test_engine": {"completion_tokens": 5}}
    )
    assert r.usage.completion_tokens == 5
    assert r.choices[0].finish_reason == "stop"
