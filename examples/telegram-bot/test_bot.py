"""End-to-end test of the example bot (run by scripts/telegram-bot-test): the real bot.py, the
fake Bot API (fake_bot_api.py) in this process, and a `cocoon dev` the script started
(OPENAI_BASE_URL / OPENAI_API_KEY point at it; its built-in engine is deterministic and
streams slowly enough that the answer arrives in several edits).

Checks: /start is answered; a question gets a placeholder message, edited while the answer
streams (every edit a longer prefix of the answer, with the typing cursor), and finally
edited to exactly the completion Cocoon-rs gives for the same request without streaming.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from openai import OpenAI

from fake_bot_api import FakeBotApi

HERE = Path(__file__).resolve().parent
TOKEN = "7000000001:AAFakeTokenForTheExampleBotTest"
CHAT = 4242
MAX_TOKENS = 40
CURSOR = " ▌"
SYSTEM = "You are a helpful assistant in a Telegram chat. Keep answers short."


def wait_for(what: str, cond, timeout: float = 60.0):
    start = time.monotonic()
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def main() -> int:
    base_url, key, model = os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"], os.environ.get("COCOON_MODEL", "cocoon-test")
    api = FakeBotApi(TOKEN)
    port = api.start()
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE": f"http://127.0.0.1:{port}/bot",
           "COCOON_MODEL": model, "MAX_TOKENS": str(MAX_TOKENS), "EDIT_EVERY_SECS": "0.05", "LOG_LEVEL": "WARNING"}
    bot = subprocess.Popen([sys.executable, str(HERE / "bot.py")], env=env)
    try:
        wait_for("the bot to poll", lambda: api.calls_of("getUpdates"), 60)

        api.user_says(CHAT, "/start")
        greeting = wait_for("the /start reply", lambda: api.calls_of("sendMessage"))
        assert "Cocoon" in greeting[0]["text"], greeting

        question = "Tell me about confidential computing"
        api.user_says(CHAT, question)
        placeholder = wait_for("the placeholder", lambda: api.calls_of("sendMessage")[1:])[0]
        assert placeholder["text"] == "…", placeholder
        message_id = max(mid for (chat, mid) in api.messages if chat == CHAT)

        # The same request without streaming: what the final message must say.
        expected = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60).chat.completions.create(
            model=model, messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            max_tokens=MAX_TOKENS,
        ).choices[0].message.content.strip()
        assert expected, "the engine answered nothing"
        wait_for("the final answer", lambda: api.text_of(CHAT, message_id) == expected, 60)

        edits = [e["text"] for e in api.calls_of("editMessageText") if int(e["message_id"]) == message_id]
        partial = [t[: -len(CURSOR)] for t in edits if t.endswith(CURSOR)]
        assert len(partial) >= 2, f"expected the answer to arrive in several edits, got {edits}"
        assert all(expected.startswith(p.strip()) for p in partial), (partial, expected)
        assert all(len(a) < len(b) for a, b in zip(partial, partial[1:])), partial
        assert edits[-1] == expected
        assert api.calls_of("sendChatAction"), "typing… was shown"
        print(f"ok: /start answered; the answer streamed in {len(partial)} edits, then the full {len(expected)} characters")
        return 0
    finally:
        bot.terminate()
        try:
            bot.wait(timeout=10)
        except subprocess.TimeoutExpired:
            bot.kill()
        api.stop()


if __name__ == "__main__":
    sys.exit(main())
