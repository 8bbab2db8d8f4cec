"""One account across platforms: one-time link codes, and joining the identity that uses one with the
identity that made it. The credits a join moves go through bot.core.credits (join_accounts)."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass

from bot.core import credits
from bot.core.database import Connection
from bot.core.errors import InvalidRequest

log = logging.getLogger(__name__)

# Letters and digits that can't be mistaken for one another when copied by hand (no 0/O, 1/I/L).
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_GROUPS, GROUP_LENGTH = 3, 4  # "ABCD-EFGH-JKMN": about 59 bits, unguessable in 10 minutes
CODE_SHAPE = re.compile(r"^[A-Za-z0-9-]{6,16}$")
VALID_MINUTES = 10

WRONG_CODE = "That code is wrong or has expired. Use /link on the other platform for a new one."
USED_CODE = "That code was already used. Use /link on the other platform for a new one."
OWN_CODE = "That code is your own: use it on your other platform."
ALREADY_LINKED = "These two are already one account."


def new_code() -> str:
    groups = ("".join(secrets.choice(CODE_ALPHABET) for _ in range(GROUP_LENGTH)) for _ in range(CODE_GROUPS))
    return "-".join(groups)


def _hash(code: str) -> str:
    return hashlib.sha256(code.strip().upper().encode()).hexdigest()


async def issue_code(conn: Connection, user_id: int) -> str:
    code = new_code()
    await conn.execute(
        """INSERT INTO image.link_codes (code_hash, user_id, expires_at)
           VALUES ($1, $2, now() + make_interval(mins => $3))""",
        _hash(code), user_id, VALID_MINUTES,
    )
    return code


@dataclass(frozen=True)
class Linked:
    moved: int  # the credits the joining identity's account brought
    balance: int  # the joined account's, after
    platforms: tuple[str, ...]  # the account's identities' platforms, after


async def use_code(conn: Connection, user_id: int, code: str) -> Linked:
    """Join the identity `user_id` (and its account's other identities) into the account of the identity
    that made `code`. Refused, changing nothing, for a wrong, expired or used code, the maker's own, two
    identities already one account, or accounts that both have an identity on the same platform."""
    code = code.strip()
    if not CODE_SHAPE.match(code):
        raise InvalidRequest(WRONG_CODE)
    code_hash = _hash(code)
    async with conn.transaction():
        row = await conn.fetchrow(
            """SELECT user_id, used_at, expires_at > now() AS valid FROM image.link_codes
               WHERE code_hash = $1 FOR UPDATE""",
            code_hash,
        )
        if row is None or (row["used_at"] is None and not row["valid"]):
            raise InvalidRequest(WRONG_CODE)
        if row["used_at"] is not None:
            raise InvalidRequest(USED_CODE)
        maker = row["user_id"]
        if maker == user_id:
            raise InvalidRequest(OWN_CODE)
        locked = await credits.lock_accounts(conn, [maker, user_id])
        into_account, from_account = locked[maker], locked[user_id]
        if into_account == from_account:
            raise InvalidRequest(ALREADY_LINKED)
        shared = await conn.fetchval(
            """SELECT min(platform) FROM image.users WHERE account_id = $1
               AND platform IN (SELECT platform FROM image.users WHERE account_id = $2)""",
            into_account, from_account,
        )
        if shared is not None:
            raise InvalidRequest(
                f"That account already has a {shared.capitalize()} identity: an account has one per platform."
            )
        moved = await credits.join_accounts(conn, into_account, from_account, user_id, f"link:{code_hash[:32]}")
        moved_users = await conn.fetch(
            "UPDATE image.users SET account_id = $1 WHERE account_id = $2 RETURNING id", into_account, from_account
        )
        await conn.execute(
            """INSERT INTO image.account_links (into_account, from_account, moved, user_ids)
               VALUES ($1, $2, $3, $4)""",
            into_account, from_account, moved, [r["id"] for r in moved_users],
        )
        await conn.execute(
            "UPDATE image.link_codes SET used_at = now(), used_by = $2 WHERE code_hash = $1", code_hash, user_id
        )
        balance = await conn.fetchval("SELECT balance FROM image.accounts WHERE id = $1", into_account)
        platforms = await conn.fetch(
            "SELECT DISTINCT platform FROM image.users WHERE account_id = $1 ORDER BY platform", into_account
        )
    log.info("accounts: account %d joined into %d (%d credits moved)", from_account, into_account, moved)
    return Linked(moved, balance, tuple(r["platform"] for r in platforms))


async def same_account(conn: Connection, user_id: int, platform: str, platform_user_id: str) -> bool:
    """Whether the identity (platform, platform_user_id) belongs to the account of user `user_id`."""
    same: bool | None = await conn.fetchval(
        """SELECT u.account_id = (SELECT account_id FROM image.users WHERE id = $1) FROM image.users u
           WHERE u.platform = $2 AND u.platform_user_id = $3""",
        user_id, platform, platform_user_id,
    )
    return bool(same)


async def unlink(conn: Connection, platform: str, platform_user_id: str) -> int | None:
    """The operator's undo: the identity leaves its account for a new, empty one of its own (the credits
    stay; split them with `credits grant` / `revoke`). The new account's id, or None when the identity
    is alone in its account or unknown."""
    async with conn.transaction():
        user_id = await conn.fetchval(
            "SELECT id FROM image.users WHERE platform = $1 AND platform_user_id = $2", platform, platform_user_id
        )
        if user_id is None:
            return None
        account = await conn.fetchval("SELECT r_account_id FROM image.lock_account($1)", user_id)
        others = await conn.fetchval(
            "SELECT count(*) FROM image.users WHERE account_id = $1 AND id <> $2", account, user_id
        )
        if not others:
            return None
        new_account: int = await conn.fetchval("INSERT INTO image.accounts DEFAULT VALUES RETURNING id")
        await conn.execute("UPDATE image.users SET account_id = $1 WHERE id = $2", new_account, user_id)
    log.info("accounts: %s:%s unlinked from account %d into %d", platform, platform_user_id, account, new_account)
    return new_account
