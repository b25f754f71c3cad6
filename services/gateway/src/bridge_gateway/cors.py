"""CORS headers: the same ones on every answer to an allowed browser origin.

A page on another origin can read a response only when it carries
`Access-Control-Allow-Origin` for that page. The gateway puts the header on its refusals
(400/401/403/404/429/503) exactly as on its streams, so a browser client reads *why* it was
refused (`unauthorized` → ask for a new token or stop) instead of seeing an opaque network
error and retrying forever. Origins outside a configured allow-list get no CORS header.

Origins compare as the Fetch standard serialises them: `scheme://host[:port]`, lower
case, default port omitted. A request `Origin` that is not such a serialisation (a
trailing slash, a path, spaces, user-info, `null`) matches no allow-list entry; entries
of `BRIDGE_GATEWAY_ALLOWED_ORIGINS` are normalised leniently (`https://App.example.com/`
→ `https://app.example.com`) and an entry that is no origin at all is a start-up error.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def serialize_origin(value: str, *, strict: bool = True) -> str | None:
    """`scheme://host[:port]` for `value`, or None when it is not an origin.

    `strict` (a request header): exactly a serialised origin. Otherwise (an operator's
    setting) surrounding spaces and a trailing slash are forgiven.
    """
    text = value if strict else value.strip().rstrip("/")
    if not text or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if (
        parts.scheme.lower() not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or text.endswith(("?", "#"))
    ):
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_listed(allowed: frozenset[str], origin: str) -> bool:
    serialized = serialize_origin(origin)
    return serialized is not None and serialized in allowed


def cors_headers(allowed: frozenset[str], origin: str | None) -> dict[str, str]:
    """Headers for a response to a request from `origin` (None: not a browser request).

    Without an allow-list every origin may read (`*`); with one, only a listed origin is
    echoed back, and `Vary: Origin` tells caches the answer depends on the requester.
    """
    if not allowed:
        return {} if origin is None else {"access-control-allow-origin": "*"}
    headers = {"vary": "Origin"}
    if origin is not None and origin_listed(allowed, origin):
        headers["access-control-allow-origin"] = origin
    return headers
