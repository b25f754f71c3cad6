"""What `bridge-up` (`just up`) does: the whole suite on this machine, with demo traffic.

Order: check the ports, find or start PostgreSQL and Redis, apply the schema, then run the
five services and the demo generator under one supervisor until Ctrl-C; afterwards stop
what was started here (embedded Redis, embedded PostgreSQL), in reverse order.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from . import banner, postgres, redis_server, supervisor, tokens
from .envfile import read_env_file, write_env_file
from .errors import StackError
from .ports import require_free
from .stack import SERVICES, Stack, child_environment, script

#: the alerter's rules when none are configured (no channels: alerts show on the dashboard)
DEMO_RULES = "deploy/alerts.yaml"
DSN_VARS = ("BRIDGE_SOURCE_DSN", "POSTGRES_DSN", "DATABASE_URL")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bridge-up", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("BRIDGE_DATA_DIR", ".data"),
        help="embedded databases, JWT secret, stack.env (default .data)",
    )
    parser.add_argument(
        "--postgres",
        choices=["auto", "embedded", "external"],
        default="auto",
        help="auto: the configured DSN if it answers, else embedded",
    )
    parser.add_argument(
        "--redis",
        choices=["auto", "embedded", "external"],
        default="auto",
        help="auto: the configured URL if it answers, else a private server",
    )
    parser.add_argument("--no-demo", action="store_true", help="no demo traffic")
    parser.add_argument("--demo-rate", type=float, default=3.0, help="demo changes per second")
    return parser.parse_args(argv)


def configured(env: dict[str, str], dotenv: dict[str, str]) -> dict[str, str]:
    """The environment as the services would see it: real variables win over `.env`."""
    merged = {**{k: v for k, v in dotenv.items() if k.startswith(("BRIDGE_",) + DSN_VARS)}}
    merged.update(env)
    return merged


def source_dsn(env: dict[str, str]) -> str:
    for var in DSN_VARS:
        if env.get(var):
            return env[var]
    return "postgresql://localhost/bridge"


def lock_data_dir(data_dir: Path) -> IO[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "up.lock", "w")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StackError(
            f"another `just up` is already running with {data_dir}; stop it first"
        ) from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def migrate(env: dict[str, str]) -> None:
    result = subprocess.run(  # noqa: S603 - our own console script
        [script("bridge-migrate")], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        reason = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise StackError(f"bridge-migrate failed: {reason}")
    sys.stdout.write(result.stdout)


def settings_of_stack(
    env: dict[str, str], pg: postgres.Postgres, redis: redis_server.Redis, secret: str, root: Path
) -> dict[str, str]:
    """What every child gets on top of the caller's environment (also saved as stack.env)."""
    values = {
        "BRIDGE_SOURCE_DSN": pg.dsn,
        "BRIDGE_TARGET_DSN": env.get("BRIDGE_TARGET_DSN", pg.dsn)
        if pg.kind == "configured"
        else pg.dsn,
        "BRIDGE_JWT_SECRET": secret,
    }
    if redis.kind != "cluster":
        values["BRIDGE_REDIS_URL"] = redis.url
    for svc in SERVICES:
        values[svc.port_var] = str(svc.port(env))
    if not env.get("BRIDGE_ALERT_RULES") and not (root / "alerts.yaml").exists():
        values["BRIDGE_ALERT_RULES"] = str(root / DEMO_RULES)
    gateway = next(s for s in SERVICES if s.name == "gateway")
    host = env.get("BRIDGE_HOST", "127.0.0.1")
    browser_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    # the dashboard page listens to live audit logs and alerts through the gateway, with
    # short-lived tokens the metrics API hands it after the login link
    values["BRIDGE_DASHBOARD_GATEWAY_URL"] = env.get(
        "BRIDGE_DASHBOARD_GATEWAY_URL", f"http://{browser_host}:{gateway.port(env)}"
    )
    return values


def up(args: argparse.Namespace) -> int:
    root = Path.cwd()
    data_dir = Path(args.data_dir).resolve()
    env = configured(dict(os.environ), read_env_file(root / ".env"))
    require_free(
        env.get("BRIDGE_HOST", "127.0.0.1"), [(s.name, s.port_var, s.port(env)) for s in SERVICES]
    )
    with ExitStack() as resources:
        resources.enter_context(lock_data_dir(data_dir))
        pg = resources.enter_context(postgres.provide(source_dsn(env), data_dir, args.postgres))
        redis = resources.enter_context(
            redis_server.provide(
                env.get("BRIDGE_REDIS_URL", "redis://127.0.0.1:6379/0"),
                env.get("BRIDGE_REDIS_CLUSTER_NODES"),
                data_dir,
                args.redis,
            )
        )
        print(f"bridge-up: {pg.describe()}", flush=True)
        print(f"bridge-up: {redis.describe()}", flush=True)
        secret = env.get("BRIDGE_JWT_SECRET") or tokens.load_or_create_secret(data_dir)
        stack_values = settings_of_stack(env, pg, redis, secret, root)
        child_env = child_environment(env, stack_values)
        write_env_file(data_dir / "stack.env", stack_values)
        migrate(child_env)
        stack = Stack.plan(child_env, demo=not args.no_demo, demo_rate=args.demo_rate)
        token = tokens.mint(secret)
        text = banner.render(
            stack, token, pg, redis, str(data_dir), ops_token=tokens.mint_ops(secret)
        )
        return supervisor.run(stack, root, lambda: text)
    return 0
