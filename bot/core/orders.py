"""Orders: what the bot offered a user to pay for. A Telegram invoice's payload is an order's id, so a
payment (and its pre-checkout) can be checked against what was really issued: to whom, which pack, what
price. An unguessable id: a payload made up by anyone else names no order."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from bot.core.database import Connection

ORDER_PREFIX = "order-"  # ids are this and 22 URL-safe characters: well within a payload's 128 bytes


@dataclass(frozen=True)
class Order:
    id: str
    user_id: int
    platform: str
    pack: str
    credits: int
    price: int
    currency: str


async def issue(
    conn: Connection, user_id: int, platform: str, pack: str, credits: int, price: int, currency: str
) -> Order:
    order = Order(ORDER_PREFIX + secrets.token_urlsafe(16), user_id, platform, pack, credits, price, currency)
    await conn.execute(
        """INSERT INTO image.orders (id, user_id, platform, pack, credits, price, currency)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        order.id, user_id, platform, pack, credits, price, currency,
    )
    return order


async def find(conn: Connection, order_id: str) -> Order | None:
    row = await conn.fetchrow(
        "SELECT id, user_id, platform, pack, credits, price, currency FROM image.orders WHERE id = $1", order_id
    )
    return Order(**dict(row)) if row else None
