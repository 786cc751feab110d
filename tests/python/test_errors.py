"""Error handling: every failure must surface as the OpenAI SDK's matching exception class, with an
OpenAI-shaped body ({"error": {"message", "type", "param", "code"}}) and an x-request-id header."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import openai
import pytest

import helpers
from helpers import MODEL, UNKNOWN_MODEL, make_client, user
from openai_schema import validate


def check_error_body(response: Any, status: int, *, type: str | None = None, code: str | None = None,
                     param: str | None = None) -> dict[str, Any]:
    """Assert status, the OpenAI ErrorResponse shape (all four keys), and selected values."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:500]}"
    assert response.headers.get("content-type", "").startswith("application/json")
    body = response.json()
    validate("ErrorResponse", body)
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    if type is not None:
        assert err["type"] == type, err
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    if helpers.GATEWAY:
        assert response.headers.get("x-request-id"), "every gateway response carries x-request-id"
    return err


def check_sdk_error(e: openai.APIStatusError, status: int, **expected: str) -> None:
    check_error_body(e.response, status, **expected)
    assert e.status_code == status
    # The SDK unwraps {"error": {...}} into .body and copies code/param/type onto the exception.
    assert isinstance(e.body, dict) and e.body.get("message")
    for attr, value in expected.items():
        assert getattr(e, attr) == value, f"e.{attr} = {getattr(e, attr)!r}, expected {value!r}"
    if helpers.GATEWAY:
        assert e.request_id, "the SDK exposes x-request-id as e.request_id"


# --------------------------------------------------------------------------- auth


@pytest.mark.gateway
@pytest.mark.parametrize("key", ["sk-cocoon-not-a-real-key", "not-even-a-key"])
def test_bad_api_key(key: str) -> None:
    with make_client(api_key=key) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model=MODEL, messages=user())
    check_sdk_error(info.value, 401, type="invalid_request_error", code="invalid_api_key")


@pytest.mark.gateway
def test_bad_api_key_on_models_list() -> None:
    with make_client(api_key="sk-cocoon-not-a-real-key") as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
    check_sdk_error(info.value, 401, code="invalid_api_key")


@pytest.mark.gateway
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
                         ids=["missing", "empty-bearer", "basic"])
def test_missing_api_key(anon_http: httpx.Client, headers: dict[str, str]) -> None:
    r = anon_http.post("chat/completions", json={"model": MODEL, "messages": user()}, headers=headers)
    check_error_body(r, 401, type="invalid_request_error", code="invalid_api_key")


@pytest.mark.gateway
def test_jwt_is_accepted_as_api_key(model: str) -> None:
    assert helpers.JWT, "COCOON_JWT is not set"
    with make_client(api_key=helpers.JWT) as jwt_client:
        assert model in [m.id for m in jwt_client.models.list().data]
        r = jwt_client.chat.completions.create(model=model, messages=user(), max_tokens=2)
        assert r.choices[0].message.content


@pytest.mark.gateway
def test_garbage_jwt_is_rejected() -> None:
    garbage = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJub2JvZHkifQ.c2lnbmF0dXJlLWdhcmJhZ2U"
    with make_client(api_key=garbage) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
    check_sdk_error(info.value, 401)


def _b64url_json(part: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _b64url(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()


@pytest.mark.gateway
def test_jwt_with_tampered_payload_is_rejected() -> None:
    """Same header and signature, different claims: the HS256 signature no longer matches."""
    assert helpers.JWT.count(".") == 2, "COCOON_JWT is not a JWT"
    header, payload, signature = helpers.JWT.split(".")
    claims = _b64url_json(payload)
    claims["sub"] = str(claims.get("sub", "")) + "-tampered"
    forged = f"{header}.{_b64url(claims)}.{signature}"
    with make_client(api_key=forged) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model=MODEL, messages=user(), max_tokens=1)
    check_sdk_error(info.value, 401)


@pytest.mark.gateway
def test_jwt_with_alg_none_is_rejected() -> None:
    assert helpers.JWT.count(".") == 2, "COCOON_JWT is not a JWT"
    claims = _b64url_json(helpers.JWT.split(".")[1])
    unsigned = f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(claims)}."
    with make_client(api_key=unsigned) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
    check_sdk_error(info.value, 401)


# --------------------------------------------------------------------------- unknown model


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_unknown_model_chat(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=UNKNOWN_MODEL, messages=user(), stream=stream)
    check_sdk_error(info.value, 404, code="model_not_found", param="model")


def test_unknown_model_completions_and_embeddings(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model=UNKNOWN_MODEL, prompt="hi")
    check_sdk_error(info.value, 404, code="model_not_found", param="model")
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model=UNKNOWN_MODEL, input="hi")
    check_sdk_error(info.value, 404, code="model_not_found", param="model")


# --------------------------------------------------------------------------- invalid parameters

