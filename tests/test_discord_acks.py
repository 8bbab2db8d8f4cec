"""Early acknowledgements (bot/adapters/discord/acks.py) through the real discord.py against the fake Discord,
and the kept-alive HTTP pool they use (bot/adapters/discord/keepalive.py) against a real local HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import discord
import pytest
from aiohttp import web

from bot.adapters.discord.keepalive import KeepAliveError, KeepAlivePool
from bot.core.metrics import PLATFORM_ERRORS
from tests.conftest import RuntimeFactory, wait_for
from tests.fakes.discord_harness import finished, running_bot, serving_fake
from tests.fakes.discord_server import CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, FakeDiscord


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with serving_fake(monkeypatch) as fake:
        yield fake


def callbacks(fake: FakeDiscord, interaction: object) -> list[object]:
    return [r for r in fake.requests_for(interaction) if r.path.endswith("/callback")]  # type: ignore[arg-type]


async def test_imagine_is_deferred_before_the_command_runs(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake) as bot:
        seen_by_the_check: list[int] = []

        async def check(interaction: discord.Interaction) -> bool:
            # discord.py runs this before the command. The deferral is already on its way: wait for it.
            token = interaction.token
            await wait_for(lambda: [r for r in fake.requests if token in r.path and r.path.endswith("/callback")])
            seen_by_the_check.append(interaction.id)
            return True

        bot.frontend.client.tree.interaction_check = check  # type: ignore[method-assign]
        interaction = await fake.slash("imagine", {"prompt": "a lighthouse at dusk"}, user=alice)
        message = await wait_for(finished(fake, interaction))
        assert seen_by_the_check == [interaction.id]
        assert await bot.balance(alice) == 19
    [deferral] = callbacks(fake, interaction)
    assert deferral.callback_type == DEFERRED_CHANNEL_MESSAGE and deferral.status == 200  # type: ignore[attr-defined]
    assert deferral.json.get("data") is None  # type: ignore[attr-defined]  # public "thinking…"
    assert message.id == fake.original(interaction).id  # type: ignore[union-attr]  # the job edited that message


async def test_while_restarting_a_job_command_is_refused_privately_and_never_deferred(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake) as bot:
        await bot.frontend.stop_taking_work()
        interaction = await fake.slash("imagine", {"prompt": "a lighthouse"}, user=alice)
        await wait_for(lambda: fake.ephemeral_texts(interaction))
        assert not await bot.generations(alice)
    assert "restarting" in fake.ephemeral_texts(interaction)[0]
    [refusal] = callbacks(fake, interaction)  # a deferral would have made "thinking…" public
    assert refusal.callback_type == CHANNEL_MESSAGE  # type: ignore[attr-defined]


async def test_a_refused_early_deferral_is_made_again_the_usual_way(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    refused = PLATFORM_ERRORS.labels("discord", "http_503")
    before = refused._value.get()
    async with running_bot(runtime_factory, fake) as bot:
        fake.fail_next("POST", r"/interactions/\d+/[^/]+/callback", 503, {"message": "upstream", "code": 0})
        interaction = await fake.slash("imagine", {"prompt": "a red kite"}, user=alice)
        await wait_for(finished(fake, interaction))
        assert await bot.balance(alice) == 19
    assert [r.status for r in callbacks(fake, interaction)] == [503, 200]  # type: ignore[attr-defined]
    assert refused._value.get() == before + 1  # counted for the operator's metrics


async def test_an_early_deferral_answered_without_its_resource_still_starts_the_job(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake) as bot:
        fake.fail_next("POST", r"/interactions/\d+/[^/]+/callback", 200, {})  # 2xx, but no "interaction"
        interaction = await fake.slash("imagine", {"prompt": "a green kite"}, user=alice)
        await wait_for(finished(fake, interaction))
        assert await bot.balance(alice) == 19
    assert [r.status for r in callbacks(fake, interaction)] == [200, 200]  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def _serve(handler: web.RequestHandler) -> AsyncIterator[tuple[str, list[object]]]:
    peers: list[object] = []

    async def recording(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return await handler(request)

    app = web.Application()
    app.router.add_post("/api/{tail:.*}", recording)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/api", peers
    finally:
        await runner.cleanup()


async def test_the_pool_reuses_connections_and_reads_chunked_answers() -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(status=200)
        response.enable_chunked_encoding()
        response.content_type = "application/json"
        await response.prepare(request)
        await response.write(b'{"got": ')
        await response.write(str(body["n"]).encode() + b', "path": "' + request.path_qs.encode() + b'"}')
        await response.write_eof()
        return response

    async with _serve(answer) as (base, peers):
        pool = KeepAlivePool(base, "test-agent")
        try:
            first = await pool.post("/one?x=1", {"n": 1})
            second = await pool.post("/two", {"n": 2})
            together = await asyncio.gather(*(pool.post("/many", {"n": n}) for n in range(5)))
        finally:
            await pool.aclose()
    assert first.status == 200 and first.json() == {"got": 1, "path": "/api/one?x=1"}
    assert second.json() == {"got": 2, "path": "/api/two"}
    assert sorted(r.json()["got"] for r in together) == [0, 1, 2, 3, 4]
    assert peers[0] == peers[1]  # one kept-alive connection for requests one after another
    assert len(set(map(str, peers))) == 5  # and one per request in flight at once (no pipelining)


async def test_the_pool_reports_errors_and_skips_closed_connections(unused_port: int) -> None:
    async def close_after(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.json_response({"code": 10062}, status=404, headers={"Connection": "close"})

    async with _serve(close_after) as (base, peers):
        pool = KeepAlivePool(base, "test-agent")
        try:
            refused = await pool.post("/x", {})
            again = await pool.post("/x", {})  # the server closed the first connection: a new one
        finally:
            await pool.aclose()
    assert refused.status == 404 and refused.json() == {"code": 10062} and again.status == 404
    assert peers[0] != peers[1]

    pool = KeepAlivePool(f"http://127.0.0.1:{unused_port}/api", "test-agent", timeout=1.0)
    with pytest.raises(KeepAliveError):
        await pool.post("/x", {})  # nothing listens there
    await pool.aclose()


async def test_warm_connections_are_opened_and_replaced_before_they_go_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.adapters.discord import keepalive

    monkeypatch.setattr(keepalive, "WARM_EVERY_SECONDS", 0.05)
    monkeypatch.setattr(keepalive, "IDLE_SECONDS", 0.5)  # stale after 0.5 - 2 × 0.05 = 0.4 s idle

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    async with _serve(answer) as (base, peers):
        pool = KeepAlivePool(base, "test-agent", warm=3)
        try:
            pool.start()
            await wait_for(lambda: len(pool._idle) == 3)
            first = set(map(id, pool._idle))
            # Kept warm: replaced by fresh ones before a server's keep-alive timeout could close them.
            await wait_for(lambda: len(pool._idle) == 3 and not first & set(map(id, pool._idle)), within=3)
            response = await pool.post("/x", {})  # written at once on a warm connection
        finally:
            await pool.aclose()
    assert response.status == 200 and len(peers) == 1
    assert pool._idle == [] and pool._keeper is not None and pool._keeper.done()
