"""`python -m bot <subcommand>`: console, run, migrate, credits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from bot.bootstrap import Roles, Runtime, bootstrap, open_database
from bot.config import Settings, load_settings
from bot.core import accounts, database
from bot.core.account_service import AccountService
from bot.core.credits import PurchaseRecord
from bot.core.errors import BotError
from bot.core.models import UserIdentity
from bot.core.service import GenerationService
from bot.core.shop import Shop
from bot.logs import setup_logging

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Image-generation bot")
    commands = parser.add_subparsers(dest="command", required=True)
    console = commands.add_parser("console", help="the offline front end in this terminal (or a script on stdin)")
    console.add_argument("--output", default=None, help="where images are written (default: DATA_DIR/output)")
    run = commands.add_parser("run", help="start the Discord and Telegram front ends whose tokens are set")
    run.add_argument(
        "--only", action="append", default=[], metavar="ROLE", type=_role_names,
        help="this process's roles: discord, telegram, worker (repeat or comma-separate to combine; "
        "default: all of them)",
    )
    commands.add_parser("migrate", help="apply database migrations and exit")

    credit = commands.add_parser("credits", help="operator tools: grant, revoke, show a ledger")
    actions = credit.add_subparsers(dest="action", required=True)
    for name in ("grant", "revoke"):
        action = actions.add_parser(name)
        action.add_argument("user", help="platform:user_id, e.g. telegram:12345 or discord:98765")
        action.add_argument("amount", type=int)
    ledger = actions.add_parser("ledger")
    ledger.add_argument("user", help="platform:user_id")
    ledger.add_argument("--limit", type=int, default=30)
    bought = actions.add_parser("purchases", help="a user's purchases and their refunds")
    bought.add_argument("user", help="platform:user_id")
    bought.add_argument("--limit", type=int, default=30)
    totals = actions.add_parser("totals", help="purchases per day and platform")
    totals.add_argument("--days", type=int, default=30)
    actions.add_parser("shortfalls", help="refunded purchases whose credits had already been spent")
    unlink = actions.add_parser("unlink", help="undo a link: the identity leaves its account for a new one")
    unlink.add_argument("user", help="platform:user_id")
    return parser


def _role_names(value: str) -> list[str]:
    names = value.split(",")
    try:
        Roles.only(names)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return names


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    setup_logging(settings)
    try:
        return asyncio.run(_dispatch(args, settings))
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "migrate":
        return await _migrate(settings)
    if args.command == "console":
        return await _console(settings, args.output)
    if args.command == "credits":
        return await _credits(settings, args)
    if args.command == "run":
        from bot.launcher import run_front_ends

        return await run_front_ends(settings, Roles.only(name for names in args.only for name in names))
    raise AssertionError(args.command)


async def _migrate(settings: Settings) -> int:
    async with open_database(settings) as pool:
        # open_database already migrated; say what is in place.
        versions = await pool.fetch("SELECT version, name FROM public.schema_migrations ORDER BY version")
    for row in versions:
        print(f"{row['version']:04d}_{row['name']} applied")
    print(f"{len(database.load_migrations())} migrations, database up to date")
    return 0


async def _console(settings: Settings, output: str | None) -> int:
    from pathlib import Path

    from bot.adapters.console import ConsoleFrontEnd
    from bot.launcher import stop_on_sigterm

    output_dir = Path(output) if output else settings.data_dir / "output"

    def console_front_end(
        settings: Settings, service: GenerationService, account_service: AccountService
    ) -> ConsoleFrontEnd:
        return ConsoleFrontEnd(service, account_service, output_dir, lambda text: print(text, flush=True))

    stop = stop_on_sigterm()
    async with bootstrap(settings, [console_front_end]) as runtime:
        await runtime.start()
        [console] = runtime.front_ends
        assert isinstance(console, ConsoleFrontEnd)
        if not await console.run(stop):
            console.observer.write("Shutting down: letting running generations finish, refunding the rest.")
    return 0


async def _credits(settings: Settings, args: argparse.Namespace) -> int:
    if args.action in ("totals", "shortfalls"):
        return await _sales(settings, args)
    platform, sep, user_id = args.user.partition(":")
    if not sep or not platform or not user_id:
        print("user must be platform:user_id, e.g. telegram:12345", file=sys.stderr)
        return 2
    target = UserIdentity(platform, user_id)
    async with bootstrap(settings) as runtime:
        try:
            if args.action == "unlink":
                async with runtime.pool.acquire() as conn:
                    account = await accounts.unlink(conn, platform, user_id)
                if account is None:
                    print(f"{args.user} is not linked to another identity", file=sys.stderr)
                    return 1
                print(f"{args.user} now has an account of its own ({account}), with 0 credits; "
                      "move credits with credits revoke / grant")
                return 0
            if args.action == "purchases":
                for p in await _shop(runtime).purchases(target, args.limit):
                    print(_purchase_line(p))
                return 0
            if args.action == "ledger":
                balance, entries = await runtime.accounts.ledger(target, args.limit)
                print(f"{args.user}: balance {balance}")
                for entry in entries:
                    generation = f" {entry.generation_id}" if entry.generation_id else ""
                    print(f"  {entry.created_at:%Y-%m-%d %H:%M:%S} {entry.delta:+6d} {entry.reason}{generation}")
                return 0
            amount = args.amount if args.action == "grant" else -args.amount
            if args.amount <= 0:
                print("amount must be a positive whole number", file=sys.stderr)
                return 2
            result = await runtime.accounts.operator_adjust(target, amount)
        except BotError as error:
            print(error.user_message, file=sys.stderr)
            return 1
    print(f"{args.user}: {result.applied:+d}, balance now {result.balance}")
    return 0


def _shop(runtime: Runtime) -> Shop:
    service = runtime.service
    settings = runtime.settings
    return Shop(service.pool, settings.credit_packs, service.credit_policy, frozenset(settings.banned_users))


def _purchase_line(p: PurchaseRecord) -> str:
    price = f" for {p.price} {p.currency}" if p.price is not None else ""
    line = f"{p.created_at:%Y-%m-%d %H:%M:%S} {p.platform} {p.charge_id} {p.pack} +{p.credits}{price}"
    if p.refunded_at is not None:
        line += f"; refunded {p.refunded_at:%Y-%m-%d %H:%M}, {p.taken_back} taken back"
        if p.shortfall:
            line += f", {p.shortfall} already spent"
    return line


async def _sales(settings: Settings, args: argparse.Namespace) -> int:
    async with bootstrap(settings) as runtime:
        shop = _shop(runtime)
        if args.action == "shortfalls":
            for p in await shop.shortfalls():
                print(_purchase_line(p))
            return 0
        print("day         platform  purchases  credits  paid  refunded  spent-before-refund")
        for t in await shop.daily_totals(max(1, args.days)):
            paid = f"{t.paid} {t.currency}" if t.currency else "-"
            print(f"{t.day}  {t.platform:<8}  {t.purchases:>9}  {t.credits:>7}  {paid}  {t.refunded:>8}  {t.shortfall}")
    return 0
