"""A Telegram bot that answers through Cocoon-rs, streaming: it sends a placeholder message and
edits it as the completion arrives (python-telegram-bot for Telegram, the `openai` SDK for the
model; Cocoon-rs is an OpenAI-compatible endpoint, so only the base URL and key differ).

    TELEGRAM_BOT_TOKEN=123:ABC OPENAI_BASE_URL=http://127.0.0.1:8080/v1 \
    OPENAI_API_KEY=sk-cocoon-... COCOON_MODEL=cocoon-test python bot.py

Environment:
    TELEGRAM_BOT_TOKEN   the bot's token from @BotFather (required)
    TELEGRAM_API_BASE    Bot API base, default https://api.telegram.org/bot (tests point it at a fake)
    OPENAI_BASE_URL      Cocoon-rs base URL, e.g. http://127.0.0.1:8080/v1 (read by the openai SDK)
    OPENAI_API_KEY       a Cocoon-rs API key, sk-cocoon-... (read by the openai SDK)
    COCOON_MODEL         model id (default: the first one /v1/models lists)
    MAX_TOKENS           completion cap per answer (default 512)
    EDIT_EVERY_SECS      least time between two edits of one answer (default 1.0: Telegram
                         rate-limits edits; about one per second per chat is safe)
"""

from __future__ import annotations

import logging
import os
import time

from openai import APIError, AsyncOpenAI
from telegram import Update
from telegram.constants import ChatAction
from telegram.error import BadRequest
from telegram.ext import Application, ApplicationBuilder, CommandHandler, ContextTypes, MessageHandler, filters

log = logging.getLogger("cocoon-telegram-bot")

# Telegram refuses messages longer than 4096 characters.
MAX_MESSAGE = 4096
CURSOR = " ▌"
SYSTEM = "You are a helpful assistant in a Telegram chat. Keep answers short."


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.effective_message.reply_text(
        "Hi! Send me a message and I will answer through Cocoon, a confidential AI network."
    )


def clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


async def edit(message, text: str) -> None:
    try:
        await message.edit_text(clip(text))
    except BadRequest as e:
        # Editing to the same text is refused by Telegram; nothing to do then.
        if "not modified" not in str(e).lower():
            raise


async def answer(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    msg = update.effective_message
    if msg is None or not msg.text:
        return
    client: AsyncOpenAI = context.application.bot_data["openai"]
    model: str = context.application.bot_data["model"]
    every: float = context.application.bot_data["edit_every"]
    await context.bot.send_chat_action(msg.chat_id, ChatAction.TYPING)
    reply = await msg.reply_text("…")
    text, shown, last = "", "", 0.0
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": msg.text}],
            max_tokens=context.application.bot_data["max_tokens"],
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            now = time.monotonic()
            if text.strip() and text != shown and now - last >= every:
                await edit(reply, text + CURSOR)
                shown, last = text, now
        await edit(reply, text.strip() or "(the model gave an empty answer)")
    except APIError as e:
        log.warning("completion failed: %s", e)
        await edit(reply, f"Sorry, the model is not available right now ({e.__class__.__name__}).")


async def post_init(app: Application) -> None:
    client = AsyncOpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment
    model = os.environ.get("COCOON_MODEL")
    if not model:
        models = await client.models.list()
        model = models.data[0].id
    app.bot_data.update(
        openai=client,
        model=model,
        max_tokens=int(os.environ.get("MAX_TOKENS", "512")),
        edit_every=float(os.environ.get("EDIT_EVERY_SECS", "1.0")),
    )
    log.info("answering with %s through %s", model, client.base_url)


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = (
        ApplicationBuilder()
        .token(os.environ["TELEGRAM_BOT_TOKEN"])
        .base_url(os.environ.get("TELEGRAM_API_BASE", "https://api.telegram.org/bot"))
        .post_init(post_init)
        .concurrent_updates(True)
        .build()
    )
    app.add_handler(CommandHandler("start", start))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, answer))
    app.run_polling(allowed_updates=Update.ALL_TYPES, poll_interval=0.0, timeout=10)


if __name__ == "__main__":
    main()
