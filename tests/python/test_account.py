"""Billing endpoints (/v1/account/*) through plain HTTP next to the SDK: the balance moves by
exactly the x-cocoon-cost-nanoton of a request, whose usage row carries the same charge."""

from __future__ import annotations

import httpx
import openai
import pytest

from helpers import MODEL, user


@pytest.mark.gateway
def test_balance_and_usage_follow_a_request(client: openai.OpenAI, http: httpx.Client) -> None:
    before = http.get("account/balance")
    assert before.status_code == 200, before.text
    b = before.json()
    assert b["object"] == "account.balance"
    for k in ("total", "held", "available"):
        assert isinstance(b[k], int), b
        assert isinstance(b[f"{k}_ton"], str), b
    assert b["available"] == b["total"] - b["held"]

    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=user(), max_tokens=5)
    raw.parse()
    job = raw.headers["x-request-id"]
    cost = int(raw.headers["x-cocoon-cost-nanoton"])
    assert cost > 0

    usage = http.get("account/usage", params={"limit": 50})
    assert usage.status_code == 200, usage.text
    rows = {r["job_id"]: r for r in usage.json()["data"]}
    assert job in rows, usage.text
    row = rows[job]
    assert row["charge"] == cost
    assert row["model"] == MODEL
    assert row["usage"]["completion_tokens"] == 5
    # Requests of earlier tests may still be settling in the background (cut streams), so the
    # balance is compared through this request's own row rather than by difference alone.
    after = http.get("account/balance").json()
    assert after["total"] <= b["total"] - cost


@pytest.mark.gateway
def test_account_endpoints_need_a_key(anon_http: httpx.Client) -> None:
    for path in ("account/balance", "account/usage", "workers/worker-1/earnings"):
        r = anon_http.get(path)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.gateway
def test_usage_limit_is_checked(http: httpx.Client) -> None:
    r = http.get("account/usage", params={"limit": 0})
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["param"], err["type"]) == ("limit", "invalid_request_error")
