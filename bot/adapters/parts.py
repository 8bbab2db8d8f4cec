"""DeliveredParts held in memory only, for an observer's on_completed (which the core calls without
receipts): the in-parts delivery then runs with nothing sent before and nothing kept after."""

from __future__ import annotations

from collections.abc import Mapping

from bot.core.events import DeliveryReceipt, PartReceipt


class UnrecordedParts:
    def __init__(self) -> None:
        self.sent: dict[str, PartReceipt] = {}

    async def record(
        self, part: str, message_id: str | None = None, file_refs: Mapping[str, str] | None = None
    ) -> None:
        self.sent[part] = PartReceipt(message_id, dict(file_refs or {}))

    def receipt(self) -> DeliveryReceipt:
        refs = {image_id: ref for part in self.sent.values() for image_id, ref in part.file_refs.items()}
        return DeliveryReceipt(file_refs=refs)
