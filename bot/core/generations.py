"""Generations and their images in Postgres: the queries and the row-to-model mapping."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from bot.core.models import Destination, Generation, ImageRecord, UserIdentity

GENERATION_COLUMNS = """
    g.id, g.user_id, u.platform AS owner_platform, u.platform_user_id, u.display_name,
    g.prompt, g.negative_prompt, g.model, g.aspect_ratio, g.count, g.seed, g.kind,
    g.parent_generation_id, g.parent_image_id, g.status, g.error_code, g.error_message, g.warnings,
    g.credits_reserved, g.credits_refunded, g.platform, g.chat_id, g.message_id, g.reply_context,
    g.created_at, g.started_at, g.finished_at
"""
FROM_GENERATIONS = "FROM image.generations g JOIN image.users u ON u.id = g.user_id"
IMAGE_COLUMNS = "id, generation_id, index, storage_key, url, mime_type, width, height, bytes, seed, file_refs"


@dataclass(frozen=True)
class NewJob:
    """A job to accept: who asks, what it makes, what it costs, where its result goes."""

    id: str
    owner: UserIdentity
    prompt: str
    negative_prompt: str | None
    model: str
    aspect_ratio: str
    count: int
    seed: int
    kind: str
    parent_generation_id: str | None
    parent_image_id: str | None
    warnings: tuple[str, ...]
    cost: int
    idempotency_key: str | None
    destination: Destination


def generation_from_row(row: asyncpg.Record) -> Generation:
    return Generation(
        id=row["id"],
        user_id=row["user_id"],
        owner=UserIdentity(row["owner_platform"], row["platform_user_id"], row["display_name"]),
        prompt=row["prompt"],
        negative_prompt=row["negative_prompt"],
        model=row["model"],
        aspect_ratio=row["aspect_ratio"],
        count=row["count"],
        seed=row["seed"],
        kind=row["kind"],
        parent_generation_id=row["parent_generation_id"],
        parent_image_id=row["parent_image_id"],
        status=row["status"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        warnings=tuple(row["warnings"]),
        credits_reserved=row["credits_reserved"],
        credits_refunded=row["credits_refunded"],
        destination=Destination(
            platform=row["platform"],
            chat_id=row["chat_id"],
            message_id=row["message_id"],
            context=json.loads(row["reply_context"]),
        ),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def image_from_row(row: asyncpg.Record) -> ImageRecord:
    return ImageRecord(
        id=row["id"],
        generation_id=row["generation_id"],
        index=row["index"],
        storage_key=row["storage_key"],
        url=row["url"],
        mime_type=row["mime_type"],
        width=row["width"],
        height=row["height"],
        bytes=row["bytes"],
        seed=row["seed"],
        file_refs=json.loads(row["file_refs"]),
    )


async def get_generation(conn: asyncpg.Connection, generation_id: str) -> Generation | None:
    row = await conn.fetchrow(
        f"SELECT {GENERATION_COLUMNS} {FROM_GENERATIONS} WHERE g.id = $1 AND g.deleted_at IS NULL", generation_id
    )
    return generation_from_row(row) if row else None


async def get_images(conn: asyncpg.Connection, generation_ids: Sequence[str]) -> dict[str, list[ImageRecord]]:
    rows = await conn.fetch(
        f"SELECT {IMAGE_COLUMNS} FROM image.images WHERE generation_id = ANY($1) ORDER BY generation_id, index",
        list(generation_ids),
    )
    found: dict[str, list[ImageRecord]] = {gid: [] for gid in generation_ids}
    for row in rows:
        found[row["generation_id"]].append(image_from_row(row))
    return found


async def get_image(conn: asyncpg.Connection, image_id: str) -> ImageRecord | None:
    row = await conn.fetchrow(f"SELECT {IMAGE_COLUMNS} FROM image.images WHERE id = $1", image_id)
    return image_from_row(row) if row else None


async def set_file_refs(conn: asyncpg.Connection, platform: str, refs: dict[str, str]) -> None:
    """Remember each image's platform handle (e.g. a Telegram file_id), all in one statement."""
    if not refs:
        return
    await conn.execute(
        """UPDATE image.images i SET file_refs = i.file_refs || jsonb_build_object($1::text, r.ref)
           FROM unnest($2::text[], $3::text[]) AS r(id, ref) WHERE i.id = r.id""",
        platform, list(refs), list(refs.values()),
    )


async def set_message(conn: asyncpg.Connection, generation_id: str, message_id: str, context: dict | None) -> None:
    await conn.execute(
        """UPDATE image.generations
           SET message_id = $2, reply_context = reply_context || coalesce($3::jsonb, '{}'::jsonb)
           WHERE id = $1""",
        generation_id, message_id, json.dumps(context) if context else None,
    )


async def history(
    conn: asyncpg.Connection, user_id: int, offset: int, limit: int
) -> tuple[list[Generation], int]:
    total = await conn.fetchval(
        "SELECT count(*) FROM image.generations WHERE user_id = $1 AND deleted_at IS NULL", user_id
    )
    rows = await conn.fetch(
        f"""SELECT {GENERATION_COLUMNS} {FROM_GENERATIONS}
            WHERE g.user_id = $1 AND g.deleted_at IS NULL
            ORDER BY g.created_at DESC, g.id DESC OFFSET $2 LIMIT $3""",
        user_id, offset, limit,
    )
    return [generation_from_row(r) for r in rows], total


async def mark_deleted(conn: asyncpg.Connection, generation_id: str) -> None:
    await conn.execute("UPDATE image.generations SET deleted_at = now() WHERE id = $1", generation_id)
