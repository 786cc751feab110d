"""Shared configuration and small helpers for the client-SDK tests (no fixtures here)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import httpx
import openai

# --------------------------------------------------------------------------- configuration

BASE_URL = os.environ.get("COCOON_BASE_URL", "http://127.0.0.1:18080/v1").rstrip("/")
API_KEY = os.environ.get("COCOON_API_KEY", "sk-cocoon-unset")
LIMITED_KEY = os.environ.get("COCOON_LIMITED_KEY", "")
JWT = os.environ.get("COCOON_JWT", "")
ENGINE_URL = os.environ.get("COCOON_ENGINE_URL", "http://127.0.0.1:18081").rstrip("/")
MODEL = os.environ.get("COCOON_MODEL", "cocoon-test")
MAX_BODY_BYTES = int(os.environ.get("COCOON_MAX_BODY_BYTES", "1048576"))
GATEWAY = os.environ.get("COCOON_GATEWAY") == "1"
# The suite runs through `cocoon client-proxy`: every request sealed end to end.
E2E_PROXY = os.environ.get("COCOON_E2E_PROXY") == "1"

# Every network call has a timeout: the SDK clients get TIMEOUT_S, httpx clients HTTP_TIMEOUT.
TIMEOUT_S = 30.0
HTTP_TIMEOUT = httpx.Timeout(TIMEOUT_S, connect=5.0)

# A model name nothing serves.
UNKNOWN_MODEL = "cocoon-no-such-model"

# A prompt whose token count under the test engine is known: 6 words + 3 per message.
PROMPT = "Say hello to the test engine"
PROMPT_TOKENS = 6 + 3


# Two tools with strict parameter schemas (the test engine generates arguments from them).
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["city", "unit", "days"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a time zone.",
            "parameters": {
                "type": "object",
                "properties": {"timezone": {"type": "string"}},
                "required": ["timezone"],
                "additionalProperties": False,
            },
        },
    },
]
TOOL_PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "email": {"type": "string", "format": "email"},
        "role": {"type": "string", "enum": ["admin", "user"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "manager": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/ref"}]},
    },
    "required": ["name", "age", "email", "role", "active", "tags", "manager"],
    "additionalProperties": False,
    "$defs": {
        "ref": {
            "type": "object",
            "properties": {"id": {"type": "integer"}},
            "required": ["id"],
            "additionalProperties": False,
        }
    },
}


def user(text: str = PROMPT) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def make_client(api_key: str = API_KEY, **kwargs) -> openai.OpenAI:
    """An SDK client that never retries (so 429/5xx surface) and always times out."""
    return openai.OpenAI(
        base_url=BASE_URL,
        api_key=api_key,
        max_retries=0,
        timeout=TIMEOUT_S,
        **kwargs,
    )


# --------------------------------------------------------------------------- SSE


def parse_sse(body: bytes) -> list[dict[str, Any]]:
    """Parse an OpenAI-style SSE body strictly and return the JSON chunks (without [DONE]).

    Asserts the exact framing OpenAI uses: every event is one line ``data: <payload>``
    followed by a blank line, and the stream ends with ``data: [DONE]\\n\\n``. SSE comments
    (one line starting with ``:``, which every SSE client skips) are allowed: keep-alives, and
    Cocoon's ``: cocoon-receipt <base64url>``, which when present comes right before [DONE].
    """
    text = body.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n"), f"stream does not end with 'data: [DONE]\\n\\n': {text[-200:]!r}"
    events = text.split("\n\n")
    assert events[-1] == "", "trailing bytes after the last event"
    events = events[:-1]
    receipts = [i for i, ev in enumerate(events) if ev.startswith(": cocoon-receipt ")]
    assert receipts in ([], [len(events) - 2]), f"a receipt comment comes once, right before [DONE]: {receipts}"
    for ev in events:
        if ev.startswith(":"):
            assert "\n" not in ev and "\r" not in ev, f"SSE comment spans several lines: {ev[:200]!r}"
    events = [ev for ev in events if not ev.startswith(":")]
    for ev in events:
        assert ev.startswith("data: "), f"SSE event is not a single 'data: ' line: {ev[:200]!r}"
        assert "\n" not in ev and "\r" not in ev, f"SSE event spans several lines: {ev[:200]!r}"
    payloads = [ev[len("data: "):] for ev in events]
    assert payloads.count("[DONE]") == 1, "[DONE] must be sent exactly once, last"
    chunks = []
    for p in payloads[:-1]:
        try:
            chunks.append(json.loads(p))
        except json.JSONDecodeError as exc:  # pragma: no cover - failure path
            raise AssertionError(f"SSE data is not JSON: {p[:200]!r}") from exc
    return chunks


# --------------------------------------------------------------------------- stream assembly


@dataclass
class AssembledChoice:
    text: str = ""
    role: str | None = None
    finish_reason: str | None = None
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] = field(default_factory=list)


def _get(obj: Any, key: str) -> Any:
    """Read a field from an SDK model or from a plain dict (raw JSON chunk)."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def assemble_chat(chunks: Iterable[Any]) -> dict[int, AssembledChoice]:
    """Fold chat.completion.chunk objects (SDK models or dicts) into per-index choices."""
    out: dict[int, AssembledChoice] = {}
    for chunk in chunks:
        for ch in _get(chunk, "choices") or []:
            c = out.setdefault(_get(ch, "index"), AssembledChoice())
            delta = _get(ch, "delta") or {}
            if _get(delta, "role"):
                c.role = _get(delta, "role")
            if _get(delta, "content"):
                c.text += _get(delta, "content")
            for tc in _get(delta, "tool_calls") or []:
                slot = c.tool_calls.setdefault(_get(tc, "index"), {"id": None, "type": None, "name": "", "arguments": ""})
                if _get(tc, "id"):
                    slot["id"] = _get(tc, "id")
                if _get(tc, "type"):
                    slot["type"] = _get(tc, "type")
                fn = _get(tc, "function")
                if fn is not None:
                    slot["name"] += _get(fn, "name") or ""
                    slot["arguments"] += _get(fn, "arguments") or ""
            lp = _get(ch, "logprobs")
            if lp is not None and _get(lp, "content"):
                c.logprobs.extend(_get(lp, "content"))
            if _get(ch, "finish_reason"):
                assert c.finish_reason is None, f"choice {_get(ch, 'index')} got two finish_reasons"
                c.finish_reason = _get(ch, "finish_reason")
    return out


# --------------------------------------------------------------------------- engine debug endpoints


def engine_stats(engine: httpx.Client) -> dict[str, int]:
    r = engine.get("/debug/stats")
    r.raise_for_status()
    return r.json()


def engine_last_request(engine: httpx.Client) -> Any:
    r = engine.get("/debug/last-request")
    r.raise_for_status()
    return r.json()


def wait_until(predicate: Callable[[], Any], *, deadline_s: float, interval_s: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it, or the last value on timeout."""
    end = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value or time.monotonic() >= end:
            return value
        time.sleep(interval_s)
