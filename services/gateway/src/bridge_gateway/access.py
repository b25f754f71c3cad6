"""Admission: what a principal may read of a topic, decided once per subscription.

:func:`admit` is the one check every way a row can leave the gateway goes through
(WebSocket subscribe, SSE, `GET /presence`, and the HTTP snapshot): the topic is valid
and in the token's `topics`, the client's filter is well-formed and does not widen the
token's, and the answer is the subscription's *effective filter* — token filter AND
client filter. Everything downstream (live fan-out groups, `since` / `Last-Event-ID`
replays from Redis and the PostgreSQL history, SSE) filters with that one object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge_common.channels import InvalidTopic, check_topic

from .auth import Principal
from .errors import BadRequest, Forbidden, GatewayError
from .filters import RowFilter, compile_filter, narrow


def admit(
    principal: Principal, topic: Any, spec: Mapping[str, Any] | None = None
) -> RowFilter | None:
    """The effective filter of `principal` reading `topic` with the client filter `spec`.

    None: every row. Raises BadRequest (bad topic or filter) or Forbidden (topic outside
    the token, or a filter beyond the token's), with `topic` set where it is valid.
    """
    try:
        check_topic(topic)
    except InvalidTopic as exc:
        raise BadRequest(str(exc), topic=topic if isinstance(topic, str) else None) from None
    if not principal.may_read(topic):
        raise Forbidden(f"token does not allow topic {topic!r}", topic=topic)
    try:
        return narrow(principal.row_filter(topic), compile_filter(spec))
    except GatewayError as err:
        err.topic = topic
        raise


def admit_presence(principal: Principal, topic: Any) -> None:
    """Reading who is on `topic` (`GET /presence`, `presence: true`).

    Presence lists are topic-wide, across tenants: a token whose rows of `topic` are
    filtered may not read them (and is itself never listed, see `auth.py`).
    """
    admit(principal, topic)
    if principal.row_filter(topic) is not None:
        raise Forbidden(
            f"presence of {topic!r} is not available to a token with a row filter on it",
            topic=topic,
        )
