"""The one exception root of the launcher: its message is the one line the user sees."""

from __future__ import annotations


class StackError(Exception):
    """Starting the local stack failed for a reason the user can fix; str() says how."""
