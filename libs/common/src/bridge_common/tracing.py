"""OpenTelemetry spans for the services: exported over OTLP/HTTP when the standard `OTEL_*`
variables ask for it, nothing at all otherwise.

:func:`configure` runs once at start-up (`Service` calls it with the variables its
settings validated — a bad value exits 2 like any other setting). It installs a tracer provider
with a batch span processor and the OTLP/HTTP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT`
or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, or `OTEL_TRACES_EXPORTER` names `otlp` or
`console` — unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Otherwise
:func:`tracer` returns None and every hook in the services is one `is None` test: no span
objects, no context, no cost. The exporter (endpoint, headers, timeout) and the sampler
read their own standard variables.

A trace crosses Redis in the event's ``"traceparent"`` — the value the writing transaction
set with `SET LOCAL bridge.traceparent` (the contract's "Tracing"): the notifier's publish
span, the gateway's fan-out span and the ETL's load span of an event are all children of
the application's span. Events without one get spans rooted per hop.

Export runs on the SDK's background thread with a bounded queue: a collector that is
down or slow costs dropped spans, never a blocked event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TracerProvider,
)
from opentelemetry.trace import SpanKind as SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .logging import get_logger

log = get_logger(__name__)

#: spans made per distinct application trace in one batch; beyond, links on a batch span
MAX_PARENTS = 32
#: links one span carries at most
MAX_LINKS = 64

_propagator = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracers: dict[str, Tracer] = {}
#: the exporters `configure` installed (interrupted by `shutdown` when the collector hangs)
_exporters: list[Any] = []

_ON = ("otlp", "console")


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for exported traces (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    if "none" in exporters:
        return False
    if any(e in _ON for e in exporters):
        return True
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def configure(service: str, instance: str, env: Mapping[str, str] | None = None) -> bool:
    """Install the exporting tracer provider when the environment asks for it; True then.
    A second call keeps the provider already installed."""
    if _provider is not None:
        return True
    env = os.environ if env is None else env
    if not wanted(env):
        return False
    # the SDK is imported only when traces are wanted
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    resource = Resource.create(
        {"service.name": f"bridge-{service.replace('_', '-')}", "service.instance.id": instance}
    )
    provider = SdkTracerProvider(resource=resource)
    exporters = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    chosen: list[SpanExporter] = []
    if "console" in exporters:
        chosen.append(ConsoleSpanExporter())
    if "otlp" in exporters or not chosen:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        chosen.append(OTLPSpanExporter(endpoint=traces_endpoint(env)))
    for exporter in chosen:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    _exporters[:] = chosen
    log.info("tracing.enabled", exporters=[type(e).__name__ for e in chosen])
    return True


def traces_endpoint(env: Mapping[str, str]) -> str | None:
    """Where spans are POSTed: the traces URL, else `<endpoint>/v1/traces`, else None
    (the exporter's own default, http://localhost:4318/v1/traces)."""
    url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if url:
        return url
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if base:
        return base.rstrip("/") + "/v1/traces"
    return None


def install(provider: TracerProvider | None) -> None:
    """Use `provider` for every span from now on (None: tracing off). Tests install one
    with an in-memory exporter."""
    global _provider
    _provider = provider
    _tracers.clear()


def tracer(name: str) -> Tracer | None:
    """The tracer named `name`, or None while tracing is off."""
    if _provider is None:
        return None
    t = _tracers.get(name)
    if t is None:
        t = _tracers[name] = _provider.get_tracer(name)
    return t


def enabled() -> bool:
    return _provider is not None


async def shutdown(deadline: float = 3.0) -> None:
    """Flush and stop the exporter on a thread (an unreachable collector must not hold the
    event loop). A flush still retrying after `deadline` seconds is interrupted — its
    spans are dropped — so a collector that is down delays shutdown by `deadline`, no more."""
    global _provider
    provider, _provider = _provider, None
    exporters, _exporters[:] = list(_exporters), []
    _tracers.clear()
    stop = getattr(provider, "shutdown", None)
    if stop is None:
        return
    done = asyncio.ensure_future(asyncio.to_thread(stop))
    finished, _ = await asyncio.wait([done], timeout=deadline)
    if finished:
        return
    log.warning("tracing.shutdown_interrupted", seconds=deadline, reason="collector unreachable")
    for exporter in exporters:
        # ends the export's retry wait at once; the provider's shutdown then returns
        exporter.shutdown()
    await asyncio.wait([done], timeout=2.0)


# -- the application's trace ------------------------------------------------------------


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
#: parsed traceparents (a batch or a fan-out often repeats one); cleared when full
_contexts: dict[str, Context | None] = {}
_CONTEXTS_MAX = 1024


def parent_context(traceparent: str | None) -> Context | None:
    """A context whose current span is the remote span `traceparent` names; None when it
    is absent or malformed (the W3C rules: version not ff, ids not all zero)."""
    if not traceparent:
        return None
    if traceparent in _contexts:
        return _contexts[traceparent]
    ctx = _parse(traceparent)
    if len(_contexts) >= _CONTEXTS_MAX:
        _contexts.clear()
    _contexts[traceparent] = ctx
    return ctx


def _parse(traceparent: str) -> Context | None:
    m = _TRACEPARENT.fullmatch(traceparent)
    if m is None or m.group(1) == "ff":
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if not trace_id or not span_id:
        return None
    sc = SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(m.group(4), 16) & 0xFF)
    )
    return trace.set_span_in_context(NonRecordingSpan(sc))