INVALID_PARAMS = [
    pytest.param({"temperature": 5}, "temperature", id="temperature=5"),
    pytest.param({"n": 0}, "n", id="n=0"),
    pytest.param({"top_p": 2}, "top_p", id="top_p=2"),
    pytest.param({"messages": []}, "messages", id="messages=[]"),
    pytest.param({"max_tokens": 0}, "max_tokens", id="max_tokens=0"),
    pytest.param({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", id="role=wizard"),
]


@pytest.mark.gateway
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("override, param", INVALID_PARAMS)
def test_invalid_parameter(client: openai.OpenAI, override: dict[str, Any], param: str, stream: bool) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": user(), **override}
    if stream:
        kwargs["stream"] = True
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**kwargs)
    check_sdk_error(info.value, 400, type="invalid_request_error", param=param)
    assert info.value.body["param"] == param


# --------------------------------------------------------------------------- rate limit


@pytest.mark.gateway
def test_rate_limit() -> None:
    """COCOON_LIMITED_KEY allows 2 requests per minute: the third must be a 429."""
    assert helpers.LIMITED_KEY, "COCOON_LIMITED_KEY is not set"
    with make_client(api_key=helpers.LIMITED_KEY) as limited:
        successes = []
        error: openai.RateLimitError | None = None
        for _ in range(3):
            try:
                successes.append(
                    limited.chat.completions.with_raw_response.create(model=MODEL, messages=user(), max_tokens=1)
                )
            except openai.RateLimitError as e:
                error = e
                break
    assert error is not None, "the third request within a minute must be rate limited"
    # (If this test is re-run within the same minute, fewer than two requests may succeed.)
    assert len(successes) <= 2

    for ok in successes:
        assert int(ok.headers["x-ratelimit-limit-requests"]) == 2
        assert 0 <= int(ok.headers["x-ratelimit-remaining-requests"]) < 2
        assert ok.headers["x-ratelimit-reset-requests"]

    check_sdk_error(error, 429, type="requests", code="rate_limit_exceeded")
    headers = error.response.headers
    retry_after = headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit(), f"Retry-After must be integer seconds: {retry_after!r}"
    assert 1 <= int(retry_after) <= 60
    assert int(headers["x-ratelimit-limit-requests"]) == 2
    assert int(headers["x-ratelimit-remaining-requests"]) == 0
    assert headers["x-ratelimit-reset-requests"]
    # The limited key may have no tokens-per-minute limit (the CI script creates it with --tpm 0), in
    # which case the gateway leaves the -tokens trio out; whatever it sends must be complete.
    token_headers = [headers.get(n) for n in ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                                              "x-ratelimit-reset-tokens")]
    assert all(token_headers) or not any(token_headers), f"incomplete -tokens trio: {token_headers}"


@pytest.mark.gateway
def test_success_carries_request_id_and_rate_limit_headers(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=user(), max_tokens=2)
    assert raw.status_code == 200
    assert raw.headers.get("x-request-id")
    assert raw.parse()._request_id == raw.headers["x-request-id"]
    limit = int(raw.headers["x-ratelimit-limit-requests"])
    remaining = int(raw.headers["x-ratelimit-remaining-requests"])
    assert 0 <= remaining < limit
    assert raw.headers["x-ratelimit-reset-requests"]
    for name in ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"):
        assert raw.headers.get(name), f"successful response lacks {name}"


@pytest.mark.gateway
def test_stream_carries_request_id(client: openai.OpenAI, model: str) -> None:
    with client.chat.completions.create(model=model, messages=user(), max_tokens=2, stream=True) as stream:
        assert stream.response.headers.get("x-request-id")
        list(stream)


@pytest.mark.gateway
def test_request_ids_are_unique(http: httpx.Client) -> None:
    ids = {http.get("models").headers.get("x-request-id") for _ in range(3)}
    assert None not in ids and len(ids) == 3


# --------------------------------------------------------------------------- raw HTTP errors


@pytest.mark.gateway
def test_malformed_json(http: httpx.Client) -> None:
    r = http.post("chat/completions", content=b'{"model": "cocoon-test", "messages": [',
                  headers={"Content-Type": "application/json"})
    check_error_body(r, 400, type="invalid_request_error", code="invalid_json")


@pytest.mark.gateway
def test_wrong_content_type(http: httpx.Client) -> None:
    body = json.dumps({"model": MODEL, "messages": user()}).encode()
    r = http.post("chat/completions", content=body, headers={"Content-Type": "text/plain"})
    check_error_body(r, 400, type="invalid_request_error")


@pytest.mark.gateway
def test_body_too_large(http: httpx.Client) -> None:
    filler = "x" * (helpers.MAX_BODY_BYTES + 1024)
    body = json.dumps({"model": MODEL, "messages": user(filler)}).encode()
    assert len(body) > helpers.MAX_BODY_BYTES
    r = http.post("chat/completions", content=body, headers={"Content-Type": "application/json"})
    check_error_body(r, 413, code="request_too_large")


@pytest.mark.gateway
def test_body_just_under_the_limit_is_accepted(http: httpx.Client) -> None:
    envelope = json.dumps({"model": MODEL, "max_tokens": 1, "messages": user("")}).encode()
    filler = "x" * (helpers.MAX_BODY_BYTES - len(envelope) - 16)
    body = json.dumps({"model": MODEL, "max_tokens": 1, "messages": user(filler)}).encode()
    assert len(body) <= helpers.MAX_BODY_BYTES
    r = http.post("chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text[:500]


@pytest.mark.gateway
@pytest.mark.parametrize("method, path", [("POST", "nope"), ("GET", "nope"), ("POST", "chat/completion")])
def test_unknown_route(http: httpx.Client, method: str, path: str) -> None:
    r = http.request(method, path, json={} if method == "POST" else None)
    check_error_body(r, 404, code="unknown_url")


@pytest.mark.gateway
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method(http: httpx.Client, method: str) -> None:
    r = http.request(method, "chat/completions")
    check_error_body(r, 405)
