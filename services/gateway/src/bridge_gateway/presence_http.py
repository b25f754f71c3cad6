"""`GET /presence/{topic}`: who is subscribed to a topic on every gateway replica.

Same auth as subscribing to the topic (401 without a valid token, 403 for a topic outside
the token's `topics`, or one the token's `filters` restrict: the list is topic-wide).
`?count=1` answers only the counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge_common.channels import ALERTS_TOPIC
from bridge_common.events import dumps
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import metrics
from .access import admit_presence
from .auth import token_from
from .errors import GatewayError, Unauthorized
from .presence_redis import PresenceUnavailable

if TYPE_CHECKING:
    from .gateway import Gateway

_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "unknown_topic": 404,
    "unavailable": 503,
}


def _refuse(
    code: str, message: str, headers: dict[str, str], topic: str | None = None
) -> JSONResponse:
    status = _STATUS[code]
    metrics.REJECTED.labels(str(status)).inc()
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if topic is not None:
        body["topic"] = topic
    return JSONResponse(body, status_code=status, headers=headers)


def _flag(raw: str | None) -> bool | None:
    """`count`: 1/true/0/false (or absent); None when it is anything else."""
    if raw is None or raw.lower() in ("", "0", "false"):
        return False
    if raw.lower() in ("1", "true"):
        return True
    return None


async def presence_topic(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    origin = request.headers.get("origin")
    cors = gw.cors_headers(origin)
    if not gw.origin_allowed(origin):
        return _refuse("forbidden", "origin not allowed", cors)
    try:
        principal = gw.auth.authenticate(token_from(request.headers, request.query_params))
    except Unauthorized as exc:
        return _refuse("unauthorized", exc.message, cors)
    topic = request.path_params["topic"]
    try:
        admit_presence(principal, topic)
    except GatewayError as err:
        return _refuse(err.code, err.message, cors, err.topic)
    count = _flag(request.query_params.get("count"))
    if count is None:
        return _refuse("bad_request", "count must be 1 or 0", cors, topic)
    try:
        if topic != ALERTS_TOPIC and not await gw.topics.exists(topic):
            return _refuse("unknown_topic", f"no such topic {topic!r}", cors, topic)
        found = await gw.presence.read(topic)
    except (PresenceUnavailable, RedisError, OSError) as exc:
        return _refuse("unavailable", f"presence cannot be read now, retry: {exc}", cors, topic)
    headers = {"cache-control": "no-store", **cors}
    if count:
        return JSONResponse(
            {"topic": topic, "connections": found.connections, "subs": found.subs},
            headers=headers,
        )
    body = (
        b'{"topic":'
        + dumps(topic)
        + b',"present":['
        + b",".join(found.entries)
        + b'],"connections":'
        + str(found.connections).encode()
        + b',"subs":'
        + str(found.subs).encode()
        + b',"truncated":'
        + (b"true" if found.truncated else b"false")
        + b"}"
    )
    return Response(body, media_type="application/json", headers=headers)
