"""Short random ids: they go into button payloads (Telegram allows 64 bytes in all) and must not be guessable."""

from __future__ import annotations

import re
import secrets

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{12}")


def new_id() -> str:
    """72 random bits as 12 URL-safe characters."""
    return secrets.token_urlsafe(9)


def is_valid_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value))  # fullmatch: "$" would let a trailing newline in