def link(traceparent: str) -> Link | None:
    ctx = parent_context(traceparent)
    if ctx is None:
        return None
    return Link(trace.get_current_span(ctx).get_span_context())


def current_traceparent() -> str | None:
    """The traceparent of the current span (to hand on, e.g. in a webhook header)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def events_span(
    tracer_name: str,
    name: str,
    traceparents: Iterable[str],
    attributes: Mapping[str, Any] | None = None,
    *,
    untraced: bool = True,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[None]:
    """Time one piece of work done for several events at once.

    Each distinct application trace among `traceparents` (up to :data:`MAX_PARENTS`) gets
    a span of its own, child of the application's span, all sharing the same start and
    end; events beyond that, and `untraced` ones (events without a traceparent), are
    covered by one root span linking the overflow. Nothing happens while tracing is off.
    """
    t = tracer(tracer_name)
    if t is None:
        yield
        return
    start = time.time_ns()
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        _emit(t, name, traceparents, attributes, untraced, kind, start, error)


def _emit(
    t: Tracer,
    name: str,
    traceparents: Iterable[str],
    attributes: Mapping[str, Any] | None,
    untraced: bool,
    kind: SpanKind,
    start: int,
    error: BaseException | None,
) -> None:
    end = time.time_ns()
    parents: list[Context] = []
    overflow: list[Link] = []
    seen: set[str] = set()
    for tp in traceparents:
        if tp in seen:
            continue
        seen.add(tp)
        if len(parents) < MAX_PARENTS:
            ctx = parent_context(tp)
            if ctx is not None:
                parents.append(ctx)
        elif len(overflow) < MAX_LINKS:
            lk = link(tp)
            if lk is not None:
                overflow.append(lk)
    contexts: list[Context | None] = list(parents)
    if untraced or overflow or not parents:
        contexts.append(None)
    attrs = dict(attributes or {})
    attrs["bridge.traces"] = len(seen)
    for ctx in contexts:
        span = t.start_span(
            name,
            context=ctx,
            kind=kind,
            attributes=attrs,
            links=overflow if ctx is None else None,
            start_time=start,
        )
        if error is not None and not isinstance(error, asyncio.CancelledError):
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
        span.end(end_time=end)


def record(
    tracer_name: str,
    name: str,
    traceparent: str | None,
    start_ns: int,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> None:
    """One finished span from `start_ns` to now, child of `traceparent` when it is a
    valid one, else a root span (for work timed by the caller, e.g. one event's fan-out)."""
    t = tracer(tracer_name)
    if t is None:
        return
    span = t.start_span(
        name,
        context=parent_context(traceparent),
        kind=kind,
        attributes=attributes,
        start_time=start_ns,
    )
    span.end()


def start_span(
    tracer_name: str, name: str, attributes: Mapping[str, Any] | None = None
) -> Span | None:
    """A root span the caller ends with :func:`end_span`; None while tracing is off."""
    t = tracer(tracer_name)
    if t is None:
        return None
    return t.start_span(name, attributes=attributes)


def end_span(span: Span | None, attributes: Mapping[str, Any] | None = None) -> None:
    if span is None:
        return
    if attributes:
        span.set_attributes(attributes)
    span.end()


@contextlib.contextmanager
def span(
    tracer_name: str, name: str, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span | None]:
    """A root span around the block, current inside it (the exception recorded when one
    escapes); yields None and does nothing while tracing is off."""
    t = tracer(tracer_name)
    if t is None:
        yield None
        return
    # always a root: a long-lived task may have been spawned inside some other span
    with t.start_as_current_span(
        name, context=Context(), attributes=attributes, record_exception=True
    ) as s:
        yield s
