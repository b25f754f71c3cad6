"""Refuse to start when a port the stack needs is taken, with one line that says which."""

from __future__ import annotations

import socket
from contextlib import closing

from .errors import StackError


def port_free(host: str, port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def require_free(host: str, wanted: list[tuple[str, str, int]]) -> None:
    """`wanted`: (service, port variable, port). Raises StackError naming the first taken."""
    seen: dict[int, str] = {}
    for service, var, port in wanted:
        if port in seen:
            raise StackError(
                f"{var}={port} is also the port of {seen[port]}: give every service its own port"
            )
        seen[port] = service
        if not port_free(host, port):
            raise StackError(
                f"port {port} ({service}, {var}) is already in use on {host} — stop what "
                f"listens there (another `just up`?) or pick another: {var}={port + 10000} just up"
            )
