"""Closing a stream early must cancel generation on the engine (through every hop)."""

from __future__ import annotations

import itertools
import time

import httpx
import openai

from helpers import engine_stats, user

SLOW = {"tokens_per_second": 20, "completion_tokens": 1000}  # ~50 s if nobody cancels it
DEADLINE_S = 3.0


def _wait_for_cancel(engine: httpx.Client, before: dict[str, int]) -> dict[str, int]:
    """Poll /debug/stats until the cancellation is counted and nothing is active any more."""
    end = time.monotonic() + DEADLINE_S
    while True:
        stats = engine_stats(engine)
        if stats["requests_cancelled"] >= before["requests_cancelled"] + 1 and stats["active"] <= before["active"]:
            return stats
        if time.monotonic() >= end:
            raise AssertionError(f"stream was not cancelled within {DEADLINE_S}s: before={before} now={stats}")
        time.sleep(0.02)


def _check(engine: httpx.Client, before: dict[str, int], during: dict[str, int]) -> None:
    assert during["active"] == before["active"] + 1, f"the stream should be active: before={before} during={during}"
    after = _wait_for_cancel(engine, before)
    assert after["requests_cancelled"] == before["requests_cancelled"] + 1, f"cancelled exactly once: {after}"
    assert after["requests_completed"] == before["requests_completed"], "the request must not complete"
    generated = after["tokens_generated"] - before["tokens_generated"]
    assert generated < 100, f"generation should stop at once, but {generated} tokens were generated"
    # Once cancelled, generation stays stopped.
    time.sleep(0.2)
    later = engine_stats(engine)
    assert later["tokens_generated"] == after["tokens_generated"]
    assert later["requests_cancelled"] == after["requests_cancelled"]


def test_sdk_stream_close_cancels_generation(client: openai.OpenAI, model: str, engine: httpx.Client) -> None:
    before = engine_stats(engine)
    stream = client.chat.completions.create(
        model=model, messages=user(), stream=True, max_tokens=2000, extra_body={"test_engine": SLOW}
    )
    try:
        chunks = list(itertools.islice(stream, 3))
        assert len(chunks) == 3
        during = engine_stats(engine)
    finally:
        stream.close()
    _check(engine, before, during)


def test_raw_response_close_cancels_generation(http: httpx.Client, model: str, engine: httpx.Client) -> None:
    before = engine_stats(engine)
    body = {"model": model, "messages": user(), "stream": True, "max_tokens": 2000, "test_engine": SLOW}
    with http.stream("POST", "chat/completions", json=body) as response:
        assert response.status_code == 200
        # Keep a reference to the line iterator: dropping a half-read httpx iterator closes the
        # connection by itself, and the point here is to close it explicitly.
        lines = response.iter_lines()
        events = [line for line in itertools.islice((l for l in lines if l.startswith("data: ")), 3)]
        assert len(events) == 3
        during = engine_stats(engine)
        response.close()
    _check(engine, before, during)
