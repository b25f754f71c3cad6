"""The benchmark's reference: a bare relay, Redis pub/sub → `websockets.broadcast()`.

No auth, no filters, no resume, no limits — the floor any gateway is measured against.
`python -m bench.gateway_relay --port P --redis URL --channel C` (prints `ready`).
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
                    broadcast(clients, msg["data"].decode())

        task = asyncio.create_task(pump())
        await stop.wait()
        task.cancel()
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
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(relay(args.port, args.redis, args.channel))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
