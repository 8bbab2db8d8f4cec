"""What providers may learn about a user: a stable hash, never the platform id itself."""

from __future__ import annotations

import hashlib

from bot.core.models import UserIdentity


def safety_identifier(who: UserIdentity) -> str:
    """Lets a provider tell abusive users apart (OpenAI's safety_identifier) without knowing who they are."""
    return hashlib.sha256(f"imagebot:{who.platform}:{who.platform_user_id}".encode()).hexdigest()[:32]
