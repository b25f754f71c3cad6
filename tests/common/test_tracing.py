"""bridge_common.tracing and bridge_common.lag in-process: spans recorded by an in-memory
exporter join the application's trace from its traceparent, nothing at all happens while
tracing is off, the event wire form carries the traceparent only when set, and recent
quantiles are read off a histogram."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from bridge_common import events, tracing
from bridge_common.lag import LAG_BUCKETS, RecentQuantiles, id_seconds, quantile
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, Histogram

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TP = f"00-{TRACE}-{PARENT}-01"
TP2 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)
    provider.shutdown()


# -- the wire form ---------------------------------------------------------------------


def test_event_carries_traceparent_last_and_only_when_set() -> None:
    plain = events.assemble_event("t", "1-0", events.event_fragment("insert", "1", {"a": 1}, "ts"))
    assert b"traceparent" not in plain
    assert events.fragment_traceparent(plain) is None
    assert events.decode_event(plain).traceparent is None

    frag = events.event_fragment_raw("update", "1", b'{"a":1}', "ts", TP)
    raw = events.assemble_event("t", "1-0", frag)
    doc = orjson.loads(raw)
    assert list(doc)[-1] == "traceparent" and doc["traceparent"] == TP
    assert events.fragment_traceparent(raw) == TP
    assert events.fragment_traceparent(frag) == TP
    ev = events.decode_event(raw)
    assert ev.traceparent == TP and ev.data == {"a": 1}
    assert events.encode_event(ev) == raw  # the struct and the fragment agree byte for byte

    big = events.event_fragment_too_large("insert", "1", 99, "ts", TP)
    assert orjson.loads(events.assemble_event("t", "1-0", big))["traceparent"] == TP


def test_a_row_whose_data_mentions_traceparent_is_not_mistaken_for_one() -> None:
    data = {"note": ',"traceparent":"' + TP + '"}'}
    raw = events.assemble_event("t", "1-0", events.event_fragment("insert", "1", data, "ts"))
    assert events.fragment_traceparent(raw) is None


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
    ],
)
def test_traces_are_wanted_only_when_the_standard_variables_ask(
    env: dict[str, str], expected: bool
) -> None:
    assert tracing.wanted(env) is expected


def test_off_by_default_every_hook_is_a_no_op() -> None:
    assert not tracing.configure("gateway", "i1", env={})
    assert not tracing.enabled()
    assert tracing.tracer("x") is None
    with tracing.events_span("x", "y", [TP]):
        pass
    tracing.record("x", "y", TP, 0)
    assert tracing.start_span("x", "y") is None
    tracing.end_span(None)


async def test_configure_installs_an_otlp_exporter_and_shutdown_returns() -> None:
    # nothing listens on the endpoint: shutdown still returns within its deadline
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    try:
        assert tracing.configure("notifier", "i1", env=env)
        assert tracing.enabled() and tracing.tracer("bridge.notifier") is not None
        tracing.record("bridge.notifier", "relay.publish", TP, 0)
    finally:
        await tracing.shutdown(deadline=1.0)
    assert not tracing.enabled()


# -- spans ------------------------------------------------------------------------------


def test_events_span_is_a_child_of_each_application_trace(spans: InMemorySpanExporter) -> None:
    with tracing.events_span("bridge.notifier", "relay.publish", [TP, TP2, TP], untraced=False):
        pass
    got = spans.get_finished_spans()
    assert len(got) == 2  # one per distinct trace, no root: every event was traced
    by_trace = {format(s.context.trace_id, "032x"): s for s in got}
    assert set(by_trace) == {TRACE, TP2[3:35]}
    s = by_trace[TRACE]
    assert s.parent is not None and format(s.parent.span_id, "016x") == PARENT
    assert s.parent.is_remote and s.name == "relay.publish"
    assert s.attributes is not None and s.attributes["bridge.traces"] == 2
    assert got[0].start_time == got[1].start_time and got[0].end_time == got[1].end_time


def test_untraced_events_get_a_root_span_and_overflow_becomes_links(
    spans: InMemorySpanExporter,
) -> None:
    many = [f"00-{i + 1:032x}-{i + 1:016x}-01" for i in range(tracing.MAX_PARENTS + 3)]
    with tracing.events_span("bridge.etl", "etl.load", many, untraced=False):
        pass
    got = spans.get_finished_spans()
    roots = [s for s in got if s.parent is None]
    assert len(got) == tracing.MAX_PARENTS + 1 and len(roots) == 1
    assert len(roots[0].links) == 3

    spans.clear()
    with tracing.events_span("bridge.etl", "etl.load", []):
        pass
    (only,) = spans.get_finished_spans()
    assert only.parent is None


@pytest.mark.parametrize(
    "bad",
    [
        "00-zz-not-a-traceparent",
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-{PARENT}-01",
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01-",
    ],
)
def test_malformed_traceparent_gives_a_root_span(spans: InMemorySpanExporter, bad: str) -> None:
    assert tracing.parent_context(bad) is None
    tracing.record("bridge.gateway", "gateway.fanout", bad, 0)
    assert [s.parent for s in spans.get_finished_spans()] == [None]


def test_parent_context_keeps_the_sampled_flag() -> None:
    from opentelemetry import trace

    for flags, sampled in (("01", True), ("00", False)):
        ctx = tracing.parent_context(f"00-{TRACE}-{PARENT}-{flags}")
        assert ctx is not None
        sc = trace.get_current_span(ctx).get_span_context()
        assert sc.is_remote and sc.trace_flags.sampled is sampled
        assert format(sc.trace_id, "032x") == TRACE and format(sc.span_id, "016x") == PARENT


def test_a_failure_inside_is_recorded_on_the_span(spans: InMemorySpanExporter) -> None:
    with (
        pytest.raises(RuntimeError),
        tracing.events_span("bridge.notifier", "relay.publish", [TP], untraced=False),
    ):
        raise RuntimeError("redis down")
    (s,) = spans.get_finished_spans()
    assert not s.status.is_ok and "redis down" in (s.status.description or "")


def test_start_and_end_span(spans: InMemorySpanExporter) -> None:
    span = tracing.start_span("bridge.gateway", "gateway.replay", {"bridge.topic": "t"})
    tracing.end_span(span, {"bridge.history_lost": False})
    (s,) = spans.get_finished_spans()
    assert s.attributes == {"bridge.topic": "t", "bridge.history_lost": False}


# -- lag --------------------------------------------------------------------------------


def test_id_seconds() -> None:
    assert id_seconds("1700000000123-4") == pytest.approx(1700000000.123)
    assert id_seconds(b"1700000000123") == pytest.approx(1700000000.123)
    assert id_seconds("junk") is None


def test_quantile_interpolates_within_buckets() -> None:
    bounds = [0.1, 1.0, float("inf")]
    assert quantile(0.5, bounds, [0, 0, 0]) is None
    assert quantile(0.5, bounds, [10, 10, 10]) == pytest.approx(0.05)
    assert quantile(0.5, bounds, [0, 10, 10]) == pytest.approx(0.55)
    assert quantile(0.99, bounds, [0, 0, 10]) == pytest.approx(1.0)  # beyond: the last bound


def test_recent_quantiles_cover_the_window_only() -> None:
    h = Histogram(
        "t_lag_seconds", "t", ["topic"], buckets=LAG_BUCKETS, registry=CollectorRegistry()
    )
    recent = RecentQuantiles(h, window=60.0)
    for _ in range(100):
        h.labels("a").observe(0.002)
    first = recent.read(now=0.0)
    assert first["a"]["count"] == 100 and first["a"]["p99"] is not None
    assert first["a"]["p99"] <= 0.0025
    for _ in range(100):
        h.labels("a").observe(20.0)
    h.labels("b").observe(0.5)
    later = recent.read(now=30.0)  # against the reading at 0: only the slow ones
    assert later["a"]["count"] == 100 and later["a"]["p50"] is not None
    assert 10.0 <= later["a"]["p50"] <= 30.0
    assert later["b"]["count"] == 1
    assert recent.read(now=200.0) == {}  # nothing new since the last reading in the window


def test_traces_endpoint_follows_the_otlp_http_convention() -> None:
    assert tracing.traces_endpoint({}) is None
    assert tracing.traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == (
        "http://c:4318/v1/traces"
    )
    both = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9999/traces",
    }
    assert tracing.traces_endpoint(both) == "http://t:9999/traces"


def test_recent_quantiles_report_the_slowest_topics_only() -> None:
    h = Histogram(
        "t_many_seconds", "t", ["topic"], buckets=LAG_BUCKETS, registry=CollectorRegistry()
    )
    for i in range(10):
        h.labels(f"t{i}").observe(0.001 * (i + 1) ** 3)
    got = RecentQuantiles(h, max_topics=3).read(now=0.0)
    assert set(got) == {"t9", "t8", "t7"}
