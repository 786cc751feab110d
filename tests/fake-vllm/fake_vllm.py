#!/usr/bin/env python3
"""A vLLM-faithful fake engine for the worker-agent tests (stdlib only, no GPU).

Run it as the worker runs vLLM: `fake_vllm.py serve MODEL --served-model-name ID --host H
--port P [vLLM flags...]`. It serves the OpenAI surface the way vLLM v0.11.0 does, byte shapes
included, and lets a test switch on the behaviours a GPU owner meets. Each behaviour names the
vLLM v0.11.0 source file it follows (paths under vllm/ in the `vllm==0.11.0` sdist on PyPI).

Startup (vllm/entrypoints/openai/api_server.py `setup_server`, `create_server_socket`): the
socket is bound before the model loads but not listening, so connections are refused while
loading (FAKE_VLLM_LOAD_SECONDS, default 0.3).

Endpoints:
- GET /health: 200 with an empty body while the engine is alive, even when hung (api_server.py
  `health` -> AsyncLLM.check_health only reads the `errored` flag); 503 once dead.
- GET /version: {"version": "0.11.0"} (api_server.py `show_version`).
- GET /v1/models: ModelList of ModelCard with `max_model_len` (entrypoints/openai/protocol.py,
  serving_models.py `show_available_models`).
- GET /metrics: Prometheus text with the real names and labels (v1/metrics/loggers.py
  `PrometheusStatLogger`: labelnames ["model_name", "engine"]; counters exposed as `_total`
  and `_created` by prometheus_client): vllm:num_requests_running, vllm:num_requests_waiting,
  vllm:kv_cache_usage_perc, vllm:prompt_tokens_total, vllm:generation_tokens_total.
- GET /slots: 404 {"detail":"Not Found"} (no such route in vLLM; FastAPI's 404).
- POST /v1/chat/completions, /v1/completions (serving_chat.py, serving_completion.py):
  - `tools` without `tool_choice` means "auto" (protocol.py `check_tool_usage`); "auto" without
    --enable-auto-tool-choice and --tool-call-parser answers 400 with vLLM's message;
  - `stream_options` present means include_usage unless it says false (protocol.py
    `StreamOptions.include_usage = True`); `continuous_usage_stats` puts usage on every chunk;
  - chat chunks are `model_dump_json(exclude_unset=True)` (no `usage` key unless set),
    completion chunks `exclude_unset=False` (`"usage":null`); the usage chunk has
    `choices: []` and `exclude_none=True`; `prompt_tokens_details.cached_tokens` only with
    --enable-prompt-tokens-details and cached tokens;
  - an exception mid-stream becomes `data: {"error": {...code: 400...}}` then `data: [DONE]`
    (`create_streaming_error_response`, serving_engine.py: default BadRequestError/400);
  - best_of > 1: "vLLM V1 does not yet support best_of." (v1/engine/processor.py), 400 or,
    streamed, an error event after the 200;
  - prompts longer than --max-model-len: 400 "This model's maximum context length is ..."
    (serving_engine.py `_validate_input`).
  - --max-num-seqs requests run at once; the rest wait (vllm:num_requests_waiting).
- POST /v1/responses (serving_responses.py `OpenAIServingResponses`, protocol.py `ResponsesRequest`,
  `ResponsesResponse`, api_server.py `create_responses`), as served for a model that is not
  gpt-oss (no Harmony, no reasoning parser); the behaviours are listed at `Handler.create_responses`.
  The JSON of the objects and events is what vLLM's pydantic models dump with openai-python
  1.109.1 (vLLM 0.11.0 requires openai >= 1.99.1), key order included.
- --enable-log-requests / --enable-log-outputs print vLLM's request logger lines
  (entrypoints/logger.py), so tests can show the worker withholds them.
- --api-key or VLLM_API_KEY: /v1/* answers 401 {"error": "Unauthorized"} without the key
  (api_server.py AuthenticationMiddleware).

Test switches: POST /fake/behaviour with a JSON object (merged), or FAKE_VLLM_BEHAVIOUR (JSON)
at start:
  hang: true          no more tokens; requests stay running; /health stays 200
  hang_after: N       the same, once a stream has produced N tokens
  error_after: N      after N tokens of a stream, raise (error event, then [DONE])
  error_message: str  the exception text (default "CUDA error: an illegal memory access was
                      encountered"); vLLM's EngineDeadError text is
                      "EngineCore encountered an issue. See stack trace (above) for the root cause."
  cached_tokens: N    prompt tokens served from the prefix cache
  token_delay_ms: N   between tokens (default 2)
  prefill_ms: N       before the first token (default 5)
GET /fake/state returns what the fake saw (argv, requests' stream_options, GET paths, counts;
for /v1/responses the request's keys, `store`, `previous_response_id`, and the ids vLLM stored).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "0.11.0"
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."


def log(level: str, where: str, msg: str) -> None:
    # vllm/logger.py format: "INFO 10-07 12:00:00 [file.py:line] message"
    print("%s %s [%s] %s" % (level, time.strftime("%m-%d %H:%M:%S"), where, msg), flush=True)


class Engine:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Condition()
        self.running = 0
        self.waiting = 0
        self.prompt_tokens_total = 0.0
        self.generation_tokens_total = 0.0
        self.created = time.time()
        self.behaviour = {"token_delay_ms": 2, "prefill_ms": 5}
        self.behaviour.update(json.loads(os.environ.get("FAKE_VLLM_BEHAVIOUR") or "{}"))
        self.seen = []  # per request: {"path", "stream_options", "stream"}
        self.gets = {}  # GET path -> count
        self.dead = False
        # serving_responses.py: `response_store`, used only with VLLM_ENABLE_RESPONSES_API_STORE.
        self.response_store = {}

    def b(self, key, default=None):
        with self.lock:
            return self.behaviour.get(key, default)

    def admit(self):
        """Waits for a running slot (the scheduler's max_num_seqs)."""
        with self.lock:
            self.waiting += 1
            while self.running >= self.args.max_num_seqs:
                self.lock.wait(0.05)
            self.waiting -= 1
            self.running += 1

    def release(self):
        with self.lock:
            self.running -= 1
            self.lock.notify_all()

    def token(self):
        """One decode step; blocks forever (like a CUDA hang) while `hang` is on."""
        while self.b("hang"):
            time.sleep(0.05)
        time.sleep(self.b("token_delay_ms", 2) / 1000.0)
        with self.lock:
            self.generation_tokens_total += 1


def count_tokens(text: str) -> int:
    # A stand-in tokenizer: one token per whitespace-separated word.
    return max(1, len(text.split()))


def chat_prompt(body) -> str:
    parts = []
    for m in body.get("messages") or []:
        c = m.get("content")
        if isinstance(c, list):
            c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
        parts.append("<|im_start|>%s %s<|im_end|>" % (m.get("role", ""), c or ""))
    return " ".join(parts) + " <|im_start|>assistant"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    engine: Engine = None  # set in main

    def log_message(self, fmt, *a):  # uvicorn's access log, without bodies
        log("INFO", "h11_impl.py:1", '%s - "%s" %s' % (self.client_address[0], self.requestline, a[1] if len(a) > 1 else ""))

    # --- plumbing -------------------------------------------------------------------------
    def send_json(self, status: int, obj, compact=True):
        data = json.dumps(obj, separators=(",", ":") if compact else None, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, message: str, status=HTTPStatus.BAD_REQUEST, err_type="BadRequestError"):
        # serving_engine.py create_error_response -> ErrorResponse(error=ErrorInfo(...)), status = code
        self.send_json(status.value, {"error": {"message": message, "type": err_type, "param": None, "code": status.value}})

    def authorized(self) -> bool:
        key = self.engine.args.api_key or os.environ.get("VLLM_API_KEY")
        if not key or not self.path.startswith("/v1"):
            return True
        if self.headers.get("authorization") == "Bearer " + key:
            return True
        self.send_json(401, {"error": "Unauthorized"})
        return False

    def read_body(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw or b"{}")

    # --- routes ---------------------------------------------------------------------------
    def do_GET(self):
        e = self.engine
        with e.lock:
            e.gets[self.path] = e.gets.get(self.path, 0) + 1
        if not self.authorized():
            return
        if self.path == "/health":
            self.send_response(503 if e.dead else 200)
            self.send_header("content-length", "0")
            self.end_headers()
        elif self.path == "/version":
            self.send_json(200, {"version": VERSION})
        elif self.path == "/v1/models":
            card = {
                "id": e.args.served_model_name, "object": "model", "created": int(time.time()),
                "owned_by": "vllm", "root": e.args.model, "parent": None,
                "max_model_len": e.args.max_model_len,
                "permission": [{
                    "id": "modelperm-" + uuid.uuid4().hex, "object": "model_permission",
                    "created": int(time.time()), "allow_create_engine": False, "allow_sampling": True,
                    "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                    "allow_fine_tuning": False, "organization": "*", "group": None, "is_blocking": False,
                }],
            }
            self.send_json(200, {"object": "list", "data": [card]})
        elif self.path == "/metrics":
            self.metrics()
        elif self.path == "/fake/state":
            with e.lock:
                self.send_json(200, {"argv": sys.argv[1:], "seen": e.seen, "gets": e.gets, "running": e.running,
                                     "waiting": e.waiting, "behaviour": e.behaviour,
                                     "stored": sorted(e.response_store)})
        else:
            self.send_json(404, {"detail": "Not Found"})

    def metrics(self):
        e = self.engine
        labels = 'model_name="%s",engine="0"' % e.args.served_model_name
        with e.lock:
            kv = min(1.0, e.running / max(1, e.args.max_num_seqs))
            lines = [
                "# HELP vllm:num_requests_running Number of requests in model execution batches.",
                "# TYPE vllm:num_requests_running gauge",
                "vllm:num_requests_running{%s} %.1f" % (labels, e.running),
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
                "# TYPE vllm:num_requests_waiting gauge",
                "vllm:num_requests_waiting{%s} %.1f" % (labels, e.waiting),
                "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
                "# TYPE vllm:kv_cache_usage_perc gauge",
                "vllm:kv_cache_usage_perc{%s} %s" % (labels, kv),
                "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
                "# TYPE vllm:prompt_tokens_total counter",
                "vllm:prompt_tokens_total{%s} %.1f" % (labels, e.prompt_tokens_total),
                "vllm:prompt_tokens_created{%s} %s" % (labels, e.created),
                "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
                "# TYPE vllm:generation_tokens_total counter",
                "vllm:generation_tokens_total{%s} %.1f" % (labels, e.generation_tokens_total),
                "vllm:generation_tokens_created{%s} %s" % (labels, e.created),
            ]
        data = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        e = self.engine
        if self.path == "/fake/behaviour":
            update = self.read_body()
            with e.lock:
                e.behaviour.update(update)
            self.send_json(200, e.behaviour)
            return
        if not self.authorized():
            return
        if self.path not in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
            self.send_json(404, {"detail": "Not Found"})
            return
        try:
            body = self.read_body()
        except ValueError as err:
            self.error("JSON decode error: %s" % err)
            return
        if self.path == "/v1/responses":
            self.create_responses(body)
            return
        self.generate(body, chat=self.path == "/v1/chat/completions")

    # --- generation -------------------------------------------------------------------------
    def generate(self, body, chat: bool):
        e, a = self.engine, self.engine.args
        stream = bool(body.get("stream"))
        opts = body.get("stream_options")
        with e.lock:
            e.seen.append({"path": self.path, "stream": stream, "stream_options": opts,
                           "best_of": body.get("best_of"), "has_tools": bool(body.get("tools"))})
        # protocol.py validate_stream_options
        if opts and not stream:
            return self.error("Stream options can only be defined when `stream=True`.")
        if body.get("model") not in (a.served_model_name,):
            return self.error("The model `%s` does not exist." % body.get("model"),
                              HTTPStatus.NOT_FOUND, "NotFoundError")
        tool_choice = body.get("tool_choice")
        if chat and "tool_choice" not in body and body.get("tools"):
            tool_choice = "auto"  # protocol.py check_tool_usage
        if chat and tool_choice == "auto" and not (a.enable_auto_tool_choice and a.tool_call_parser):
            # serving_chat.py create_chat_completion
            return self.error('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
        prompt = chat_prompt(body) if chat else str(body.get("prompt", ""))
        n_prompt = count_tokens(prompt)
        if n_prompt >= a.max_model_len:
            return self.error(
                "This model's maximum context length is %d tokens. However, your request has %d input tokens. "
                "Please reduce the length of the input messages." % (a.max_model_len, n_prompt))
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None and n_prompt + max_tokens > a.max_model_len:
            return self.error(
                "'max_tokens' or 'max_completion_tokens' is too large: %d. This model's maximum context length is %d "
                "tokens and your request has %d input tokens (%d > %d - %d)."
                % (max_tokens, a.max_model_len, n_prompt, max_tokens, a.max_model_len, n_prompt))
        max_tokens = min(max_tokens or 16, a.max_model_len - n_prompt)
        best_of_error = (body.get("best_of") or 1) > 1
        request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        if a.enable_log_requests:
            # entrypoints/logger.py RequestLogger.log_inputs
            log("INFO", "logger.py:40", "Received request %s: prompt: %r, params: SamplingParams(n=1, max_tokens=%d), "
                "prompt_token_ids: None, prompt_embeds shape: None, lora_request: None." % (request_id, prompt, max_tokens))
        if best_of_error and not stream:
            return self.error("vLLM V1 does not yet support best_of.")
        model = a.served_model_name
        created = int(time.time())
        words = ["Hello", "from", "the", "fake", "vLLM", "engine", "."]
        tool_call = chat and tool_choice == "auto" and body.get("tools")
        include_usage = bool(opts) and (opts.get("include_usage", True) is not False)
        continuous = include_usage and bool(opts.get("continuous_usage_stats"))
        cached = int(e.b("cached_tokens", 0) or 0)

        def usage(completion, final=False):
            u = {"prompt_tokens": n_prompt, "total_tokens": n_prompt + completion, "completion_tokens": completion}
            if final and a.enable_prompt_tokens_details and cached:
                u["prompt_tokens_details"] = {"cached_tokens": cached}
            return u

        e.admit()
        try:
            time.sleep(e.b("prefill_ms", 5) / 1000.0)
            if not stream:
                text = []
                for i in range(max_tokens):
                    e.token()
                    text.append(words[i % len(words)])
                with e.lock:
                    e.prompt_tokens_total += n_prompt
                content = " ".join(text)
                if a.enable_log_outputs:
                    log("INFO", "logger.py:71", "Generated response %s: output: %r, output_token_ids: None, finish_reason: length"
                        % (request_id, content))
                if chat:
                    message = {"role": "assistant", "content": content, "refusal": None, "annotations": None,
                               "audio": None, "function_call": None, "tool_calls": [], "reasoning_content": None}
                    finish = "length"
                    if tool_call:
                        fn = body["tools"][0]["function"]["name"]
                        message.update(content=None, tool_calls=[{"id": "chatcmpl-tool-" + uuid.uuid4().hex, "type": "function",
                                                                  "function": {"name": fn, "arguments": "{}"}}])
                        finish = "tool_calls"
                    resp = {"id": request_id, "object": "chat.completion", "created": created, "model": model,
                            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish,
                                         "stop_reason": None, "token_ids": None}],
                            "service_tier": None, "system_fingerprint": None, "usage": usage(max_tokens, True),
                            "prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": None}
                else:
                    resp = {"id": request_id, "object": "text_completion", "created": created, "model": model,
                            "choices": [{"index": 0, "text": content, "logprobs": None, "finish_reason": "length",
                                         "stop_reason": None, "prompt_logprobs": None, "prompt_token_ids": None,
                                         "token_ids": None}],
                            "service_tier": None, "system_fingerprint": None, "usage": usage(max_tokens, True),
                            "kv_transfer_params": None}
                if resp["usage"].get("prompt_tokens_details") is None:
                    resp["usage"]["prompt_tokens_details"] = None
                return self.send_json(200, resp)
            self.stream(chat, request_id, created, model, max_tokens, words, tool_call, body,
                        include_usage, continuous, usage, best_of_error, n_prompt)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away: vLLM aborts the request (with_cancellation)
        finally:
            e.release()

    def stream(self, chat, request_id, created, model, max_tokens, words, tool_call, body,
               include_usage, continuous, usage, best_of_error, n_prompt):
        e = self.engine
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def send(payload: str):
            data = ("data: %s\n\n" % payload).encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def dump(obj):
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)

        head = {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created, "model": model}
        error_after = e.b("error_after")
        try:
            if best_of_error:
                raise ValueError("vLLM V1 does not yet support best_of.")
            for i in range(max_tokens):
                if error_after is not None and i >= int(error_after):
                    raise RuntimeError(e.b("error_message") or "CUDA error: an illegal memory access was encountered")
                hang_after = e.b("hang_after")
                if hang_after is not None and i >= int(hang_after):
                    with e.lock:
                        e.behaviour["hang"] = True
                e.token()
                last = i == max_tokens - 1
                if chat:
                    if i == 0:
                        # The role chunk comes with the first output (serving_chat.py first_iteration).
                        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}
                        chunk = dict(head, choices=[choice])
                        if continuous:
                            chunk["usage"] = usage(0)
                        chunk["prompt_token_ids"] = None
                        send(dump(chunk))
                    if tool_call and i == 0:
                        fn = body["tools"][0]["function"]["name"]
                        delta = {"tool_calls": [{"id": "chatcmpl-tool-" + uuid.uuid4().hex, "type": "function",
                                                 "index": 0, "function": {"name": fn, "arguments": "{}"}}]}
                    else:
                        delta = {"content": " " + words[i % len(words)]}
                    choice = {"index": 0, "delta": delta, "logprobs": None,
                              "finish_reason": ("tool_calls" if tool_call else "length") if last else None}
                    if last:
                        choice["stop_reason"] = None
                    choice["token_ids"] = None
                    chunk = dict(head, choices=[choice])
                    if continuous:
                        chunk["usage"] = usage(i + 1)
                else:
                    # serving_completion.py returns the prompt's token ids on the first chunk
                    # (prompt_token_ids_to_return, "has_echoed" reused), whatever the request says.
                    choice = {"index": 0, "text": " " + words[i % len(words)], "logprobs": None,
                              "finish_reason": "length" if last else None, "stop_reason": None,
                              "prompt_token_ids": list(range(n_prompt)) if i == 0 else None, "token_ids": None}
                    chunk = dict(head, choices=[choice], usage=usage(i + 1) if continuous else None)
                send(dump(chunk))
            with e.lock:
                e.prompt_tokens_total += n_prompt
            if include_usage:
                send(dump(dict(head, choices=[], usage=usage(max_tokens, True))))
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as err:  # noqa: BLE001 - vLLM's own catch-all in the stream generator
            log("ERROR", "serving_chat.py:1144", "Error in chat completion stream generator.")
            # create_streaming_error_response: json.dumps(ErrorResponse.model_dump()), default 400
            send(json.dumps({"error": {"message": str(err), "type": "BadRequestError", "param": None, "code": 400}}))
        send("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True

    # --- POST /v1/responses (vLLM v0.11.0, a model that is not gpt-oss) ----------------------
    def create_responses(self, body):
        """serving_responses.py `OpenAIServingResponses.create_responses`, in its order:

        - protocol.py `ResponsesRequest` validators (FastAPI answers 400, type "Bad Request",
          api_server.py `validation_exception_handler`): `input` is required, `prompt` is refused
          ("prompt template is not supported"), `background` needs `store`;
        - `_check_model`: an unknown model is 404 NotFoundError;
        - a dead engine raises `dead_error`: api_server.py `create_responses` turns any exception
          into HTTPException 500 (`http_exception_handler`: type "Internal Server Error");
        - `store` (default True) is silently turned off unless VLLM_ENABLE_RESPONSES_API_STORE is
          set; `background` with store off is 400 invalid_request_error;
        - `previous_response_id` is looked up in vLLM's in-memory `response_store`: 404
          invalid_request_error "Response with id '...' not found." when absent
          (`_make_not_found_error`);
        - `_make_request`: any `tools` raise NotImplementedError("Tool use is not supported in
          Responses API without Harmony"), answered 400 BadRequestError as f"{e} {e.__cause__}";
          `_construct_input_messages` hands the input items to the chat parser as chat messages:
          an item without `role` (function_call, function_call_output) is a KeyError, so a 500;
          a content part type it does not know (`output_text`) is NotImplementedError("Unknown
          part type: ...") (chat_utils.py `_parse_chat_message_content_part`), so a 400;
        - `_validate_generator_input`: a prompt of max_model_len tokens or more is 400
          invalid_request_error;
        - `ResponsesRequest.to_sampling_params`: max_tokens = min(max_output_tokens, max_model_len
          - prompt), or the latter when unset (never an error); `text.format` json_object raises
          NotImplementedError outside any handler, so a 500; temperature/top_p default 1.0.
        --enable-auto-tool-choice plays no part here: without Harmony there are no tools at all.
        """
        e, a = self.engine, self.engine.args
        stream = bool(body.get("stream"))
        with e.lock:
            e.seen.append({"path": self.path, "stream": stream, "keys": sorted(body),
                           "store": body.get("store", "(unset)"),
                           "previous_response_id": body.get("previous_response_id"),
                           "has_tools": bool(body.get("tools"))})

        def bad_request(msg):  # validation_exception_handler (message abbreviated)
            self.error("1 validation error for ResponsesRequest\n  Value error, %s" % msg, err_type="Bad Request")

        def internal(msg):  # create_responses: HTTPException(500, str(e)) -> http_exception_handler
            self.error(msg, HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error")

        if "input" not in body:
            return bad_request("Field required [type=missing, input_value=..., input_type=dict]")
        if body.get("prompt") is not None:
            return bad_request("prompt template is not supported")
        store = body.get("store", True)
        if body.get("background") and not (store if store is not None else True):
            return bad_request("background can only be used when `store` is true")
        if body.get("model") and body["model"] != a.served_model_name:
            return self.error("The model `%s` does not exist." % body.get("model"), HTTPStatus.NOT_FOUND, "NotFoundError")
        if e.dead:
            return internal(ENGINE_DEAD)
        enable_store = os.environ.get("VLLM_ENABLE_RESPONSES_API_STORE", "0") not in ("", "0", "false", "False")
        if store and not enable_store:
            if body.get("background"):
                return self.error("This vLLM engine does not support `store=True` and therefore does not support the "
                                  "background mode. To enable these features, set the environment variable "
                                  "`VLLM_ENABLE_RESPONSES_API_STORE=1` when launching the vLLM server.",
                                  err_type="invalid_request_error")
            store = False
        prev_id = body.get("previous_response_id")
        if prev_id is not None:
            with e.lock:
                prev = e.response_store.get(prev_id)
            if prev is None:
                return self.error("Response with id '%s' not found." % prev_id, HTTPStatus.NOT_FOUND, "invalid_request_error")
        if body.get("tools"):
            return self.error("Tool use is not supported in Responses API without Harmony None")
        messages = []
        if body.get("instructions"):
            messages.append({"role": "system", "content": body["instructions"]})
        if prev_id is not None:
            messages.extend(prev["messages"])
            for item in prev["response"]["output"]:
                if item.get("type") == "message":
                    messages.extend({"role": "assistant", "content": c["text"]} for c in item["content"])
        inp = body.get("input")
        if isinstance(inp, str):
            messages.append({"role": "user", "content": inp})
        else:
            for item in inp or []:
                if "role" not in item:
                    return internal("'role'")
                content = item.get("content")
                if isinstance(content, list):
                    for part in content:
                        kind = part.get("type")
                        if kind not in ("text", "input_text", "refusal", "thinking"):
                            return self.error("Unknown part type: %s None" % kind)
                    content = "\n".join(part.get("text", "") for part in content)
                messages.append({"role": item["role"], "content": content})
        n_prompt = count_tokens(chat_prompt({"messages": messages}))
        if a.max_model_len <= n_prompt:
            return self.error("The engine prompt length %d exceeds the max_model_len %d. Please reduce prompt."
                              % (n_prompt, a.max_model_len), err_type="invalid_request_error")
        default_max = a.max_model_len - n_prompt
        cap = body.get("max_output_tokens")
        max_tokens = default_max if cap is None else min(cap, default_max)
        fmt = (body.get("text") or {}).get("format") or {}
        if fmt.get("type") == "json_object":
            return internal("json_object is not supported")
        request_id = "resp_" + uuid.uuid4().hex  # ResponsesRequest.request_id
        if a.enable_log_requests:
            log("INFO", "logger.py:40", "Received request %s: prompt: %r, params: SamplingParams(n=1, max_tokens=%d), "
                "prompt_token_ids: None, prompt_embeds shape: None, lora_request: None." % (request_id, chat_prompt({"messages": messages}), max_tokens))
        words = ["Hello", "from", "the", "fake", "vLLM", "engine", "."]
        pieces = [("" if i == 0 else " ") + words[i % len(words)] for i in range(max_tokens)]
        temperature = body.get("temperature")
        temperature = 1.0 if temperature is None else float(temperature)
        top_p = body.get("top_p")
        # sampling_params.py SamplingParams.__post_init__: greedy sampling resets top_p to 1.0.
        top_p = 1.0 if top_p is None or temperature < 1e-5 else float(top_p)
        text = body.get("text")
        if text is not None:
            # ResponseTextConfig.model_dump(): every field, `schema` under its field name `schema_`.
            f = text.get("format")
            if f is not None:
                if f.get("type") == "json_schema":
                    f = {"name": f.get("name"), "schema_": f.get("schema"), "type": "json_schema",
                         "description": f.get("description"), "strict": f.get("strict")}
                else:
                    f = {"type": f.get("type")}
            text = {"format": f, "verbosity": text.get("verbosity")}
        created = int(time.time())
        cached = int(e.b("cached_tokens", 0) or 0)

        def response(status, output, n_out):
            """protocol.py ResponsesResponse.from_request(...).model_dump(): `incomplete_details` only
            for status "incomplete", which this path never sets ("completed" is the catch-all,
            serving_responses.py `responses_full_generator`)."""
            usage = None
            if n_out is not None:
                # InputTokensDetails / OutputTokensDetails: cached tokens whatever
                # --enable-prompt-tokens-details says (context.py SimpleContext.num_cached_tokens).
                usage = {"input_tokens": n_prompt, "input_tokens_details": {"cached_tokens": cached},
                         "output_tokens": n_out, "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0},
                         "total_tokens": n_prompt + n_out}
            return {"id": request_id, "created_at": created, "incomplete_details": None,
                    "instructions": body.get("instructions"), "metadata": body.get("metadata"),
                    "model": a.served_model_name, "object": "response", "output": output,
                    "input_messages": None, "output_messages": None,
                    "parallel_tool_calls": body.get("parallel_tool_calls", True), "temperature": temperature,
                    "tool_choice": body.get("tool_choice", "auto"), "tools": [], "top_p": top_p,
                    "background": bool(body.get("background", False)), "max_output_tokens": max_tokens,
                    "max_tool_calls": None, "previous_response_id": prev_id, "prompt": None, "reasoning": None,
                    "service_tier": body.get("service_tier", "auto"), "status": status, "text": text,
                    "top_logprobs": None, "truncation": body.get("truncation", "disabled"), "usage": usage,
                    "user": body.get("user")}

        def message(content):
            # `_make_response_output_items`: one message, only when there is text.
            if not content:
                return []
            return [{"id": "msg_" + uuid.uuid4().hex,
                     "content": [{"annotations": [], "text": content, "type": "output_text", "logprobs": None}],
                     "role": "assistant", "status": "completed", "type": "message"}]

        def keep(resp):
            if store:
                with e.lock:
                    e.response_store[resp["id"]] = {"response": resp, "messages": messages}

        e.admit()
        try:
            time.sleep(e.b("prefill_ms", 5) / 1000.0)
            if not stream:
                for _ in range(max_tokens):
                    e.token()
                with e.lock:
                    e.prompt_tokens_total += n_prompt
                content = "".join(pieces)
                if a.enable_log_outputs:
                    log("INFO", "logger.py:71", "Generated response %s: output: %r, output_token_ids: None, finish_reason: length"
                        % (request_id, content))
                resp = response("completed", message(content), max_tokens)
                keep(resp)
                # api_server.py: JSONResponse(content=generator.model_dump()), Starlette's compact JSON.
                return self.send_json(200, resp)
            self.responses_stream(response, message, keep, pieces, n_prompt)
        except (BrokenPipeError, ConnectionResetError):
            pass  # with_cancellation: the client went away
        finally:
            e.release()

    def responses_stream(self, response, message, keep, pieces, n_prompt):
        """serving_responses.py `responses_stream_generator` and `_process_simple_streaming_events`,
        framed by api_server.py `_convert_stream_to_sse_events` ("event: <type>\\ndata: <json>\\n\\n",
        `event.model_dump_json()`, no [DONE]). Each event is an openai-python model: the
        `response` of created/in_progress/completed is re-validated as openai's `Response`
        (so it gains `error`, `conversation`, `prompt_cache_key`, `safety_identifier`, keeps
        vLLM's extra `input_messages`/`output_messages` last, and `created_at` becomes a float).
        What vLLM v0.11.0 sends, defects included:
        - `content_index` counts up across the item's events (1 for the first delta, then 2, 3...,
          `current_content_index += 1` after each), where OpenAI's is the part's index (0);
        - message item ids are `str(uuid.uuid4())` in events but `msg_<hex>` in the final response;
        - `response.completed` is built by `responses_full_generator` from SimpleContext, which
          keeps only the last output (RequestOutputKind.DELTA): its `output` holds the last
          delta's text only, while `usage.output_tokens` counts every token;
        - never `response.incomplete`; an exception in the generator (engine error) is not caught:
          uvicorn drops the connection mid-body (no terminal event, no last chunk).
        """
        e = self.engine
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        seq = [0]

        def send(obj):
            # openai-python declares event fields in alphabetical order; pydantic dumps them so.
            obj["sequence_number"] = seq[0]
            obj = dict(sorted(obj.items()))
            kind = obj["type"]
            seq[0] += 1
            data = ("event: %s\ndata: %s\n\n" % (kind, json.dumps(obj, separators=(",", ":"), ensure_ascii=False))).encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def as_openai(r):
            # openai.types.responses.Response field order, then the extras vLLM's dict had.
            out = {"id": r["id"], "created_at": float(r["created_at"]), "error": None}
            for k in ("incomplete_details", "instructions", "metadata", "model", "object", "output",
                      "parallel_tool_calls", "temperature", "tool_choice", "tools", "top_p", "background"):
                out[k] = r[k]
            out["conversation"] = None
            for k in ("max_output_tokens", "max_tool_calls", "previous_response_id", "prompt"):
                out[k] = r[k]
            out["prompt_cache_key"] = None
            out["reasoning"] = r["reasoning"]
            out["safety_identifier"] = None
            for k in ("service_tier", "status", "text", "top_logprobs", "truncation", "usage", "user",
                      "input_messages", "output_messages"):
                out[k] = r[k]
            return out

        def part(text, logprobs):
            return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}

        initial = as_openai(response("in_progress", [], None))
        send({"response": initial, "type": "response.created"})
        send({"response": initial, "type": "response.in_progress"})
        item_id = str(uuid.uuid4())
        content_index = 0
        error_after = e.b("error_after")
        for i, piece in enumerate(pieces):
            if error_after is not None and i >= int(error_after):
                # The generator raises; nothing catches it before uvicorn, which logs it and
                # closes the connection without the chunked body's last chunk.
                log("ERROR", "h11_impl.py:408", "Exception in ASGI application")
                self.close_connection = True
                return
            hang_after = e.b("hang_after")
            if hang_after is not None and i >= int(hang_after):
                with e.lock:
                    e.behaviour["hang"] = True
            e.token()
            if i == 0:
                send({"item": {"id": item_id, "content": [], "role": "assistant", "status": "in_progress", "type": "message"},
                      "output_index": 0, "type": "response.output_item.added"})
                send({"content_index": content_index, "item_id": item_id, "output_index": 0, "part": part("", []),
                      "type": "response.content_part.added"})
                content_index += 1
            send({"content_index": content_index, "delta": piece, "item_id": item_id, "logprobs": [], "output_index": 0,
                  "type": "response.output_text.delta"})
            content_index += 1
        with e.lock:
            e.prompt_tokens_total += n_prompt
        final = "".join(pieces)
        if pieces:
            send({"content_index": content_index, "item_id": item_id, "logprobs": [], "output_index": 0, "text": final,
                  "type": "response.output_text.done"})
            content_index += 1
            done = part(final, None)
            send({"content_index": content_index, "item_id": item_id, "output_index": 0, "part": done,
                  "type": "response.content_part.done"})
            content_index += 1
            send({"item": {"id": item_id, "content": [done], "role": "assistant", "status": "completed", "type": "message",
                           "summary": []}, "output_index": 0, "type": "response.output_item.done"})
        last = response("completed", message(pieces[-1] if pieces else ""), len(pieces))
        keep(last)
        send({"response": as_openai(last), "type": "response.completed"})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True


def main() -> int:
    argv = sys.argv[1:]
    if not argv or argv[0] != "serve":
        print("usage: fake_vllm.py serve MODEL [options]", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="vllm serve")
    p.add_argument("model")
    p.add_argument("--served-model-name", "--served_model_name", dest="served_model_name")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-num-seqs", "--max_num_seqs", dest="max_num_seqs", type=int, default=256)
    p.add_argument("--max-model-len", "--max_model_len", dest="max_model_len", type=int, default=4096)
    p.add_argument("--enable-prompt-tokens-details", action="store_true")
    p.add_argument("--enable-auto-tool-choice", action="store_true")
    p.add_argument("--tool-call-parser")
    p.add_argument("--enable-log-requests", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--enable-log-outputs", action="store_true")
    p.add_argument("--api-key")
    args, unknown = p.parse_known_args(argv[1:])
    args.served_model_name = args.served_model_name or args.model
    # cli_args.py validate_parsed_serve_args
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        print("TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser", file=sys.stderr)
        return 1
    log("INFO", "api_server.py:1885", "vLLM API server version %s" % VERSION)
    log("INFO", "utils.py:233", "non-default args: %s" % {k: v for k, v in vars(args).items() if v} )
    if unknown:
        log("WARNING", "fake", "flags the fake ignores: %s" % unknown)
    Handler.engine = Engine(args)
    # setup_server: bind first (reserves the port), listen only once the engine is built.
    server = ThreadingHTTPServer((args.host, args.port), Handler, bind_and_activate=False)
    server.daemon_threads = True
    server.allow_reuse_address = True
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.server_bind()
    log("INFO", "core.py:77", "Initializing a V1 LLM engine (v%s) with config: model=%r" % (VERSION, args.model))
    time.sleep(float(os.environ.get("FAKE_VLLM_LOAD_SECONDS", "0.3")))
    server.server_activate()
    log("INFO", "launcher.py:44", "Route: /v1/chat/completions, Methods: POST")
    log("INFO", "launcher.py:44", "Route: /v1/responses, Methods: POST")
    log("INFO", "api_server.py:1935", "Starting vLLM API server 0 on http://%s:%d" % (args.host, args.port))
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    import signal

    def _stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    sys.exit(main())
