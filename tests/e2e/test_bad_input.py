"""The bad-input sweep: generated and hostile input against the real services. Every one
is answered with a clear error, the process keeps running, and no data of a topic the
caller may not read leaks out.

- metrics API: schemathesis over its own `/openapi.json` (valid and invalid parameters)
- alerter: hostile rule files through `bridge-alerter check` and the service's start-up
- gateway: hypothesis-generated WebSocket frames and SSE query strings, hostile tokens
  (`alg: none`, wrong key, expired, wrong claims), oversized rows end to end
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from psycopg.types.json import Jsonb
from schemathesis import GenerationMode
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from tests.support.ops import OPS, ops_headers
from tests.support.processes import ServiceProcess
from tests.support.suite import JWT_SECRET, make_token

pytestmark = pytest.mark.e2e

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def env(migrated_dsn: str, redis_url: str, namespace: str) -> dict[str, str]:
    return {
        "BRIDGE_SOURCE_DSN": migrated_dsn,
        "BRIDGE_TARGET_DSN": migrated_dsn,
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_NAMESPACE": namespace,
        "BRIDGE_HEARTBEAT_INTERVAL": "1",
        "BRIDGE_JWT_SECRET": JWT_SECRET,
        "BRIDGE_AUTH": "jwt",
    }


def _service(
    name: str, env: dict[str, str], tmp: Path, args: list[str] | None = None
) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(name, env, tmp, args=args)
    try:
        yield proc.start(timeout=40)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def metrics_api(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc_iter = _service("metrics_api", env, tmp_path_factory.mktemp("metrics"))
    proc = next(proc_iter)
    yield proc.url
    assert proc.alive(), proc.logs()[-3000:]
    next(proc_iter, None)


# -- metrics API ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_metrics_api_schema_fuzz_never_5xx(metrics_api: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(metrics_api + "/openapi.json", headers=ops_headers())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/api/v1/dashboard/overview",
        "/api/v1/dashboard/timeline",
        "/api/v1/dashboard/corrections",
        "/api/v1/services",
    }
    failures: list[str] = []
    calls = 0
    for op in operations:

        @FUZZ
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=metrics_api, timeout=15, headers=ops_headers())
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.query}: {response.status_code}")
                return
            body = response.json()  # every answer is JSON, errors included
            if response.status_code == 422:
                # the error names the parameter (the first bad one it met)
                named = body.get("parameter") or [
                    d.get("loc") for d in body.get("detail", []) if isinstance(d, dict)
                ]
                if not named:
                    failures.append(f"422 without the parameter name: {case.query} → {body}")

        try:
            run()
        except Unsatisfiable:
            # no parameters to make invalid (e.g. GET /api/v1/services)
            assert mode is GenerationMode.NEGATIVE, op.path
    assert calls > 0
    assert not failures, failures[:10]
    assert httpx.get(metrics_api + "/healthz", timeout=5).status_code == 200


def test_metrics_api_hostile_queries(metrics_api: str) -> None:
    cases = [
        "/api/v1/dashboard/timeline?bucket=1y",
        "/api/v1/dashboard/timeline?since=not-a-date",
        "/api/v1/dashboard/timeline?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
        "/api/v1/dashboard/timeline?severity=%00%ff",
        "/api/v1/dashboard/timeline?action=" + "a" * 8_000,
        "/api/v1/dashboard/corrections?limit=-1",
        "/api/v1/dashboard/corrections?limit=99999999999999999999999",
        "/api/v1/dashboard/corrections?limit=1e400",
        "/api/v1/dashboard/timeline?since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z",
        "/api/v1/dashboard/timeline?bucket=1m&since=1970-01-01T00:00:00Z",
        "/api/v1/dashboard/overview?%zz=1",
    ]
    for path in cases:
        r = httpx.get(metrics_api + path, timeout=20, headers=ops_headers())
        assert r.status_code < 500, (path, r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith("application/json"), path
    assert httpx.get(metrics_api + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/v1/dashboard/timeline?action=a%0A", "action"),
        ("/api/v1/dashboard/timeline?action=intent.corrected%0D", "action"),
        ("/api/v1/dashboard/corrections?limit=%D9%A3", "limit"),  # Arabic-Indic three
        ("/api/v1/dashboard/corrections?limit=%C2%B2", "limit"),  # superscript two
    ],
)
def test_metrics_api_refuses_control_characters_and_non_ascii_digits(
    metrics_api: str, path: str, parameter: str
) -> None:
    r = httpx.get(metrics_api + path, timeout=20, auth=OPS)
    assert r.status_code == 422, (path, r.status_code, r.text[:300])
    assert parameter in r.text


# -- alerter rule files ----------------------------------------------------------------------

HOSTILE_RULES: dict[str, bytes] = {
    "empty": b"",
    "not_yaml": b"{{{{ ::: [[[",
    "binary": bytes(range(256)) * 4,
    "not_utf8": b"rules:\n  - name: \xff\xfe\n",
    "scalar": b"42\n",
    "list_top": b"- a\n- b\n",
    "python_tag": b"!!python/object/apply:os.system ['echo pwned > /tmp/bridge-pwned']\n",
    "billion_laughs": (
        b'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
        b"b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
        b"e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
        b"f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
        b"g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
        b"h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
        b"rules: [*h]\n"
    ),
    "deep_nesting": b"rules: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "huge": b"rules:\n" + b"  - name: r\n    metric: audit.events_5m\n" * 20_000,
    "wrong_types": (
        b"channels: {c: {type: webhook, url: 5, secret: [1]}}\n"
        b"rules:\n  - {name: [x], metric: {}, op: '=~', threshold: abc, for: -5m,"
        b" severity: 7, summary: 3, notify: c}\n"
    ),
    "unknown_channel_and_metric": (
        b"channels: {}\nrules:\n  - {name: r, metric: no.such.metric, op: '>', threshold: 1,"
        b" for: 1m, severity: critical, summary: s, notify: [nowhere]}\n"
    ),
    "template_injection": (
        b"channels: {c: {type: webhook, url: 'http://127.0.0.1:9/x', secret: s}}\n"
        b"rules:\n  - {name: r, metric: audit.events_5m, op: '>', threshold: 1, for: 1m,"
        b" severity: critical, summary: '{{ value.__class__.__mro__ }}"
        b"{% for x in range(10**9) %}{% endfor %}', notify: [c]}\n"
    ),
    "duplicate_names": (
        b"channels: {c: {type: slack, url: 'https://hooks.slack.com/services/x'}}\n"
        b"rules:\n"
        b"  - {name: r, metric: audit.events_5m, op: '>', threshold: 1, for: 1m,"
        b" severity: critical, summary: s, notify: [c]}\n"
        b"  - {name: r, metric: audit.events_5m, op: '>', threshold: 1, for: 1m,"
        b" severity: critical, summary: s, notify: [c]}\n"
    ),
    "env_reference_missing": (
        b"channels: {c: {type: webhook, url: '${BRIDGE_E2E_UNSET_VAR}', secret: s}}\nrules: []\n"
    ),
}


def _check(path: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge_alerter", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("name", sorted(HOSTILE_RULES))
def test_alerter_check_refuses_hostile_rules(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(HOSTILE_RULES[name])
    started = time.monotonic()
    result = _check(path)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    assert out.strip(), "no explanation given"
    assert len(out) < 100_000  # the error is readable, not the file echoed back
    assert time.monotonic() - started < 30
    assert not Path("/tmp/bridge-pwned").exists()


def test_alerter_check_missing_path_and_directory(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.yaml", tmp_path):
        result = _check(path)
        out = result.stdout + result.stderr
        assert result.returncode != 0 and "Traceback" not in out and out.strip(), out


def test_alerter_service_refuses_hostile_rules_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(HOSTILE_RULES["wrong_types"])
    proc = ServiceProcess("alerter", env, tmp_path, args=["--rules", str(path)])
    proc.start(wait_ready=False)
    assert proc.proc is not None
    code = proc.proc.wait(30)
    proc.stop()
    logs = proc.logs().strip()
    assert code != 0
    assert "Traceback" not in logs, logs[-3000:]
    assert "rules" in logs.splitlines()[-1], logs[-2000:]


# -- gateway: tokens -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc_iter = _service("gateway", env, tmp_path_factory.mktemp("gateway"))
    proc = next(proc_iter)
    yield proc.url
    assert proc.alive(), proc.logs()[-3000:]
    next(proc_iter, None)


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def hostile_tokens() -> dict[str, str]:
    claims = {"sub": "mallory", "exp": int(time.time()) + 600, "topics": ["*"]}
    return {
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "alg_none_upper": f"{_b64({'alg': 'NONE', 'typ': 'JWT'})}.{_b64(claims)}.",
        "wrong_key": make_token(["*"], secret="not-the-secret-" + "x" * 60),
        "expired": make_token(["*"], ttl=-60),
        "hs512": make_token(["*"], alg="HS512"),
        "garbage": "not.a.jwt",
        "empty_parts": "..",
        "huge": "a" * 20_000,
        "no_topics": _token_without("topics"),
        "no_exp": _token_without("exp"),
        "topics_string": make_token(["x"], extra={"topics": "*"}),
    }


def _token_without(claim: str) -> str:
    import jwt

    claims: dict[str, object] = {"sub": "m", "exp": int(time.time()) + 600, "topics": ["*"]}
    claims.pop(claim)
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


TOKEN_KINDS = [
    "alg_none",
    "alg_none_upper",
    "wrong_key",
    "expired",
    "hs512",
    "garbage",
    "empty_parts",
    "huge",
    "no_topics",
    "no_exp",
    "topics_string",
]


@pytest.mark.parametrize("kind", TOKEN_KINDS)
async def test_gateway_refuses_hostile_tokens(gateway: str, kind: str) -> None:
    token = hostile_tokens()[kind]
    ws_url = gateway.replace("http://", "ws://") + "/ws"
    for url, headers in (
        (f"{ws_url}?token={token}", {}),
        (ws_url, {"Authorization": f"Bearer {token}"}),
    ):
        if kind == "huge":
            # beyond the server's header limits: any 4xx or a close, but promptly (an
            # upgrade request that is never answered holds a connection and a client)
            with pytest.raises((InvalidStatus, InvalidMessage, ConnectionClosed)) as exc:
                async with ws_connect(url, additional_headers=headers, open_timeout=5):
                    pass
            if isinstance(exc.value, InvalidStatus):
                assert 400 <= exc.value.response.status_code < 500
            continue
        with pytest.raises(InvalidStatus) as exc:
            async with ws_connect(url, additional_headers=headers, open_timeout=5):
                pass
        assert exc.value.response.status_code == 401, kind
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(
            f"{gateway}/events/intents", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code in ((401, 431, 400) if kind == "huge" else (401,)), kind
        r = await http.get(f"{gateway}/events/intents", params={"token": token, "close_after": 1})
        # a 20 kB query string is past the request-head cap (BRIDGE_HTTP_MAX_HEADER_BYTES)
        assert r.status_code == (431 if kind == "huge" else 401), kind
        assert (await http.get(f"{gateway}/healthz")).status_code == 200


async def test_gateway_without_token_is_401(gateway: str) -> None:
    with pytest.raises(InvalidStatus) as exc:
        async with ws_connect(gateway.replace("http://", "ws://") + "/ws", open_timeout=5):
            pass
    assert exc.value.response.status_code == 401
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{gateway}/events/audit-logs")).status_code == 401


# -- gateway: fuzzed frames, topic isolation -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
client_frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v)),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["subscribe", "unsubscribe", "ping", "SUBSCRIBE", "x", ""]),
        },
        optional={
            "topic": st.one_of(
                st.sampled_from(["intents", "secret_topic", "*", "", "../x", "a" * 300]),
                json_values,
            ),
            "filter": json_values,
            "since": st.one_of(st.text(max_size=40), json_values),
            "extra": json_values,
        },
    ).map(lambda d: json.dumps(d)),
)


def _valid_frame(frame: str | bytes) -> bool:
    """Whether a frame is a well-formed client message (a topic may still be refused)."""
    try:
        msg = json.loads(frame)
    except ValueError:
        return False
    if not isinstance(msg, dict):
        return False
    kind = msg.get("type")
    if kind == "ping":
        return set(msg) == {"type"}
    if kind in ("subscribe", "unsubscribe"):
        allowed = {"type", "topic", "filter", "since"} if kind == "subscribe" else {"type", "topic"}
        return set(msg) <= allowed and isinstance(msg.get("topic"), str)
    return False


async def _drain(ws: object, seconds: float) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            raw = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))  # type: ignore[attr-defined]
        except TimeoutError:
            break
        out.append(orjson.loads(raw))
    return out


async def _publish_secret(dsn: str, marker: str) -> None:
    """A row on a topic the fuzzing token may not read (`audit_logs`)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO audit_logs (actor, action, details) VALUES ('fuzz', 'secret', %s)",
            (Jsonb({"marker": marker}),),
        )


