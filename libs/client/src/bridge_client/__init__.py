"""bridge_client: the async Python client of the Bridge Lite gateway.

    async with BridgeClient("http://gateway:8080", token=token) as client:
        async for event in client.subscribe("intents", filter={"status": "failed"}):
            ...

WebSocket first, Server-Sent Events when the upgrade is refused; reconnects with
jittered exponential backoff and resumes from the last delivered id, so each event is
seen exactly once; `HistoryLost` when the gateway can no longer resume.

`event.op` is `insert`, `update`, `delete` or `truncate` (the table was emptied: key "",
data {}; drop what you hold for the topic). A primary-key change arrives as a `delete` of
the old key then an `insert` of the new one; a composite key is JSON array text. A
filtered subscriber gets `leave` (key, no data) when an update takes a row out of its
filter.

`client.subscribe(topic, filter=…, snapshot=True)` yields `SnapshotRows` (the rows now),
then the events after them exactly once; `async for view in sub.view()` keeps a dict by
key.
"""

from bridge_common.events import Event, PresenceEntry

from .backoff import Backoff, backoff_ceiling, backoff_delay
from .client import BridgeClient, ClientOptions, Endpoints
from .errors import (
    BridgeClientError,
    ClientClosed,
    DuplicateSubscription,
    HistoryLost,
    InvalidSubscription,
    SubscriptionRejected,
    Unauthorized,
)
from .eventid import parse_event_id
from .presence import PresenceChange, PresenceList, PresenceSnapshot
from .subscription import SnapshotRows, Subscription, View

__all__ = [
    "Backoff",
    "BridgeClient",
    "BridgeClientError",
    "ClientClosed",
    "ClientOptions",
    "DuplicateSubscription",
    "Endpoints",
    "Event",
    "HistoryLost",
    "InvalidSubscription",
    "PresenceChange",
    "PresenceEntry",
    "PresenceList",
    "PresenceSnapshot",
    "SnapshotRows",
    "Subscription",
    "SubscriptionRejected",
    "Unauthorized",
    "View",
    "backoff_ceiling",
    "backoff_delay",
    "parse_event_id",
]
