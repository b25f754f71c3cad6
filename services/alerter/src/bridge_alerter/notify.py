"""What goes over the wire to each kind of channel, and one attempt at sending it.

Slack gets an incoming-webhook message (`text` + `blocks`). A generic webhook gets exactly
the contract's `AlertNotice` JSON, signed `X-Bridge-Signature: sha256=<hex HMAC-SHA256 of
the raw body>` with the channel's secret, plus `X-Bridge-Delivery: <notification id>` so a
receiver can drop the rare duplicate of at-least-once delivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from bridge_common import tracing
from bridge_common.events import AlertNotice, dumps

from .destinations import DestinationError, IPNetwork, check_resolved
from .errors import DeliveryError
from .rules import ChannelConfig

SIGNATURE_HEADER = "X-Bridge-Signature"
DELIVERY_HEADER = "X-Bridge-Delivery"
_EMOJI = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}
#: the longest Retry-After honoured; anything longer is clamped (the max age still applies)
MAX_RETRY_AFTER = 3600.0


def sign(secret: str, body: bytes) -> str:
    """The signature header value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(notice: AlertNotice) -> bytes:
    return dumps(notice)


def slack_message(notice: AlertNotice, kind: str) -> dict[str, Any]:
    """An incoming-webhook message: `text` for notifications, `blocks` for the channel."""
    label = "TEST" if kind == "test" else notice.state.upper()
    repeat = " (still firing)" if kind == "repeat" else ""
    text = f"[{label}] {notice.rule} ({notice.severity}){repeat}: {notice.summary}"
    value = "n/a" if notice.value is None else f"{notice.value:g}"
    emoji = _EMOJI.get(notice.state, "")
    return {
        "text": text,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"{emoji} *[{label}] {notice.rule}*{repeat}\n{notice.summary}",
                },
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"*severity* {notice.severity}"},
                    {"type": "mrkdwn", "text": f"*value* {value}"},
                    {"type": "mrkdwn", "text": f"*threshold* {notice.threshold:g}"},
                    {"type": "mrkdwn", "text": f"*since* {notice.started_at or 'n/a'}"},
                    {"type": "mrkdwn", "text": f"*fingerprint* `{notice.fingerprint}`"},
                ],
            },
        ],
    }


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


async def send(
    http: httpx.AsyncClient,
    channel: ChannelConfig,
    notice: AlertNotice,
    *,
    kind: str,
    delivery_id: str | int,
    call_timeout: float,
    allowed: tuple[IPNetwork, ...] | None = None,
) -> None:
    """One attempt; raises :class:`DeliveryError` saying whether a retry may help.

    With `allowed` (the alerter's `BRIDGE_ALERTER_ALLOWED_NETWORKS`), the host must not
    resolve to a refused address (see `destinations`).
    """
    headers = {"Content-Type": "application/json", DELIVERY_HEADER: str(delivery_id)}
    if channel.type == "slack":
        body = dumps(slack_message(notice, kind))
    else:
        body = webhook_body(notice)
        if channel.secret:
            headers[SIGNATURE_HEADER] = sign(channel.secret, body)
        # traced: the receiver may join the `alerter.deliver` span's trace (W3C header)
        if tracing.enabled() and (tp := tracing.current_traceparent()) is not None:
            headers["traceparent"] = tp
    try:
        async with asyncio.timeout(call_timeout):
            if allowed is not None:
                await check_resolved(channel.url, allowed)
            resp = await http.post(channel.url, content=body, headers=headers, timeout=call_timeout)
    except DestinationError as exc:
        raise DeliveryError(f"refused destination: {exc}", retry=False) from None
    except TimeoutError:
        raise DeliveryError(f"no answer within {call_timeout:g}s", retry=True) from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}".strip(), retry=True) from None
    except (httpx.InvalidURL, ValueError) as exc:
        # a URL that slipped past validation never crashes the delivery loop
        raise DeliveryError(f"invalid channel URL: {exc}", retry=False) from None
    if resp.is_success:
        return
    reason = f"HTTP {resp.status_code}: {resp.text[:200]}"
    if resp.status_code == 429:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        raise DeliveryError(reason, retry=True, retry_after=retry_after)
    if resp.status_code in (408, 425) or resp.status_code >= 500:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        raise DeliveryError(reason, retry=True, retry_after=retry_after)
    raise DeliveryError(reason, retry=False)