def test_gateway_fuzzed_ws_frames_never_crash_or_leak(
    gateway: str, env: dict[str, str], migrated_dsn: str, tmp_path: Path
) -> None:
    """Random frames on a connection whose token reads only `intents`: each bad frame gets
    an error (or a close for oversize/flood), the gateway stays up, and no `audit_logs`
    event — published meanwhile by a real notifier — ever reaches this client."""
    notifier_iter = _service("notifier", env, tmp_path)
    next(notifier_iter)
    token = make_token(["intents"])
    url = gateway.replace("http://", "ws://") + f"/ws?token={token}"
    leaks: list[object] = []
    closes: list[object] = []

    async def one(frames: list[str | bytes]) -> None:
        try:
            async with ws_connect(url, open_timeout=5, max_size=2**24) as ws:
                for frame in frames:
                    await ws.send(frame)
                await _publish_secret(migrated_dsn, "fuzz")
                await ws.send(json.dumps({"type": "ping"}))
                replies = await _drain(ws, 0.5)
                for msg in replies:
                    if msg.get("type") == "event" and msg.get("topic") != "intents":
                        leaks.append(msg)
                    if msg.get("type") == "error":
                        assert msg.get("code") in {
                            "bad_request",
                            "forbidden",
                            "unknown_topic",
                            "too_many_subscriptions",
                            "history_lost",
                        }, msg
                # the connection survived the bad frames: it still answers a ping
                assert any(m.get("type") == "pong" for m in replies), (frames, replies)
                # every text frame that is not a valid message got an error answer
                errors = sum(m.get("type") == "error" for m in replies)
                invalid = sum(not _valid_frame(f) for f in frames)
                assert errors >= min(invalid, 1), (frames, replies)
        except ConnectionClosed as exc:
            # cut off deliberately (unsupported data, policy, too big), never an internal error
            assert exc.rcvd is not None and exc.rcvd.code in {1003, 1007, 1008, 1009}, exc
            closes.append(exc.rcvd)

    @settings(FUZZ, max_examples=25)
    @given(frames=st.lists(client_frames, min_size=1, max_size=5))
    def run(frames: list[str | bytes]) -> None:
        asyncio.run(one(frames))

    try:
        run()
    finally:
        next(notifier_iter, None)
    assert not leaks, leaks[:3]
    assert httpx.get(gateway + "/readyz", timeout=5).status_code == 200


