"""Generations and their images in Postgres: the queries and the row-to-model mapping."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from bot.core.database import Connection
from bot.core.models import (
    Destination,
    Generation,
    GenerationKind,
    GenerationStatus,
    ImageRecord,
    InputRecord,
    Request,
    UserIdentity,
    request_fields,
)

# Every column of the generation (options included, by name), and its owner's identity.
GENERATION_COLUMNS = "g.*, u.platform AS owner_platform, u.platform_user_id, u.display_name"
FROM_GENERATIONS = "FROM image.generations g JOIN image.users u ON u.id = g.user_id"
INPUT_COLUMNS = "id, generation_id, index, storage_key, sha256, mime_type, width, height, bytes"
IMAGE_COLUMNS = "id, generation_id, index, storage_key, url, mime_type, width, height, bytes, seed, file_refs"
REQUEST_COLUMNS = tuple(f.name for f in fields(Request))


@dataclass(frozen=True)
class NewGeneration:
    """A generation to accept: who asks, what, of which kind, what it costs, where its result goes."""

    id: str
    owner: UserIdentity
    request: Request
    kind: GenerationKind
    parent_generation_id: str | None
    parent_image_id: str | None
    warnings: tuple[str, ...]
    cost: int
    idempotency_key: str | None
    destination: Destination

    def row(self) -> dict[str, Any]:
        """Its image.generations row, by column name (the accepting SQL fills in the user and the defaults)."""
        return {
            **request_fields(self.request),
            "id": self.id,
            "kind": self.kind,
            "parent_generation_id": self.parent_generation_id,
            "parent_image_id": self.parent_image_id,
            "warnings": list(self.warnings),
            "credits_reserved": self.cost,
            "idempotency_key": self.idempotency_key,
            "platform": self.destination.platform,
            "chat_id": self.destination.chat_id,
            "message_id": self.destination.message_id,
            "reply_context": self.destination.context,
        }

    def queued(self, user_id: int, created_at: datetime) -> Generation:
        """The job as just accepted, without reading it back."""
        return Generation(
            **request_fields(self.request),
            id=self.id, user_id=user_id, owner=self.owner, kind=self.kind,
            parent_generation_id=self.parent_generation_id, parent_image_id=self.parent_image_id,
            status=GenerationStatus.QUEUED, error_code=None, error_message=None, warnings=self.warnings,
            credits_reserved=self.cost, credits_refunded=0, destination=self.destination,
            created_at=created_at, started_at=None, finished_at=None,
        )


def generation_from_row(row: asyncpg.Record) -> Generation:
    return Generation(
        **{name: row[name] for name in REQUEST_COLUMNS},
        id=row["id"],
        user_id=row["user_id"],
        owner=UserIdentity(row["owner_platform"], row["platform_user_id"], row["display_name"]),
        kind=GenerationKind(row["kind"]),
        parent_generation_id=row["parent_generation_id"],
        parent_image_id=row["parent_image_id"],
        status=GenerationStatus(row["status"]),
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


async def get_generation(conn: Connection, generation_id: str) -> Generation | None:
    row = await conn.fetchrow(
        f"SELECT {GENERATION_COLUMNS} {FROM_GENERATIONS} WHERE g.id = $1 AND g.deleted_at IS NULL", generation_id
    )
    return generation_from_row(row) if row else None


async def get_images(conn: Connection, generation_ids: Sequence[str]) -> dict[str, list[ImageRecord]]:
    rows = await conn.fetch(
        f"SELECT {IMAGE_COLUMNS} FROM image.images WHERE generation_id = ANY($1) ORDER BY generation_id, index",
        list(generation_ids),
    )
    return _by_generation(rows, generation_ids, image_from_row)


async def get_image(conn: Connection, image_id: str) -> ImageRecord | None:
    row = await conn.fetchrow(f"SELECT {IMAGE_COLUMNS} FROM image.images WHERE id = $1", image_id)
    return image_from_row(row) if row else None


async def get_inputs(conn: Connection, generation_ids: Sequence[str]) -> dict[str, list[InputRecord]]:
    rows = await conn.fetch(
        f"SELECT {INPUT_COLUMNS} FROM image.input_images WHERE generation_id = ANY($1) ORDER BY generation_id, index",
        list(generation_ids),
    )
    return _by_generation(rows, generation_ids, lambda row: InputRecord(**dict(row)))


async def add_inputs(conn: Connection, inputs: Sequence[InputRecord]) -> None:
    """Record the pictures a generation starts from (in the transaction that accepts it)."""
    await conn.executemany(
        f"INSERT INTO image.input_images ({INPUT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        [(i.id, i.generation_id, i.index, i.storage_key, i.sha256, i.mime_type, i.width, i.height, i.bytes)
         for i in inputs],
    )


async def unused_input_keys(conn: Connection, keys: Sequence[str]) -> list[str]:
    """Of these stored input files, those no generation records (a refused request's)."""
    used = await conn.fetch(
        "SELECT DISTINCT storage_key FROM image.input_images WHERE storage_key = ANY($1)", list(keys)
    )
    taken = {r["storage_key"] for r in used}
    return [k for k in keys if k not in taken]


async def set_file_refs(conn: Connection, platform: str, refs: dict[str, str]) -> None:
    """Remember each image's platform handle (e.g. a Telegram file_id), all in one statement."""
    if not refs:
        return
    await conn.execute(
        """UPDATE image.images i SET file_refs = i.file_refs || jsonb_build_object($1::text, r.ref)
           FROM unnest($2::text[], $3::text[]) AS r(id, ref) WHERE i.id = r.id""",
        platform, list(refs), list(refs.values()),
    )


async def set_message(
    conn: Connection, generation_id: str, message_id: str, context: dict[str, Any] | None
) -> None:
    await conn.execute(
        """UPDATE image.generations
           SET message_id = $2, reply_context = reply_context || coalesce($3::jsonb, '{}'::jsonb)
           WHERE id = $1""",
        generation_id, message_id, json.dumps(context) if context else None,
    )


async def history(
    conn: Connection, account_id: int, offset: int, limit: int
) -> tuple[list[Generation], int]:
    """The account's generations, by any of its identities (linked platforms show together)."""
    total = await conn.fetchval(
        """SELECT count(*) FROM image.generations
           WHERE user_id IN (SELECT id FROM image.users WHERE account_id = $1) AND deleted_at IS NULL""",
        account_id,
    )
    rows = await conn.fetch(
        f"""SELECT {GENERATION_COLUMNS} {FROM_GENERATIONS}
            WHERE u.account_id = $1 AND g.deleted_at IS NULL
            ORDER BY g.created_at DESC, g.id DESC OFFSET $2 LIMIT $3""",
        account_id, offset, limit,
    )
    return [generation_from_row(r) for r in rows], total


async def mark_deleted(conn: Connection, generation_id: str) -> None:
    await conn.execute("UPDATE image.generations SET deleted_at = now() WHERE id = $1", generation_id)


Item = TypeVar("Item")


def _by_generation(
    rows: Sequence[asyncpg.Record], generation_ids: Sequence[str], make: Callable[[asyncpg.Record], Item]
) -> dict[str, list[Item]]:
    """Rows grouped by their generation, in the rows' order; every asked-for generation has a list."""
    found: dict[str, list[Item]] = {gid: [] for gid in generation_ids}
    for row in rows:
        found[row["generation_id"]].append(make(row))
    return found
