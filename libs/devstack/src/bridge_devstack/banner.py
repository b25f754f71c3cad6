"""What `just up` prints once every service answers `/readyz`: where to look, and one
command that shows live events."""

from __future__ import annotations

import shlex

from .postgres import Postgres
from .redis_server import Redis
from .stack import Stack


def render(stack: Stack, token: str, pg: Postgres, redis: Redis, data_dir: str) -> str:
    gateway = stack.url("gateway")
    ws = gateway.replace("http://", "ws://", 1)
    sse = f"{gateway}/events/intents?token={token}"
    lines = [
        "",
        "Bridge Lite is up.",
        f"  dashboard    {stack.url('metrics-api')}/",
        f"  ops API      {stack.url('metrics-api')}/api/v1/dashboard/overview",
        f"  WebSocket    {ws}/ws?token=<token>   ({ws}/ws/intents subscribes to intents)",
        f"  SSE          {gateway}/events/intents?token=<token>   "
        f"(also /events/audit_logs, /events/audit-logs)",
        f"  demo JWT     {token}",
        f"  PostgreSQL   {pg.describe()}",
        f"  Redis        {redis.describe()}",
        f"  data         {data_dir}  (this stack's settings: `set -a; . {data_dir}/stack.env`)",
        "",
        "Live events (copy-paste):",
        f"  curl -N {shlex.quote(sse)}",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines) + "\n"
