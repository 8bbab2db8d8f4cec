"""A pass-through to Postgres that can be cut: the database "going away" for the bot, for real, while the
test keeps its own connections. Listens where the DSN says Postgres is (a TCP port, or a Unix socket
directory as the embedded server uses), on a port or directory of its own."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit


class CuttableProxy:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.proxied_dsn = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._directory = tempfile.TemporaryDirectory(prefix="pgproxy-")
        self._listen_port = 0

    async def start(self) -> None:
        """Listen; `proxied_dsn` then reaches the same database through this proxy."""
        address = urlsplit(self.dsn)
        query = parse_qs(address.query)
        if address.hostname:
            port = address.port or 5432
            self._connect = lambda: asyncio.open_connection(address.hostname, port)
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self._listen_port = self._port()
            netloc = address.netloc.replace(f"{address.hostname}:{port}", f"127.0.0.1:{self._port()}")
            self.proxied_dsn = urlunsplit(address._replace(netloc=netloc))
            return
        port = int(query.get("port", ["5432"])[0])
        socket = f".s.PGSQL.{port}"
        upstream = str(Path(query["host"][0]) / socket)
        self._connect = lambda: asyncio.open_unix_connection(upstream)
        self._server = await asyncio.start_unix_server(self._serve, str(Path(self._directory.name) / socket))
        query["host"] = [self._directory.name]
        self.proxied_dsn = urlunsplit(address._replace(query=urlencode(query, doseq=True)))

    async def heal(self) -> None:
        """Listen again, on the same TCP port (after `cut`)."""
        assert self._server is None and self._listen_port
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._listen_port)

    def _port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def cut(self) -> None:
        """Every connection dropped, new ones refused."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._connect()
        self._writers.update({writer, up_writer})
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
