"""`GET /snapshot/{topic}`: the rows matching a filter now, and the position to subscribe
from for the changes after them — no gap, no overlap (docs/architecture.md, "Snapshots").

A later subscriber passes `since=<position>` and carries no snapshot of its own, so the
position must split the stream exactly: every event at or before it already in the rows,
every event after it not. Ids follow the relay's order, not commit order, so such a point
needs the rows brought up to it: the history's last id P is read before the snapshot S;
after S,
the gateway waits until no outbox row that S shows is left (the relay moved them all into
the history), reads the history's last id H, and folds the events in (P, H] that S does
not show into the rows. Every event S shows has an id ≤ H; every event ≤ P is shown by S;
so the rows hold exactly the events ≤ H, and H is the position.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import psycopg
from bridge_common.channels import ALERTS_TOPIC
from bridge_common.events import dumps
from psycopg_pool import PoolTimeout
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import metrics
from .access import admit
from .auth import token_from
from .errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    SnapshotTooLarge,
    SnapshotUnavailable,
    Unauthorized,
    Unavailable,
    UnknownTopic,
)
from .event_ids import ZERO, EventId, format_id
from .filters import RowFilter
from .views import Cutover, admits, decode_meta, decode_row

if TYPE_CHECKING:
    from .archive import Archive
    from .gateway import Gateway

#: query parameters that are not row filters
RESERVED = frozenset({"token", "limit"})
#: how long the answer may wait for the relay / Redis to catch up with the snapshot (s)
CATCH_UP = 10.0

_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "unknown_topic": 404,
    "snapshot_too_large": 413,
    "snapshot_unavailable": 501,
    "unavailable": 503,
}


def _error(err: GatewayError, headers: dict[str, str]) -> JSONResponse:
    status = _STATUS.get(err.code, 400)
    metrics.REJECTED.labels(str(status)).inc()
    body: dict[str, Any] = {"type": "error", "code": err.code, "message": err.message}
    if err.topic is not None:
        body["topic"] = err.topic
    return JSONResponse(body, status_code=status, headers=headers)


async def snapshot_topic(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    origin = request.headers.get("origin")
    cors = gw.cors_headers(origin)
    topic = request.path_params["topic"]
    try:
        if gw.stopping:
            raise Unavailable("gateway is shutting down")
        if not gw.origin_allowed(origin):
            raise Forbidden("origin not allowed")
        principal = gw.auth.authenticate(token_from(request.headers, request.query_params))
        params = request.query_params
        spec: dict[str, Any] = {}
        for key in params:
            if key not in RESERVED:
                values = params.getlist(key)
                spec[key] = values if len(values) > 1 else values[0]
        # the effective filter (token filter AND the query's), as every read path
        row_filter = admit(principal, topic, spec)
        limit = _limit(gw, params.get("limit"), topic)
        if gw.snapshots is None:
            raise SnapshotUnavailable(
                "snapshots are not enabled on this gateway (BRIDGE_SNAPSHOT_DSN)", topic=topic
            )
        if topic == ALERTS_TOPIC or not await gw.topics.exists(topic):
            raise UnknownTopic(f"no such topic {topic!r}", topic=topic)
        body = await _read(gw, topic, row_filter, limit)
    except Unauthorized as err:
        return _error(err, cors)
    except GatewayError as err:
        return _error(err, cors)
    except (RedisError, OSError):
        return _error(Unavailable("Redis does not answer; retry", topic=topic), cors)
    return Response(
        body, media_type="application/json", headers={"cache-control": "no-store", **cors}
    )


async def _last_id(archive: Archive, topic: str) -> EventId | None:
    try:
        return await archive.last_id(topic)
    except (psycopg.Error, PoolTimeout):
        raise Unavailable("the history database cannot be reached; retry", topic=topic) from None


def _limit(gw: Gateway, raw: str | None, topic: str) -> int:
    most = gw.settings.snapshot_max_rows
    if raw is None or raw == "":
        return most
    try:
        n = int(raw)
    except ValueError:
        raise BadRequest("limit must be a positive integer", topic=topic) from None
    if n < 1:
        raise BadRequest("limit must be a positive integer", topic=topic)
    if n > most:
        raise SnapshotTooLarge(
            f"limit {n} is above this gateway's BRIDGE_SNAPSHOT_MAX_ROWS ({most})", topic=topic
        )
    return n


async def _read(gw: Gateway, topic: str, row_filter: RowFilter | None, limit: int) -> bytes:
    snapshots = gw.snapshots
    archive = gw.history.archive
    assert snapshots is not None
    if archive is None:
        raise Unavailable("the history database is not configured", topic=topic)
    # the history's last id, not Redis's: it never goes back when Redis loses data
    position = await _last_id(archive, topic) or ZERO
    async with snapshots.open(topic) as snap:
        rows, truncated = await snap.collect(row_filter, limit)
        cutover = snap.cutover
    await snapshots.published(topic, cutover, CATCH_UP)
    end = await _last_id(archive, topic) or position
    await _fold(gw, topic, row_filter, cutover, rows, position, end)
    if len(rows) > limit:
        for key in list(rows)[limit:]:
            del rows[key]
        truncated = True
    return (
        b'{"topic":'
        + dumps(topic)
        + b',"rows":['
        + b",".join(rows.values())
        + b'],"keys":'
        + dumps(list(rows))
        + b',"position":"'
        + format_id(end).encode()
        + b'","truncated":'
        + (b"true" if truncated else b"false")
        + b"}"
    )


async def _fold(
    gw: Gateway,
    topic: str,
    row_filter: RowFilter | None,
    cutover: Cutover,
    rows: dict[str, bytes],
    after: EventId,
    end: EventId,
) -> None:
    """Apply the events in (after, end] the snapshot does not show (Redis may still be
    publishing the last of them: read again until `end`)."""
    cursor = after
    deadline = asyncio.get_running_loop().time() + CATCH_UP
    while cursor < end:
        async for batch in gw.history.read_after(topic, cursor):
            for event_id, _, raw, meta_bytes in batch:
                if event_id > end:
                    return
                cursor = event_id
                meta = decode_meta(meta_bytes)
                if meta.x is not None and cutover.visible(meta.x):
                    continue
                row = decode_row(raw)
                if row.op == "truncate":
                    rows.clear()
                elif row.op in ("insert", "update") and not row.too_large:
                    if row_filter is None or admits(row_filter, row):
                        rows[row.key] = dumps(row.data)
                    else:
                        rows.pop(row.key, None)
                else:
                    # deleted, or too large to carry: not in the view
                    rows.pop(row.key, None)
        if cursor < end:
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(
                    "Redis has not yet received the events after this snapshot; retry",
                    topic=topic,
                )
            await asyncio.sleep(0.05)
