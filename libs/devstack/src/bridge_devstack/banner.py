"""What `just up` prints once every service answers `/readyz`: where to look (the
dashboard as a ready login link), and one command that shows live events."""

from __future__ import annotations

import shlex

from .postgres import Postgres
from .redis_server import Redis
from .stack import Stack


def render(
    stack: Stack, token: str, pg: Postgres, redis: Redis, data_dir: str, *, ops_token: str
) -> str:
    """`token`: the demo gateway JWT (every topic); `ops_token`: an ops JWT for the
    dashboard's login link and the ops API's bearer header."""
    gateway = stack.url("gateway")
    api = stack.url("metrics-api")
    ws = gateway.replace("http://", "ws://", 1)
    sse = f"{gateway}/events/intents?token={token}"
    lines = [
        "",
        "Bridge Lite is up.",
        f"  dashboard    {api}/login?token={ops_token}",
        f"  ops API      {api}/api/v1/dashboard/overview   "
        "(Authorization: Bearer <the login link's token>)",
        f"  WebSocket    {ws}/ws?token=<token>   ({ws}/ws/intents subscribes to intents)",
        f"  SSE          {gateway}/events/intents?token=<token>   "
        f"(also /events/audit_logs, /events/audit-logs)",
        f"  demo JWT     {token}   (gateway, every topic; 12 h)",
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