async def test_gateway_forbidden_topic_gets_error_and_no_events(
    gateway: str, migrated_dsn: str, env: dict[str, str], tmp_path: Path
) -> None:
    notifier_iter = _service("notifier", env, tmp_path)
    next(notifier_iter)
    try:
        token = make_token(["intents"])
        async with ws_connect(
            gateway.replace("http://", "ws://") + f"/ws?token={token}", open_timeout=5
        ) as ws:
            await ws.send(json.dumps({"type": "subscribe", "topic": "audit_logs"}))
            first = await _drain(ws, 1.0)
            assert any(m.get("code") == "forbidden" for m in first), first
            await _publish_secret(migrated_dsn, "forbidden")
            later = await _drain(ws, 1.5)
            assert not [m for m in later if m.get("type") == "event"], later
            await ws.send(json.dumps({"type": "ping"}))
            assert any(m.get("type") == "pong" for m in await _drain(ws, 1.0))
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(
                f"{gateway}/events/audit_logs", params={"token": token, "close_after": 1}
            )
            assert r.status_code == 403, r.status_code  # as docs/runbook.md says
    finally:
        next(notifier_iter, None)


@FUZZ
@given(
    params=st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.text(max_size=60),
        max_size=5,
    ),
    path=st.sampled_from(
        ["/events/intents", "/events/audit-logs", "/events/intents/not-a-uuid", "/events/%00"]
    ),
    last_id=st.one_of(st.none(), st.text(max_size=40)),
)
def test_gateway_fuzzed_sse_queries(
    gateway: str, params: dict[str, str], path: str, last_id: str | None
) -> None:
    token = make_token(["intents"])
    query = {**params, "token": token, "close_after": "1"}
    headers = {}
    if last_id is not None and last_id.isprintable() and last_id.isascii():
        headers["Last-Event-ID"] = last_id
    # the answer's status and headers are what matter here; a valid stream is left at once
    # (no data of other topics can leak on a 200: that is the forbidden-topic test's job)
    with httpx.stream(
        "GET", gateway + path, params=query, headers=headers, timeout=httpx.Timeout(5.0)
    ) as r:
        assert r.status_code < 500, (path, query, r.status_code)
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("text/event-stream")
        else:
            assert r.headers["content-type"].startswith("application/json"), r.headers
    assert httpx.get(gateway + "/healthz", timeout=5).status_code == 200


