"""A small fake of the Telegram Bot API, enough for a polling bot: getMe, deleteWebhook,
getUpdates (long polling), sendMessage, editMessageText, sendChatAction.

Shapes follow the Bot API reference (core.telegram.org/bots/api): every answer is
`{"ok": true, "result": ...}` or `{"ok": false, "error_code", "description"}`; methods are
`POST /bot<token>/<method>` with parameters form-encoded (python-telegram-bot sends
`application/x-www-form-urlencoded`, JSON-encoding non-string values) or as a JSON body;
`getUpdates` holds the request up to `timeout` seconds and confirms updates below `offset`;
`editMessageText` of an unchanged text is refused with "message is not modified". Messages
are `Message` objects (message_id, date, chat, from, text). It keeps every call, so a test
can check what the bot did.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlparse

BOT = {"id": 7000000001, "is_bot": True, "first_name": "Cocoon", "username": "cocoon_test_bot",
       "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}


class FakeBotApi:
    def __init__(self, token: str):
        self.token = token
        self.lock = threading.Condition()
        self.updates: list[dict] = []
        self.next_update = 1
        self.next_message = 100
        self.messages: dict[tuple[int, int], dict] = {}
        self.calls: list[tuple[str, dict]] = []
        self.server: ThreadingHTTPServer | None = None

    # -- what a test does ----------------------------------------------------------------
    def user_says(self, chat_id: int, text: str, first_name: str = "Ada") -> None:
        """A private message from a user, delivered with the next getUpdates."""
        with self.lock:
            msg = {"message_id": self._message_id(), "date": int(time.time()),
                   "chat": {"id": chat_id, "type": "private", "first_name": first_name},
                   "from": {"id": chat_id, "is_bot": False, "first_name": first_name, "language_code": "en"},
                   "text": text}
            if text.startswith("/"):
                msg["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
            self.updates.append({"update_id": self.next_update, "message": msg})
            self.next_update += 1
            self.lock.notify_all()

    def calls_of(self, method: str) -> list[dict]:
        with self.lock:
            return [p for m, p in self.calls if m == method]

    def text_of(self, chat_id: int, message_id: int) -> str | None:
        with self.lock:
            m = self.messages.get((chat_id, message_id))
            return m["text"] if m else None

    # -- the API ---------------------------------------------------------------------------
    def _message_id(self) -> int:
        self.next_message += 1
        return self.next_message

    def handle(self, method: str, p: dict) -> tuple[bool, object]:
        with self.lock:
            self.calls.append((method, p))
        if method == "getMe":
            return True, BOT
        if method in ("deleteWebhook", "sendChatAction", "setMyCommands"):
            return True, True
        if method == "getUpdates":
            offset = int(p.get("offset", 0) or 0)
            deadline = time.monotonic() + float(p.get("timeout", 0) or 0)
            with self.lock:
                # Updates below the offset are confirmed: drop them, as Telegram does.
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
                while not self.updates and time.monotonic() < deadline:
                    self.lock.wait(timeout=max(0.0, deadline - time.monotonic()))
                return True, list(self.updates[: int(p.get("limit", 100) or 100)])
        if method == "sendMessage":
            chat_id = int(p["chat_id"])
            with self.lock:
                msg = {"message_id": self._message_id(), "date": int(time.time()),
                       "chat": {"id": chat_id, "type": "private"}, "from": BOT, "text": p["text"]}
                self.messages[(chat_id, msg["message_id"])] = msg
                return True, msg
        if method == "editMessageText":
            key = (int(p["chat_id"]), int(p["message_id"]))
            with self.lock:
                msg = self.messages.get(key)
                if msg is None:
                    return False, (400, "Bad Request: message to edit not found")
                if msg["text"] == p["text"]:
                    return False, (400, "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message")
                msg = {**msg, "text": p["text"], "edit_date": int(time.time())}
                self.messages[key] = msg
                return True, msg
        return False, (404, "Not Found: method not found")

    def start(self) -> int:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 (http.server's naming)
                self._serve()

            def do_GET(self):  # noqa: N802
                self._serve()

            def _serve(self):
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 2 or parts[0] != f"bot{api.token}":
                    return self._answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                ctype = self.headers.get("content-type", "")
                params: dict = dict(parse_qsl(url.query))
                if raw and ctype.startswith("application/json"):
                    params.update(json.loads(raw))
                elif raw:
                    params.update(dict(parse_qsl(raw.decode())))
                ok, result = api.handle(parts[1], params)
                if ok:
                    return self._answer(200, {"ok": True, "result": result})
                code, description = result
                self._answer(code, {"ok": False, "error_code": code, "description": description})

            def _answer(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
