"""The benchmark's references: bare relays from one Redis pub/sub channel to every client.

* WebSocket (default): Redis pub/sub → `websockets.broadcast()`;
* `--sse`: one Redis reader, each message framed once as an SSE `data:` frame and written
  to every open response's transport (an HTTP/1.1 response delimited by the connection's
  end, so no chunk framing either).

No auth, no filters, no resume, no limits — the floor any gateway is measured against.
`python -m bench.gateway_relay --port P --redis URL --channel C [--sse]` (prints `ready`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import redis.asyncio as aredis
from websockets.asyncio.server import ServerConnection, broadcast, serve


async def relay(port: int, redis_url: str, channel: str) -> None:
    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = aredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    async with serve(
        handler, "127.0.0.1", port, compression=None, ping_interval=None, backlog=4096
    ):
        print("ready", flush=True)

        async def pump() -> None:
            while True:
                msg: Any = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None and msg["type"] == "message":
                    # the live channel carries `event\nmeta`: clients get the event only
                    broadcast(clients, msg["data"].partition(b"\n")[0].decode())

        task = asyncio.create_task(pump())
        await stop.wait()
        task.cancel()
    await pubsub.aclose()
    await client.aclose()


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"connection: close\r\n\r\n: connected\n\n"
)


class _SseResponse(asyncio.Protocol):
    """One client: answers the first request head, then only receives relayed frames."""

    def __init__(self, clients: set[asyncio.Transport]) -> None:
        self.clients = clients
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport in self.clients:
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.transport.write(SSE_HEAD)
            self.clients.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.clients.discard(self.transport)


async def sse_relay(port: int, redis_url: str, channel: str) -> None:
    clients: set[asyncio.Transport] = set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = aredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    server = await loop.create_server(
        lambda: _SseResponse(clients), "127.0.0.1", port, backlog=4096
    )
    print("ready", flush=True)

    async def pump() -> None:
        while True:
            msg: Any = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None and msg["type"] == "message":
                frame = b"data: " + msg["data"].partition(b"\n")[0] + b"\n\n"
                for transport in clients:
                    transport.write(frame)

    task = asyncio.create_task(pump())
    await stop.wait()
    task.cancel()
    server.close()
    await pubsub.aclose()
    await client.aclose()


def main(argv: list[str]) -> int:
    """Run the relay; without arguments (as `just bench` runs every module) do nothing."""
    if not any(a.startswith("--port") for a in argv):
        print("gateway_relay: helper of `just bench gateway` (the reference relay); skipped")
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_relay")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--sse", action="store_true", help="relay as SSE, not WebSocket")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run((sse_relay if args.sse else relay)(args.port, args.redis, args.channel))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