# -- oversized rows end to end -----------------------------------------------------------------


async def test_oversized_rows_arrive_whole(
    gateway: str, env: dict[str, str], migrated_dsn: str, tmp_path: Path
) -> None:
    """Rows far beyond the 8000-byte NOTIFY limit go notifier → Redis → gateway whole."""
    notifier_iter = _service("notifier", env, tmp_path)
    next(notifier_iter)
    try:
        token = make_token(["intents"])
        sizes = [9_000, 200_000, 2_000_000]
        async with ws_connect(
            gateway.replace("http://", "ws://") + f"/ws?token={token}",
            open_timeout=5,
            max_size=2**25,
        ) as ws:
            await ws.send(json.dumps({"type": "subscribe", "topic": "intents"}))
            assert any(m.get("type") == "subscribed" for m in await _drain(ws, 2.0))
            ids = []
            async with await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True) as c:
                for n in sizes:
                    cur = await c.execute(
                        "INSERT INTO intents (title, payload) VALUES (%s, %s) RETURNING id::text",
                        (f"big {n}", Jsonb({"blob": "é" * (n // 2)})),
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    ids.append(row[0])
            got: dict[str, int] = {}
            deadline = time.monotonic() + 20
            while len(got) < len(ids) and time.monotonic() < deadline:
                for m in await _drain(ws, 1.0):
                    if m.get("type") == "event" and m.get("key") in ids:
                        data = m["data"]
                        assert isinstance(data, dict)
                        got[str(m["key"])] = len(data["payload"]["blob"])
            assert got == {i: n // 2 for i, n in zip(ids, sizes, strict=True)}
    finally:
        next(notifier_iter, None)


async def test_gateway_cuts_connections_when_the_token_expires(
    gateway: str, redis_url: str, namespace: str
) -> None:
    """As docs/runbook.md says: a connection lives no longer than its token."""
    # make `intents` a known topic the way the notifier does (one event through the bus)
    from bridge_common.channels import Channels
    from bridge_common.events import event_fragment
    from bridge_common.redis import EventPublisher, create_redis
    from bridge_common.settings import BridgeSettings

    bus = create_redis(BridgeSettings(BRIDGE_REDIS_URL=redis_url))
    try:
        await EventPublisher(bus, Channels(namespace)).publish(
            "intents", [(None, event_fragment("insert", "expiry-test", {}, "t"))]
        )
    finally:
        await bus.aclose()
    token = make_token(["intents"], ttl=2)
    started = time.monotonic()
    async with ws_connect(
        gateway.replace("http://", "ws://") + f"/ws?token={token}", open_timeout=5
    ) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "intents"}))
        with pytest.raises(ConnectionClosed) as exc:
            while time.monotonic() - started < 15:
                await asyncio.wait_for(ws.recv(), 15)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1008, exc.value
    assert "expired" in exc.value.rcvd.reason
    assert time.monotonic() - started < 10
    async with httpx.AsyncClient(timeout=15) as http:
        token = make_token(["intents"], ttl=2)
        started = time.monotonic()
        async with http.stream("GET", f"{gateway}/events/intents", params={"token": token}) as r:
            assert r.status_code == 200
            async for _ in r.aiter_lines():
                pass  # heartbeats at most; the stream must end by itself
        assert time.monotonic() - started < 10
