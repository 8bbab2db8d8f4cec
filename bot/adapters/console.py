"""The console front end: the same core as Discord and Telegram, in a terminal or driven by a script
on stdin. Buttons become commands: `regenerate`, `vary 2`, `cancel`. Images land as files."""

from __future__ import annotations

import asyncio
import getpass
import re
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from bot.adapters.wording import link_code_text, linked_text, plural, refund_text, seeds_text, source_text
from bot.core.account_service import AccountService
from bot.core.errors import BotError, InvalidRequest
from bot.core.events import DeliveryReceipt
from bot.core.input_images import UploadedImage, refuse_if_too_large
from bot.core.models import Destination, Generation, HistoryPage, ImageFile, UserIdentity
from bot.core.prompt import parse_command_text
from bot.core.service import GenerationService
from bot.core.storage.base import EXTENSIONS

PLATFORM = "console"
CHAT_ID = "console"
# `--image path` or `--image "a path with spaces"`, anywhere in the line.
IMAGE_OPTION = re.compile(r'\s*--image\s+(?:"([^"]+)"|(\S+))')

HELP = """Commands:
  /imagine <prompt> [--ar 16:9] [--n 4] [--seed 7] [--model name] [--no <negative>]
                    (plain text works too)
  /imagine <prompt> --image photo.jpg [--image other.png]
                    an edit of your pictures
  regenerate [id]   same prompt, new seed (default: the last generation)
  vary <k> [id]     a variation of image k
  remix <k> <prompt>  image k of the last generation, with a new prompt
  cancel [id]       cancel a queued or running generation
  delete [id]       remove a generation from your history
  /history [page]   your earlier generations
  /balance          your credits and what each model costs
  /models           the models you can use
  /link [code]      a code to join another platform's account, or join one with its code
  wait              wait until every generation you started has finished
  /help, /quit"""


class ConsoleObserver:
    """Shows a job's life on the terminal and writes its images to files."""

    platform = PLATFORM

    def __init__(self, output_dir: Path, write: Callable[[str], None]) -> None:
        self.output_dir = output_dir
        self.write = write
        self.finished: dict[str, asyncio.Event] = {}

    def expect(self, generation_id: str) -> asyncio.Event:
        return self.finished.setdefault(generation_id, asyncio.Event())

    async def on_queued(self, job: Generation, position: int) -> str | None:
        self.expect(job.id)
        ahead = f", {position} ahead of it" if position else ""
        self.write(f"[{job.id}] queued: {job.count} × {job.model}, {job.aspect_ratio}{ahead}")
        for warning in job.warnings:
            self.write(f"[{job.id}] note: {warning}")
        return None

    async def on_started(self, job: Generation) -> None:
        self.write(f"[{job.id}] generating…")

    async def on_preview(self, job: Generation, image: bytes, mime_type: str) -> None:
        self.write(f"[{job.id}] preview received ({len(image)} bytes)")

    async def on_completed(self, job: Generation, images: Sequence[ImageFile]) -> DeliveryReceipt | None:
        paths = await asyncio.to_thread(self._save, job, images)
        seeds = seeds_text([image.record for image in images])
        self.write(f"[{job.id}] done: “{job.prompt}” · {job.model}{f' · {seeds}' if seeds else ''}")
        for image, path in zip(images, paths, strict=True):
            self.write(f"  {image.record.index + 1}: {path}")
        if job.status == "partial":
            self.write(f"[{job.id}] {job.error_message} {refund_text(job)}")
        self._finish(job.id)
        return None

    async def on_failed(self, job: Generation) -> None:
        self.write(f"[{job.id}] failed: {job.error_message} {refund_text(job)}")
        self._finish(job.id)

    async def on_cancelled(self, job: Generation) -> None:
        self.write(f"[{job.id}] cancelled. {refund_text(job)}")
        self._finish(job.id)

    def _finish(self, generation_id: str) -> None:
        self.expect(generation_id).set()

    def _save(self, job: Generation, images: Sequence[ImageFile]) -> list[Path]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for image in images:
            extension = EXTENSIONS.get(image.record.mime_type, "bin")
            path = self.output_dir / f"{job.id}-{image.record.index + 1}.{extension}"
            path.write_bytes(image.data)
            paths.append(path.resolve())
        return paths


