"""The in-process worker: claims queued jobs, runs them on their provider, stores the images,
settles credits and hands the result to the front end's observer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg
from PIL import Image

from bot.core import generations, queue
from bot.core.aio import all_of
from bot.core.batches import GroupedWriter
from bot.core.catalogue import ModelSpec
from bot.core.errors import ProviderError, ProviderUnavailable
from bot.core.events import DeliveryReceipt, JobObserver
from bot.core.ids import new_id
from bot.core.logcontext import job_id
from bot.core.models import Generation, ImageFile, ImageRecord, UserIdentity
from bot.core.providers.base import GeneratedImage, ImageProvider, InputImage
from bot.core.providers.runner import GenerationSpec, ProviderRunner
from bot.core.safety import safety_identifier
from bot.core.storage.base import ImageStore, StorageError, new_key

log = logging.getLogger(__name__)

SHUTDOWN_MESSAGE = "The bot was restarted before your images were ready."
STORAGE_FAILED_MESSAGE = "The images were made but could not be saved."
DEADLINE_MESSAGE = "The image service took too long."
# How long a question about a job shown but not yet recorded (its images still being stored) waits for it.
RECORD_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class WorkerLimits:
    max_jobs: int
    per_user_jobs: int
    lease_seconds: float
    poll_seconds: float
    job_deadline_seconds: float


class Worker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ImageStore,
        providers: Mapping[str, ImageProvider],
        models: Mapping[str, ModelSpec],
        runner: ProviderRunner,
        observers: Mapping[str, JobObserver],
        limits: WorkerLimits,
    ) -> None:
        self.pool = pool
        self.store = store
        self.providers = providers
        self.models = models
        self.runner = runner
        self.observers = observers
        self.limits = limits
        self.owner = f"worker-{secrets.token_hex(6)}"  # this process's name on the leases it holds
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        # Jobs finishing, or delivered, at about the same time are recorded in one statement (see batches).
        self._finishes: GroupedWriter[queue.Finished, Generation | None] = GroupedWriter(self._record_finished)
        self._delivered: GroupedWriter[queue.Delivered, None] = GroupedWriter(self._mark_delivered)
        # Jobs shown in their chat before they are recorded (see _run), by their id and their images' ids.
        self._unrecorded: dict[str, Unrecorded] = {}

    @property
    def platforms(self) -> list[str]:
        return list(self.observers)

    @property
    def running(self) -> int:
        return len(self._tasks)

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._claim_loop()), asyncio.create_task(self._lease_loop())]

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace_seconds: float) -> None:
        """Take no new work, give running jobs `grace_seconds`, then fail and refund the rest."""
        self._stopping = True
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=grace_seconds)
        for generation_id, task in list(self._tasks.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            async with self.pool.acquire() as conn:
                ended = await queue.fail_unstarted(
                    conn, generation_id, "shutdown", SHUTDOWN_MESSAGE, self.owner, self.limits.lease_seconds
                )
            if ended is not None:
                await self.deliver(generation_id)

    def abort(self, generation_id: str) -> None:
        """Stop a job running in this process (its owner cancelled it; the database already says so)."""
        task = self._tasks.get(generation_id)
        if task is not None:
            task.cancel()

    # --- loops -------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping:
            # Cleared before claiming, not after: a job accepted while the claim is in flight may be missing
            # from its snapshot, and its wake-up must not be lost (it would wait a whole poll interval).
            self._wake.clear()
            try:
                await self._claim_available()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("claiming jobs failed, will retry: %s", error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.limits.poll_seconds):
                    await self._wake.wait()

    async def _claim_available(self) -> None:
        """Fill the free slots, several jobs per query. Fewer jobs than slots means nothing else is
        claimable now: the next accepted or finished job wakes the loop."""
        free = self.limits.max_jobs - len(self._tasks)
        while not self._stopping and free > 0:
            async with self.pool.acquire() as conn:
                jobs = await queue.claim(
                    conn, self.platforms, self.limits.per_user_jobs, self.owner, self.limits.lease_seconds, free
                )
            for job in jobs:
                self._spawn(job.id, self._run(job))
            if len(jobs) < free:
                return
            free = self.limits.max_jobs - len(self._tasks)

    async def _lease_loop(self) -> None:
        """Keep our leases alive, and take over the jobs of processes that died."""
        while not self._stopping:
            await asyncio.sleep(self.limits.lease_seconds / 3)
            try:
                await self.recover()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("lease upkeep failed, will retry: %s", error)

    async def recover(self) -> None:
        """Renew our leases; requeue or fail jobs whose lease ran out; deliver what nobody delivered."""
        async with self.pool.acquire() as conn:
            if self._tasks:
                await queue.renew_leases(conn, self.owner, list(self._tasks), self.limits.lease_seconds)
            failed = await queue.recover_expired(conn, self.platforms, self.owner, self.limits.lease_seconds)
            undelivered = await queue.claim_undelivered(conn, self.platforms, self.owner, self.limits.lease_seconds)
        for generation_id in [*failed, *undelivered]:
            if generation_id not in self._tasks:
                self._spawn(generation_id, self.deliver(generation_id))
        if failed:
            self.wake()

    def _spawn(self, generation_id: str, work: object) -> None:
        task = asyncio.create_task(work)  # type: ignore[arg-type]
        self._tasks[generation_id] = task

        def _done(finished: asyncio.Task[None]) -> None:
            if self._tasks.get(generation_id) is finished:
                del self._tasks[generation_id]
            if not finished.cancelled() and finished.exception() is not None:
                log.error("job %s crashed", generation_id, exc_info=finished.exception())
            self._wake.set()

        task.add_done_callback(_done)

    # --- one job -----------------------------------------------------------------------------

    async def _run(self, job: Generation) -> None:
        job_id.set(job.id)
        log.info("job %s started: model=%s n=%d", job.id, job.model, job.count)
        await self._notify(job, "on_started")
        files, error = await self._make(job)
        stored: list[ImageRecord] = []
        sent: Sent | None = None
        # The images go to the chat while they are being stored: the user does not wait for storage (S3
        # takes tens of milliseconds at best). The job is recorded once both are done; until then, what asks
        # about it waits for the record (see `recorded`).
        self._expect_record(job, files)
        try:
            try:
                if files:
                    provisional = _as_finished(job, _settle(job, [f.record for f in files], error))
                    sent, stored_errors = await self._send_while_storing(provisional, files, stored)
                    error = error or next(iter(stored_errors), None)
            except BaseException:
                await self._discard(stored)
                raise
            outcome = _settle(job, sorted(stored, key=lambda r: r.index), error)
            try:
                finished = await self._finishes.submit(queue.Finished(job.id, outcome))
            except Exception:
                # Not on cancellation: the batch is written regardless, and an orphaned file is better than a
                # recorded image without its file.
                await self._discard(stored)
                raise
        finally:
            self._recorded(job, files)
        if finished is None:
            log.info("job %s was cancelled or taken over while running; result discarded", job.id)
            await self._discard(stored)
            return
        log.info("job %s %s: %d images, refund %d", job.id, outcome.status, len(outcome.images), outcome.refund)
        if sent is None:
            await self._deliver(finished, [])
        elif sent.delivered:
            if len(stored) < len(files):
                log.warning("job %s: %d of %d images were delivered but could not be kept; refunded",
                            job.id, len(files) - len(stored), len(files))
            await self._delivered.submit(queue.Delivered(job.id, job.destination.platform, sent.receipt))
        # Not delivered: it stays undelivered, and recovery delivers it from storage (or its failure).

    async def _make(self, job: Generation) -> tuple[list[ImageFile], ProviderError | None]:
        """The images the provider made, ready to store and send, and the first error of those it did not."""
        model = self.models.get(job.model)
        provider = self.providers.get(model.provider) if model else None
        if model is None or provider is None or not provider.available():
            return [], ProviderUnavailable(f"The model {job.model} is no longer available.")
        try:
            async with asyncio.timeout(self.limits.job_deadline_seconds):
                spec = GenerationSpec(
                    prompt=job.prompt,
                    negative_prompt=job.negative_prompt,
                    count=job.count,
                    aspect_ratio=job.aspect_ratio,
                    seed=job.seed,
                    input_image=await self._input_image(job, model),
                    safety_identifier=safety_identifier(job.owner),
                )

                async def preview(data: bytes, mime_type: str) -> None:
                    await self._notify(job, "on_preview", data, mime_type)

                outcomes = await self.runner.run(provider, model, spec, preview)
        except TimeoutError:
            return [], ProviderUnavailable(DEADLINE_MESSAGE)
        prepared = [await self._prepare(job, o.index, o.image) if o.image else o.error for o in outcomes]
        files = [p for p in prepared if isinstance(p, ImageFile)]
        return files, next((p for p in prepared if isinstance(p, ProviderError)), None)

    async def _send_while_storing(
        self, job: Generation, files: Sequence[ImageFile], stored: list[ImageRecord]
    ) -> tuple[Sent, list[ProviderError]]:
        """Deliver `files` and store them at the same time (the sending starts first). The stored ones are
        added to `stored`; returns how the sending went and the errors of the images that were not stored."""
        results = await asyncio.gather(self._send(job, files), *(self._put(file, stored) for file in files))
        sent, *errors = results
        assert isinstance(sent, Sent)
        return sent, [error for error in errors if isinstance(error, ProviderError)]

    async def _put(self, file: ImageFile, stored: list[ImageRecord]) -> ProviderError | None:
        try:
            await self.store.put(file.record.storage_key, file.data, file.record.mime_type)
        except StorageError as error:
            log.warning("job %s: storing image %d failed: %s", file.record.generation_id, file.record.index, error)
            return ProviderUnavailable(STORAGE_FAILED_MESSAGE)
        except Exception:
            # Not the store's contract, but the image may be on screen already: crashing the job here would
            # run it again and show it twice. Refunded like any image that could not be kept.
            log.exception("job %s: storing image %d failed unexpectedly", file.record.generation_id, file.record.index)
            return ProviderUnavailable(STORAGE_FAILED_MESSAGE)
        stored.append(file.record)
        return None

    def _expect_record(self, job: Generation, files: Sequence[ImageFile]) -> None:
        unrecorded = Unrecorded(job.owner, asyncio.Event())
        for key in (job.id, *(f.record.id for f in files)):
            self._unrecorded[key] = unrecorded

    def _recorded(self, job: Generation, files: Sequence[ImageFile]) -> None:
        unrecorded = self._unrecorded.pop(job.id, None)
        for file in files:
            self._unrecorded.pop(file.record.id, None)
        if unrecorded is not None:
            unrecorded.done.set()

    async def recorded(self, ids: Sequence[str] = (), owner: UserIdentity | None = None) -> None:
        """Wait, briefly, for the jobs shown but not yet recorded that have one of these ids (a job's or an
        image's) or this owner. Returns at once when there are none, which is nearly always."""
        who = (owner.platform, owner.platform_user_id) if owner else None
        waiting = {
            u.done for key, u in self._unrecorded.items()
            if key in ids or (u.owner.platform, u.owner.platform_user_id) == who
        }
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECORD_WAIT_SECONDS):
                    await asyncio.gather(*(done.wait() for done in waiting))

    async def _input_image(self, job: Generation, model: ModelSpec) -> InputImage | None:
        if job.parent_image_id is None or not model.supports_input_image:
            return None
        async with self.pool.acquire() as conn:
            parent = await generations.get_image(conn, job.parent_image_id)
        if parent is None:
            return None
        try:
            return InputImage(await self.store.get(parent.storage_key), parent.mime_type)
        except StorageError as error:
            log.warning("job %s: parent image unavailable, varying by seed only: %s", job.id, error)
            return None

    async def _prepare(self, job: Generation, index: int, image: GeneratedImage) -> ImageFile | ProviderError:
        """The record an image will be stored under, with its bytes (or why it cannot be stored)."""
        width, height = image.width, image.height
        if not width or not height:
            width, height = _measure(image.data)
        key = new_key(image.mime_type)
        try:
            url = await self.store.url(key)
        except StorageError as error:
            log.warning("job %s: no address for image %d: %s", job.id, index, error)
            return ProviderUnavailable(STORAGE_FAILED_MESSAGE)
        record = ImageRecord(
            id=new_id(),
            generation_id=job.id,
            index=index,
            storage_key=key,
            url=url,
            mime_type=image.mime_type,
            width=width,
            height=height,
            bytes=len(image.data),
            seed=image.seed,
            file_refs={},
        )
        return ImageFile(record, image.data)

    async def _discard(self, stored: Sequence[ImageRecord]) -> None:
        for record in stored:
            with contextlib.suppress(StorageError, OSError):
                await self.store.delete(record.storage_key)

    # --- delivery ----------------------------------------------------------------------------

    async def deliver(self, generation_id: str) -> bool:
        """Hand a finished job to its front end. True once delivered; on a platform error it stays
        undelivered and is retried when its lease runs out."""
        job_id.set(generation_id)
        async with self.pool.acquire() as conn:
            job = await generations.get_generation(conn, generation_id)
            records = (await generations.get_images(conn, [generation_id]))[generation_id] if job else []
        if job is None or not job.is_finished:
            return False
        files = await self.load_files(records) if job.status in ("succeeded", "partial") else []
        return await self._deliver(job, files)

    async def _deliver(self, job: Generation, files: Sequence[ImageFile]) -> bool:
        sent = await self._send(job, files)
        if sent.delivered:
            await self._delivered.submit(queue.Delivered(job.id, job.destination.platform, sent.receipt))
        return sent.delivered

    async def _send(self, job: Generation, files: Sequence[ImageFile]) -> Sent:
        """Show a finished job in its chat. A platform error is logged, not raised: the job stays undelivered."""
        observer = self.observers.get(job.destination.platform)
        if observer is None:
            return Sent(False)
        try:
            if job.status in ("succeeded", "partial"):
                return Sent(True, await observer.on_completed(job, files))
            if job.status == "cancelled":
                await observer.on_cancelled(job)
            else:
                await observer.on_failed(job)
        except Exception:
            log.exception("job %s: delivery to %s failed; will retry", job.id, job.destination.platform)
            return Sent(False)
        return Sent(True)

    async def _mark_delivered(self, delivered: Sequence[queue.Delivered]) -> list[None]:
        async with self.pool.acquire() as conn:
            await queue.mark_delivered(conn, delivered)
        return [None] * len(delivered)

    async def _record_finished(self, runs: Sequence[queue.Finished]) -> list[Generation | None]:
        async with self.pool.acquire() as conn:
            finished = await queue.finish(conn, self.owner, self.limits.lease_seconds, runs)
        return [finished.get(run.generation_id) for run in runs]

    async def load_files(self, records: Sequence[ImageRecord]) -> list[ImageFile]:
        """The files of a job's images, read at the same time."""
        contents = await all_of(*(self.store.get(r.storage_key) for r in records))
        return [ImageFile(r, data) for r, data in zip(records, contents, strict=True)]

    async def _notify(self, job: Generation, event: str, *args: object) -> None:
        """Progress events are best effort: a platform hiccup must not fail the job."""
        observer = self.observers.get(job.destination.platform)
        if observer is None:
            return
        try:
            await getattr(observer, event)(job, *args)
        except Exception:
            log.warning("job %s: %s notification failed", job.id, event, exc_info=True)


@dataclass(frozen=True)
class Unrecorded:
    owner: UserIdentity
    done: asyncio.Event


@dataclass(frozen=True)
class Sent:
    """How showing a job in its chat went."""

    delivered: bool
    receipt: DeliveryReceipt | None = None


def _as_finished(job: Generation, outcome: queue.Outcome) -> Generation:
    """The job as it will be recorded with `outcome`, to show it before the record is written."""
    return dataclasses.replace(
        job, status=outcome.status, credits_refunded=outcome.refund,  # type: ignore[arg-type]
        error_code=outcome.error_code, error_message=outcome.error_message,
    )


def _settle(job: Generation, images: Sequence[ImageRecord], error: ProviderError | None) -> queue.Outcome:
    """Refund the images that were not made, at the price reserved for each."""
    per_image = job.credits_reserved // job.count if job.count else 0
    missing = job.count - len(images)
    refund = job.credits_reserved if not images else per_image * missing
    if not images:
        assert error is not None
        return queue.Outcome("failed", (), refund, error.code, error.user_message)
    if missing:
        message = error.user_message if error else "Some images could not be made."
        return queue.Outcome("partial", images, refund, error.code if error else "partial", message)
    return queue.Outcome("succeeded", images, 0, None, None)


def _measure(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size
