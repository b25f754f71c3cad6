"""CORS headers: the same ones on every answer to an allowed browser origin.

A page on another origin can read a response only when it carries
`Access-Control-Allow-Origin` for that page. The gateway puts the header on its refusals
(400/401/403/404/429/503) exactly as on its streams, so a browser client reads *why* it was
refused (`unauthorized` → ask for a new token or stop) instead of seeing an opaque network
error and retrying forever. Origins outside a configured allow-list get no CORS header.
"""

from __future__ import annotations


def cors_headers(allowed: frozenset[str], origin: str | None) -> dict[str, str]:
    """Headers for a response to a request from `origin` (None: not a browser request).

    Without an allow-list every origin may read (`*`); with one, only a listed origin is
    echoed back, and `Vary: Origin` tells caches the answer depends on the requester.
    """
    if not allowed:
        return {} if origin is None else {"access-control-allow-origin": "*"}
    headers = {"vary": "Origin"}
    if origin is not None and origin.rstrip("/") in allowed:
        headers["access-control-allow-origin"] = origin
    return headers