class ConsoleFrontEnd:
    """The console as a front end: nothing to connect; `run` reads commands until EOF or `stop`."""

    def __init__(
        self, service: GenerationService, accounts: AccountService, output_dir: Path, write: Callable[[str], None]
    ) -> None:
        self.service = service
        self.accounts = accounts
        self.observer = ConsoleObserver(output_dir, write)

    async def start(self) -> None:
        pass

    async def stop_taking_work(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def run(self, stop: asyncio.Event, stdin: TextIO = sys.stdin) -> bool:
        return await run_console(self.service, self.accounts, self.observer, stop, stdin)


class Console:
    """Reads commands and calls the core: one line, one call."""

    def __init__(
        self, service: GenerationService, accounts: AccountService, observer: ConsoleObserver, user: UserIdentity
    ) -> None:
        self.service = service
        self.accounts = accounts
        self.observer = observer
        self.user = user
        self.write = observer.write
        self.last_generation: str | None = None
        self.destination = Destination(PLATFORM, CHAT_ID)

    async def handle(self, line: str) -> bool:
        """Run one command. False means quit."""
        line = line.strip()
        if not line:
            return True
        command, _, rest = line.partition(" ")
        command = command.lower().lstrip("/")
        try:
            if command in ("quit", "exit"):
                return False
            await self._dispatch(command, rest.strip(), line)
        except BotError as error:
            self.write(f"! {error.user_message}")
        return True

    async def _dispatch(self, command: str, rest: str, line: str) -> None:
        if command == "help":
            self.write(HELP)
        elif command == "imagine":
            await self._imagine(rest)
        elif command in ("regenerate", "reroll"):
            await self._regenerate(rest)
        elif command in ("vary", "variation"):
            await self._vary(rest)
        elif command == "remix":
            await self._remix(rest)
        elif command == "cancel":
            job = await self.service.cancel(self.user, self._target(rest), CHAT_ID)
            self.last_generation = job.id
        elif command == "delete":
            await self.service.delete(self.user, self._target(rest), CHAT_ID)
            self.write("Removed from your history.")
        elif command == "history":
            self._show_history(await self.service.history(self.user, _page_number(rest), page_size=5))
        elif command == "balance":
            self._show_models()
            balance = await self.accounts.balance(self.user)
            credits = plural(balance.balance, "credit")
            bought = f" ({plural(balance.bought, 'credit')} bought)" if balance.bought else ""
            self.write(f"Balance: {credits}{bought}" if balance.credits_enabled else "Credits are off.")
        elif command == "models":
            self._show_models()
        elif command == "link":
            if rest.strip():
                self.write(linked_text(await self.accounts.link(self.user, rest.strip())))
            else:
                self.write(link_code_text(await self.accounts.link_code(self.user)))
        elif command == "wait":
            await self.wait_all()
        elif line.startswith("/"):
            raise InvalidRequest(f"Unknown command /{command}. Type /help.")
        else:
            await self._imagine(line)

    async def _imagine(self, text: str) -> None:
        paths = [quoted or bare for quoted, bare in IMAGE_OPTION.findall(text)]
        inputs = [await _read_picture(Path(path)) for path in paths]
        request = parse_command_text(IMAGE_OPTION.sub("", text))
        accepted = await self.service.imagine(self.user, request, self.destination, inputs=inputs)
        self.last_generation = accepted.generation.id
        if accepted.balance is not None:
            reserved = plural(accepted.generation.credits_reserved, "credit")
            self.write(f"Reserved {reserved}; balance {accepted.balance}.")

    async def _regenerate(self, rest: str) -> None:
        accepted = await self.service.regenerate(self.user, self._target(rest), self.destination)
        self.last_generation = accepted.generation.id

    async def _vary(self, rest: str) -> None:
        parts = shlex.split(rest)
        if not parts or not parts[0].isdigit():
            raise InvalidRequest("Say which image to vary, e.g. `vary 2`.")
        number = int(parts[0])
        generation_id = self._target(" ".join(parts[1:]))
        await self._wait_for(generation_id)
        item = await self.service.generation(self.user, generation_id, CHAT_ID)
        image = next((i for i in item.images if i.index + 1 == number), None)
        if image is None:
            raise InvalidRequest(f"That generation has no image {number}.")
        accepted = await self.service.vary(self.user, image.id, self.destination)
        self.last_generation = accepted.generation.id

    async def _remix(self, rest: str) -> None:
        number, _, prompt = rest.partition(" ")
        if not number.isdigit() or not prompt.strip():
            raise InvalidRequest("Say which image and the new prompt, e.g. `remix 2 the same, at night`.")
        generation_id = self._target("")
        await self._wait_for(generation_id)
        item = await self.service.generation(self.user, generation_id, CHAT_ID)
        image = next((i for i in item.images if i.index + 1 == int(number)), None)
        if image is None:
            raise InvalidRequest(f"That generation has no image {number}.")
        accepted = await self.service.remix(self.user, image.id, prompt.strip(), self.destination)
        self.last_generation = accepted.generation.id

    def _target(self, rest: str) -> str:
        target = rest.strip() or self.last_generation
        if target is None:
            raise InvalidRequest("There is no generation yet. Start with /imagine <prompt>.")
        return target

    def _show_history(self, page: HistoryPage) -> None:
        if not page.items:
            self.write("No generations yet.")
            return
        self.write(f"History, page {page.page + 1} of {page.pages} ({page.total} in all):")
        for item in page.items:
            g = item.generation
            seeds = seeds_text(item.images)
            self.write(
                f"  [{g.id}] {g.created_at:%Y-%m-%d %H:%M} · {g.status} · {g.model} · {g.aspect_ratio} · "
                f"{f'{seeds} · ' if seeds else ''}“{g.prompt}”"
            )
            if item.inputs:
                sizes = ", ".join(f"{i.width}×{i.height}" for i in item.inputs)
                self.write(f"      {source_text(item.inputs)} ({sizes})")
            for image in item.images:
                self.write(f"      {image.index + 1}: {image.url}")

    def _show_models(self) -> None:
        self.write("Models:")
        for price in self.service.model_choices():
            default = " (default)" if price.name == self.service.default_model else ""
            self.write(f"  {price.name}{default}: {price.label}, {plural(price.cost, 'credit')} per image")

    async def _wait_for(self, generation_id: str) -> None:
        event = self.observer.finished.get(generation_id)
        if event is not None:
            await event.wait()

    async def wait_all(self) -> None:
        await asyncio.gather(*(event.wait() for event in list(self.observer.finished.values())))


async def _read_picture(path: Path) -> UploadedImage:
    """A local file for an edit: its size is checked before it is read."""
    try:
        refuse_if_too_large((await asyncio.to_thread(path.stat)).st_size)
        data = await asyncio.to_thread(path.read_bytes)
    except OSError:
        raise InvalidRequest(f"I can't read the file {path}.") from None
    return UploadedImage(data, path.name)


def _page_number(rest: str) -> int:
    return int(rest) - 1 if rest.strip().isdigit() and int(rest) > 0 else 0


def console_user() -> UserIdentity:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "local"
    return UserIdentity(PLATFORM, name, name)


async def run_console(
    service: GenerationService,
    accounts: AccountService,
    observer: ConsoleObserver,
    stop: asyncio.Event,
    stdin: TextIO = sys.stdin,
) -> bool:
    """Read and run commands until EOF, /quit or `stop` (SIGTERM). True if it ended normally, in which case
    what was started is awaited (a script's last line may be a request); on `stop` the caller's shutdown
    gives running jobs their grace period and refunds the rest."""
    console = Console(service, accounts, observer, console_user())
    interactive = stdin.isatty()
    if interactive:
        observer.write("Image bot console (offline demo model unless a provider key is set). Type /help.")
    lines = _start_reader(stdin, interactive)
    stopped = asyncio.create_task(stop.wait())
    try:
        while True:
            next_line = asyncio.create_task(lines.get())
            await asyncio.wait({next_line, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                next_line.cancel()
                return False
            line = next_line.result()
            if line is None or not await console.handle(line):
                break
        await console.wait_all()
        return True
    finally:
        stopped.cancel()


def _start_reader(stdin: TextIO, interactive: bool) -> asyncio.Queue[str | None]:
    """Lines from stdin, read by a daemon thread: a blocked read must never keep the process from exiting."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        while True:
            line = _read_line(stdin, interactive)
            loop.call_soon_threadsafe(lines.put_nowait, line)
            if line is None:
                return

    threading.Thread(target=read, name="console-stdin", daemon=True).start()
    return lines


def _read_line(stdin: TextIO, interactive: bool) -> str | None:
    if interactive:
        try:
            return input("> ")
        except EOFError:
            return None
    line = stdin.readline()
    return line if line else None
