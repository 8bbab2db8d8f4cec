"""Under a burst, what Telegram waits on with a deadline (a callback query) is answered before the queued
commands are: the real python-telegram-bot against the fake Bot API server."""

from __future__ import annotations

from typing import Any

import pytest
from telegram import Update

from bot.adapters.telegram.frontend import CONCURRENT_UPDATES
from bot.adapters.telegram.updates import has_deadline
from tests.fakes.telegram_harness import RuntimeFactory, running_bot
from tests.fakes.telegram_server import FakeTelegram, fake_telegram_server

ANN = 1001


@pytest.fixture
async def fake() -> Any:
    async with fake_telegram_server() as server:
        yield server


async def test_a_button_is_answered_before_the_queued_imagines(
    runtime_factory: RuntimeFactory, fake: FakeTelegram
) -> None:
    ann = fake.user(ANN, "Ann")
    crowd = [fake.user(6000 + i, f"U{i}") for i in range(3 * CONCURRENT_UPDATES)]
    async with running_bot(runtime_factory, fake):
        fake.send(ann, "/imagine an old tram")
        [photo] = await fake.wait_sent("sendPhoto", ANN)
        # Every /imagine holds its turn a while (its "Queued" reply is slow to go out); the press comes last,
        # in the same batch of updates.
        fake.delay("sendMessage", 1.0)
        fake.push(*(fake.message_update(user, f"/imagine a crowd scene {i}") for i, user in enumerate(crowd)))
        query_id = fake.press(ann, photo.result, photo.callback_data()[0])
        [answer] = await fake.wait_sent(
            "answerCallbackQuery", where=lambda call: call.params["callback_query_id"] == query_id
        )
        replies = [await fake.wait_sent("sendMessage", user["id"], within=30) for user in crowd]
    assert fake.queries[query_id]
    first_reply = min(call.finished for calls in replies for call in calls if call.finished)
    assert answer.finished is not None and answer.finished < first_reply


def test_callback_and_pre_checkout_queries_have_deadlines() -> None:
    user = {"id": ANN, "is_bot": False, "first_name": "Ann"}
    pre_checkout = {"id": "1", "from": user, "currency": "XTR", "total_amount": 5, "invoice_payload": "p"}
    message = {"message_id": 1, "date": 0, "chat": {"id": ANN, "type": "private"}, "from": user, "text": "/imagine"}
    assert has_deadline(Update.de_json({"update_id": 1, "pre_checkout_query": pre_checkout}, None))
    assert not has_deadline(Update.de_json({"update_id": 2, "message": message}, None))
