"""Legacy /v1/completions and /v1/embeddings through the OpenAI Python SDK."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

PROMPT = "Once upon a time in a test"  # 7 words


# --------------------------------------------------------------------------- completions


def test_completions_non_stream(client: openai.OpenAI, model: str) -> None:
    r = client.completions.create(model=model, prompt=PROMPT, seed=9, max_tokens=10)
    assert r.object == "text_completion"
    assert r.model == model
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert isinstance(choice.text, str) and choice.text
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == 7
    assert r.usage.completion_tokens == len(choice.text.split())
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completions_stream_matches_non_stream(client: openai.OpenAI, model: str) -> None:
    plain = client.completions.create(model=model, prompt=PROMPT, seed=9, max_tokens=10)
    with client.completions.create(model=model, prompt=PROMPT, seed=9, max_tokens=10, stream=True) as stream:
        chunks = list(stream)
    assert chunks
    text = ""
    finish = []
    for c in chunks:
        assert c.object == "text_completion"
        for ch in c.choices:
            assert ch.index == 0
            text += ch.text
            if ch.finish_reason:
                finish.append(ch.finish_reason)
    assert text == plain.choices[0].text
    assert finish == [plain.choices[0].finish_reason]


def test_completions_stream_with_usage(client: openai.OpenAI, model: str) -> None:
    with client.completions.create(
        model=model, prompt=PROMPT, max_tokens=4, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    *body, last = chunks
    assert last.choices == []
    assert last.usage.prompt_tokens == 7
    assert last.usage.completion_tokens == 4
    assert all(c.usage is None for c in body)


def test_completions_max_tokens_and_logprobs(client: openai.OpenAI, model: str) -> None:
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=3, logprobs=2)
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    lp = choice.logprobs
    assert lp is not None
    assert len(lp.tokens) == 3
    assert "".join(lp.tokens) == choice.text
    assert all(v <= 0 for v in lp.token_logprobs)
    assert len(lp.top_logprobs) == 3
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_completions_prompt_list(client: openai.OpenAI, model: str) -> None:
    r = client.completions.create(model=model, prompt=["one two", "three"], max_tokens=2)
    assert r.usage.prompt_tokens == 3
    assert r.choices and r.choices[0].text


# --------------------------------------------------------------------------- embeddings


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_embeddings_float(client: openai.OpenAI, model: str) -> None:
    r = client.embeddings.create(model=model, input=["hello world", "second input here"], encoding_format="float")
    assert r.object == "list"
    assert r.model == model
    assert [d.index for d in r.data] == [0, 1]
    dims = {len(d.embedding) for d in r.data}
    assert len(dims) == 1 and dims.pop() > 0
    for d in r.data:
        assert d.object == "embedding"
        assert all(isinstance(x, float) for x in d.embedding)
        assert _norm(d.embedding) == pytest.approx(1.0, abs=1e-3)
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens


def test_embeddings_deterministic_and_dimensions(client: openai.OpenAI, model: str) -> None:
    a = client.embeddings.create(model=model, input="same text", encoding_format="float")
    b = client.embeddings.create(model=model, input="same text", encoding_format="float")
    assert a.data[0].embedding == b.data[0].embedding
    small = client.embeddings.create(model=model, input="same text", dimensions=16, encoding_format="float")
    assert len(small.data[0].embedding) == 16
    assert _norm(small.data[0].embedding) == pytest.approx(1.0, abs=1e-3)


def test_embeddings_token_inputs(client: openai.OpenAI, model: str) -> None:
    r = client.embeddings.create(model=model, input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert [d.index for d in r.data] == [0, 1]


def test_embeddings_base64_default_is_decoded_by_sdk(client: openai.OpenAI, model: str) -> None:
    """Without encoding_format the SDK asks for base64 and decodes it to floats."""
    floats = client.embeddings.create(model=model, input="base64 check", encoding_format="float").data[0].embedding
    decoded = client.embeddings.create(model=model, input="base64 check").data[0].embedding
    assert isinstance(decoded, list) and all(isinstance(x, float) for x in decoded)
    assert decoded == pytest.approx(floats, abs=1e-6)


def test_embeddings_base64_explicit(client: openai.OpenAI, model: str) -> None:
    """With an explicit encoding_format='base64' the SDK returns the string untouched."""
    floats = client.embeddings.create(model=model, input="base64 check", encoding_format="float").data[0].embedding
    raw = client.embeddings.create(model=model, input="base64 check", encoding_format="base64").data[0].embedding
    assert isinstance(raw, str)
    buf = base64.b64decode(raw, validate=True)
    assert len(buf) == 4 * len(floats)
    values = list(struct.unpack(f"<{len(floats)}f", buf))
    assert values == pytest.approx(floats, abs=1e-6)
