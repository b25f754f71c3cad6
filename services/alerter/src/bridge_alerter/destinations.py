"""Where the alerter may send: channel URL syntax and the addresses a webhook may reach.

A channel URL is an absolute `http://` or `https://` URL with a host, no whitespace or
control characters (a CR/LF would split the request), no user-info (`user:pass@` — put
secrets in `secret`, or keep the whole URL in an environment variable with `${VAR}`), and
a valid port.

Link-local (169.254.0.0/16 — cloud metadata services — and fe80::/10), unspecified,
multicast and reserved addresses are refused, and so is loopback, unless the address is
in `BRIDGE_ALERTER_ALLOWED_NETWORKS` (default: loopback only, for a receiver on the same
host). The rule applies to the literal host at load time and to every address the host
name resolves to at delivery time, so a DNS name cannot point a webhook at a metadata
endpoint either. Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) are ordinary
destinations: in-cluster receivers live there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ENV_NAME = "BRIDGE_ALERTER_ALLOWED_NETWORKS"
DEFAULT_ALLOWED = "127.0.0.0/8,::1"


class DestinationError(ValueError):
    """A URL or an address the alerter will not send to."""


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """`"127.0.0.0/8, ::1, 169.254.169.254"` → networks; `""` or `none` → nothing."""
    out: list[IPNetwork] = []
    for part in text.split(","):
        part = part.strip()
        if not part or part.lower() == "none":
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or network") from None
    return tuple(out)


def allowed_from(env: Mapping[str, str]) -> tuple[IPNetwork, ...]:
    return parse_networks(env.get(ENV_NAME, DEFAULT_ALLOWED))


def _special(addr: IPAddress) -> str | None:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return _special(addr.ipv4_mapped)
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_multicast:
        return "multicast"
    if addr.is_reserved:
        return "reserved"
    return None


def check_address(addr: IPAddress, allowed: tuple[IPNetwork, ...]) -> None:
    kind = _special(addr)
    if kind is None or any(addr in net for net in allowed):
        return
    raise DestinationError(
        f"{addr} is a {kind} address; add it to {ENV_NAME} to allow webhooks to it"
    )


def check_url(url: str, allowed: tuple[IPNetwork, ...]) -> str:
    """Validate a channel URL's syntax and literal host; returns it unchanged."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise DestinationError("must not contain spaces or control characters (CR, LF, tab)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise DestinationError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise DestinationError("has no host")
    if parts.username is not None or parts.password is not None:
        raise DestinationError(
            "must not carry credentials (user:password@); use 'secret' or a ${VAR} URL"
        )
    if port == 0:
        raise DestinationError("port 0 is not a destination")
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        check_address(ipaddress.ip_address("127.0.0.1"), allowed)
        return url
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return url  # a name: checked against what it resolves to when sending
    check_address(addr, allowed)
    return url


async def check_resolved(url: str, allowed: tuple[IPNetwork, ...]) -> None:
    """Every address the URL's host resolves to must be an allowed destination."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        check_address(ipaddress.ip_address(host), allowed)
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # unresolvable: the HTTP call reports it (and it is retried)
    for info in infos:
        check_address(ipaddress.ip_address(info[4][0]), allowed)
