"""Pure parts of the client: endpoints, event ids, SSE filter parameters, frames."""

from __future__ import annotations

import pytest
from bridge_client import (
    BridgeClient,
    ClientClosed,
    DuplicateSubscription,
    Endpoints,
    InvalidSubscription,
    parse_event_id,
)
from bridge_client.eventid import format_event_id
from bridge_client.sse import filter_params


@pytest.mark.parametrize(
    ("url", "ws", "http"),
    [
        ("http://gw:8080", "ws://gw:8080/ws", "http://gw:8080"),
        ("http://gw:8080/", "ws://gw:8080/ws", "http://gw:8080"),
        ("https://gw.example/bridge", "wss://gw.example/bridge/ws", "https://gw.example/bridge"),
        ("ws://gw:8080/ws", "ws://gw:8080/ws", "http://gw:8080"),
        ("wss://gw/x/ws/", "wss://gw/x/ws", "https://gw/x"),
    ],
)
def test_endpoints_from_any_base_url(url: str, ws: str, http: str) -> None:
    ep = Endpoints.from_url(url)
    assert (ep.websocket, ep.http) == (ws, http)
    assert ep.events("intents") == http + "/events/intents"


@pytest.mark.parametrize("url", ["ftp://gw", "gw:8080", "http://"])
def test_endpoints_refuse_other_urls(url: str) -> None:
    with pytest.raises(ValueError):
        Endpoints.from_url(url)


def test_event_ids_order_as_integer_pairs_not_text() -> None:
    ids = ["1700000000000-10", "1700000000000-9", "999999999999-0", "1700000000001-0"]
    ordered = sorted(ids, key=parse_event_id)
    assert ordered == ["999999999999-0", "1700000000000-9", "1700000000000-10", "1700000000001-0"]
    assert parse_event_id("1700000000000") == (1700000000000, 0)
    assert format_event_id(parse_event_id("5-7")) == "5-7"


@pytest.mark.parametrize("bad", ["", "abc", "1-x", "-1-2"])
def test_bad_event_ids_raise(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_event_id(bad)


def test_filter_params_repeat_list_values_and_spell_json_scalars() -> None:
    params = filter_params({"status": ["failed", "corrected"], "n": 3, "ok": True, "x": None})
    assert params == [
        ("status", "failed"),
        ("status", "corrected"),
        ("n", "3"),
        ("ok", "true"),
        ("x", "null"),
    ]
    assert filter_params(None) == []


@pytest.mark.parametrize(
    ("topic", "filter", "since"),
    [
        ("no spaces allowed", None, None),
        ("", None, None),
        ("intents", {"status": {"nested": 1}}, None),
        ("intents", {"status": []}, None),
        ("intents", {"status": [["a"]]}, None),
        ("intents", None, "yesterday"),
    ],
)
async def test_subscribe_refuses_what_the_gateway_would(
    topic: str, filter: dict[str, object] | None, since: str | None
) -> None:
    async with BridgeClient("http://127.0.0.1:9") as client:
        with pytest.raises(InvalidSubscription):
            client.subscribe(topic, filter=filter, since=since)
        assert client.subscriptions == []
        assert client.connections == 0


async def test_subscribe_needs_a_started_client_and_one_subscription_per_topic() -> None:
    client = BridgeClient("http://127.0.0.1:9")
    with pytest.raises(ClientClosed):
        client.subscribe("intents")
    async with client:
        sub = client.subscribe("intents", filter={"status": ["failed", None, 3, True]})
        with pytest.raises(DuplicateSubscription):
            client.subscribe("intents")
        await sub.close()
        client.subscribe("intents")  # free again
    with pytest.raises(ClientClosed):
        client.subscribe("intents")
    with pytest.raises(ValueError):
        BridgeClient("http://127.0.0.1:9", token="a", token_provider=lambda: "b")
    with pytest.raises(ValueError):
        BridgeClient("http://127.0.0.1:9", transport="carrier-pigeon")
