"""The bot's Bot API transport (aiohttp under PTB's BaseRequest): the real PTB Bot against the fake Bot API
server. Parameters and uploads arrive as Telegram reads them, timeouts and network failures become PTB's own
errors (what the rest of the bot handles), and a request that never got a connection was not sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from telegram import Bot
from telegram.error import NetworkError, TimedOut

from bot.adapters.telegram.transport import AiohttpRequest
from tests.fakes.core import png
from tests.fakes.telegram_server import FakeTelegram, fake_telegram_server

GROUP = -100777


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with fake_telegram_server() as server:
        server.group(GROUP)
        yield server


def bot_on(fake: FakeTelegram, request: AiohttpRequest, base_url: str | None = None) -> Bot:
    return Bot(fake.token, base_url=base_url or fake.base_url, request=request, get_updates_request=AiohttpRequest(1))


async def test_parameters_and_an_upload_arrive_as_telegram_reads_them(fake: FakeTelegram) -> None:
    image = png()
    async with bot_on(fake, AiohttpRequest(4)) as bot:
        text = await bot.send_message(GROUP, "héllo ✨", reply_markup=None)
        photo = await bot.send_photo(GROUP, image, caption="a lighthouse")
    assert text.text == "héllo ✨"
    [sent] = fake.sent("sendPhoto", GROUP)
    assert sent.params["caption"] == "a lighthouse"
    assert sent.files["photo"].data == image
    assert photo.photo


async def test_a_bot_initialized_again_after_shutdown_still_sends(fake: FakeTelegram) -> None:
    bot = bot_on(fake, AiohttpRequest(2))
    async with bot:
        await bot.send_message(GROUP, "one")
    async with bot:
        await bot.send_message(GROUP, "two")
    assert [c.params["text"] for c in fake.sent("sendMessage", GROUP)] == ["one", "two"]


async def test_a_request_that_waited_too_long_for_a_connection_was_not_sent(fake: FakeTelegram) -> None:
    fake.delay("sendMessage", 1.0)
    async with bot_on(fake, AiohttpRequest(1, pool_timeout=0.2, read_timeout=5.0)) as bot:
        first = asyncio.create_task(bot.send_message(GROUP, "holds the only connection"))
        await asyncio.sleep(0.1)
        with pytest.raises(TimedOut, match="not sent"):
            await bot.send_message(GROUP, "never sent")
        await first
    assert [c.params["text"] for c in fake.calls if c.method == "sendMessage"] == ["holds the only connection"]


async def test_a_slow_answer_is_a_timeout(fake: FakeTelegram) -> None:
    fake.delay("sendMessage", 1.0)
    async with bot_on(fake, AiohttpRequest(1, read_timeout=0.2)) as bot:
        with pytest.raises(TimedOut) as raised:
            await bot.send_message(GROUP, "slow")
    assert "not sent" not in raised.value.message  # it may have gone through


async def test_an_unreachable_api_is_a_network_error(fake: FakeTelegram, unused_port: int) -> None:
    request = AiohttpRequest(1)
    await request.initialize()
    try:
        with pytest.raises(NetworkError) as raised:
            await request.post(f"http://127.0.0.1:{unused_port}/bot{fake.token}/getMe")
    finally:
        await request.shutdown()
    assert not isinstance(raised.value, TimedOut)
