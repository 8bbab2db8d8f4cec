"""Telegram Stars through the real python-telegram-bot against the fake Bot API: /buy, the invoice, the
pre-checkout answer (also under a burst of image requests), the payment credited once, an admin's refund,
/paysupport, /terms and /link."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest

from bot.core.models import Destination, ImagineRequest, UserIdentity
from tests.conftest import USER_BALANCE, wait_for
from tests.fakes.telegram_harness import running_bot
from tests.fakes.telegram_server import FakeTelegram, fake_telegram_server

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

ANN, BOB, ADMIN = 2001, 2002, 2009
PACKS = '[{"name": "small", "credits": 50, "stars": 25}, {"name": "big", "credits": 300, "stars": 100},' \
        ' {"name": "discord-only", "credits": 10, "discord_sku_id": "1300000000000000001"}]'


@pytest.fixture
async def fake() -> Any:
    async with fake_telegram_server() as server:
        yield server


async def balance_of(pool: asyncpg.Pool, user_id: int) -> int:
    return await pool.fetchval(f"{USER_BALANCE} WHERE platform = 'telegram' AND platform_user_id = $1", str(user_id))


async def invoice_for(fake: FakeTelegram, user: dict[str, Any], pack: str) -> dict[str, Any]:
    """/buy, press the pack's button: the invoice's parameters."""
    before = len(fake.sent("sendInvoice", user["id"]))
    fake.send(user, "/buy")
    menus = await fake.wait_sent("sendMessage", user["id"], where=lambda c: "buy:small" in c.callback_data())
    fake.press(user, menus[-1].result, f"buy:{pack}")
    invoices = await fake.wait_sent("sendInvoice", user["id"], count=before + 1)
    return invoices[-1].params


async def checkout(fake: FakeTelegram, user: dict[str, Any], payload: str, total: int) -> tuple[bool, str | None]:
    query_id = fake.pre_checkout(user, payload, total)
    answer = await wait_for(lambda: fake.checkout_answer(query_id))
    return answer.params["ok"], answer.params.get("error_message")


async def test_buy_shows_the_star_packs_and_sends_an_invoice_in_stars(runtime_factory, fake, pool) -> None:
    ann = fake.user(ANN, "Ann")
    async with running_bot(runtime_factory, fake, credit_packs=PACKS):
        invoice = await invoice_for(fake, ann, "small")
    menu = fake.sent("sendMessage", ANN)[0]
    assert menu.callback_data() == ["buy:small", "buy:big"]  # the Discord-only pack is not offered here
    assert menu.button_texts() == ["50 credits for 25 ⭐", "300 credits for 100 ⭐"]
    assert invoice["currency"] == "XTR" and not invoice.get("provider_token")
    assert invoice["prices"] == [{"label": "50 credits", "amount": 25}]
    assert 1 <= len(invoice["title"]) <= 32 and 1 <= len(invoice["description"]) <= 255
    assert len(invoice["payload"].encode()) <= 128
    order = await pool.fetchrow("SELECT pack, credits, price, currency FROM image.orders WHERE id = $1",
                                invoice["payload"])
    assert dict(order) == {"pack": "small", "credits": 50, "price": 25, "currency": "XTR"}


async def test_the_default_packs_sell_out_of_the_box(runtime_factory, fake) -> None:
    ann = fake.user(ANN, "Ann")
    async with running_bot(runtime_factory, fake):
        invoice = await invoice_for(fake, ann, "small")
    assert invoice["currency"] == "XTR" and invoice["prices"][0]["amount"] > 0


async def test_pre_checkout_says_yes_only_to_what_was_issued(runtime_factory, fake, pool) -> None:
    ann, bob, banned = fake.user(ANN, "Ann"), fake.user(BOB, "Bob"), fake.user(2003, "Mallory")
    async with running_bot(runtime_factory, fake, credit_packs=PACKS, banned_users="telegram:2003"):
        invoice = await invoice_for(fake, ann, "small")
        payload = invoice["payload"]
        assert await checkout(fake, ann, payload, 25) == (True, None)
        ok, why = await checkout(fake, ann, "order-made-up-by-someone", 25)
        assert not ok and "not one this bot issued" in why
        ok, why = await checkout(fake, bob, payload, 25)
        assert not ok and "someone else" in why
        ok, why = await checkout(fake, ann, payload, 1)
        assert not ok and "price" in why
        ok, why = await checkout(fake, banned, payload, 25)
        assert not ok and "can't buy" in why
        # A pack since withdrawn (an order issued before the operator changed CREDIT_PACKS).
        user_id = await pool.fetchval("SELECT id FROM image.users WHERE platform_user_id = $1", str(ANN))
        await pool.execute(
            "INSERT INTO image.orders VALUES ('order-old', $1, 'telegram', 'withdrawn', 5, 5, 'XTR', now())", user_id
        )
        ok, why = await checkout(fake, ann, "order-old", 5)
        assert not ok and "no longer sold" in why
        # Banned from buying: no invoice either.
        fake.send(banned, "/buy")
        [menu] = await fake.wait_sent("sendMessage", 2003)
        fake.press(banned, menu.result, "buy:small")
        await fake.wait_sent("sendMessage", 2003, count=2)
        assert not fake.sent("sendInvoice", 2003)
    assert await pool.fetchval("SELECT count(*) FROM image.purchases") == 0


async def test_a_payment_delivered_twice_is_credited_once(runtime_factory, fake, pool) -> None:
    ann = fake.user(ANN, "Ann")
    async with running_bot(runtime_factory, fake, credit_packs=PACKS):
        invoice = await invoice_for(fake, ann, "small")
        payment = fake.payment_update(ann, invoice["payload"], 25, charge_id="stxch_once")
        fake.push(payment, payment)
        [thanks] = await fake.wait_sent("sendMessage", ANN, where=lambda c: "Thank you" in c.params["text"])
        fake.send(ann, "/balance")
        await fake.wait_sent("sendMessage", ANN, where=lambda c: "bought" in c.params["text"])
        # Paying the same invoice again is refused at pre-checkout.
        ok, why = await checkout(fake, ann, invoice["payload"], 25)
    assert "50 credits added" in thanks.params["text"] and "balance is 70" in thanks.params["text"]
    assert len(fake.sent("sendMessage", ANN, ok=True)) == 3  # the menu, one thank-you, the balance
    assert await balance_of(pool, ANN) == 70
    rows = await pool.fetch("SELECT delta FROM image.credit_ledger WHERE reason = 'purchase'")
    assert [r["delta"] for r in rows] == [50]
    assert not ok and "already paid" in why


async def test_pre_checkout_is_answered_at_once_behind_200_image_requests(runtime_factory, fake, pool) -> None:
    ann, bob = fake.user(ANN, "Ann"), fake.user(BOB, "Bob")
    async with running_bot(runtime_factory, fake, credit_packs=PACKS, per_user_queued_limit=1000):
        invoice = await invoice_for(fake, ann, "small")
        # Every image request's handler waits on Telegram for a while: 200 of them take well over 10 s
        # through the few update slots.
        fake.delay("sendMessage", 0.25)
        for i in range(200):
            fake.send(bob, f"/imagine a lighthouse number {i}")
        started = time.monotonic()
        query_id = fake.pre_checkout(ann, invoice["payload"], 25)
        answer = await wait_for(lambda: fake.checkout_answer(query_id), within=10)
        waited = time.monotonic() - started
        queued_then = await pool.fetchval("SELECT count(*) FROM image.generations")
        fake.delay("sendMessage", 0)
    assert answer.params["ok"] is True
    assert waited < 3, waited
    assert queued_then < 150  # the image requests were still being worked through


async def test_admin_refund_gives_stars_back_and_takes_what_is_left(runtime_factory, fake, pool) -> None:
    ann, admin = fake.user(ANN, "Ann"), fake.user(ADMIN, "Admin")
    async with running_bot(runtime_factory, fake, credit_packs=PACKS, admin_ids="telegram:2009",
                           starting_credits=0) as bot:
        invoice = await invoice_for(fake, ann, "small")
        fake.push(fake.payment_update(ann, invoice["payload"], 25, charge_id="stxch_refund_me"))
        await fake.wait_sent("sendMessage", ANN, where=lambda c: "Thank you" in c.params["text"])
        await bot.runtime.service.imagine(UserIdentity("telegram", str(ANN)), ImagineRequest("four owls", count=4),
                                          _dest(ANN))
        fake.send(ann, "/refund stxch_refund_me")
        await fake.wait_sent("sendMessage", ANN, where=lambda c: "Only the bot's admins" in c.params["text"])
        fake.send(admin, "/refund stxch_refund_me")
        [done] = await fake.wait_sent("sendMessage", ADMIN, where=lambda c: "Refunded" in c.params["text"])
        fake.send(admin, "/refund stxch_refund_me")
        again = (await fake.wait_sent("sendMessage", ADMIN, count=2))[1]
        fake.send(admin, "/refund no-such-charge")
        await fake.wait_sent("sendMessage", ADMIN, count=3)
    [refund] = fake.sent("refundStarPayment")
    assert refund.params == {"user_id": ANN, "telegram_payment_charge_id": "stxch_refund_me"}
    assert "took back 46 credits; 4 had already been spent" in done.params["text"]
    assert "already been refunded" in again.params["text"]
    assert "That purchase doesn't exist" in fake.sent("sendMessage", ADMIN)[-1].params["text"]
    assert await balance_of(pool, ANN) == 0
    row = await pool.fetchrow("SELECT taken_back, shortfall FROM image.purchases")
    assert (row["taken_back"], row["shortfall"]) == (46, 4)


async def test_paysupport_terms_and_link(runtime_factory, fake, pool) -> None:
    ann = fake.user(ANN, "Ann")
    async with running_bot(runtime_factory, fake, credit_packs=PACKS, payment_support="@imagebot_help") as bot:
        invoice = await invoice_for(fake, ann, "small")
        fake.push(fake.payment_update(ann, invoice["payload"], 25, charge_id="stxch_support"))
        await fake.wait_sent("sendMessage", ANN, where=lambda c: "Thank you" in c.params["text"])
        fake.send(ann, "/paysupport")
        [support] = await fake.wait_sent("sendMessage", ANN, where=lambda c: "@imagebot_help" in c.params["text"])
        fake.send(ann, "/terms")
        await fake.wait_sent("sendMessage", ANN, where=lambda c: "Credits pay for images" in c.params["text"])
        fake.send(ann, "/link")
        [code_message] = await fake.wait_sent("sendMessage", ANN, where=lambda c: "link code" in c.params["text"])
        code = code_message.params["text"].split("Your link code: ")[1].split()[0]
        discord_user = UserIdentity("discord", "77")
        linked = await bot.runtime.accounts.link(discord_user, code)
        fake.send(ann, f"/link {code}")
        await fake.wait_sent("sendMessage", ANN, where=lambda c: "already used" in c.params["text"])
        fake.send(ann, "/link WRONG-CODE")
        await fake.wait_sent("sendMessage", ANN, where=lambda c: "wrong or has expired" in c.params["text"])
    assert "stxch_support" in support.params["text"]
    assert linked.balance == 70 + 20 and linked.platforms == ("discord", "telegram")
    assert await balance_of(pool, ANN) == 90


def _dest(chat: int) -> Destination:
    return Destination("telegram", str(chat), None, {"reply_to": None, "group": False})


async def test_a_payment_naming_no_order_is_sent_to_support(runtime_factory, fake, pool) -> None:
    ann = fake.user(ANN, "Ann")
    async with running_bot(runtime_factory, fake, credit_packs=PACKS):
        fake.push(fake.payment_update(ann, "order-never-issued", 25, charge_id="stxch_lost"))
        [told] = await fake.wait_sent("sendMessage", ANN)
    assert "/paysupport" in told.params["text"] and "stxch_lost" in told.params["text"]
    assert await pool.fetchval("SELECT count(*) FROM image.purchases") == 0
