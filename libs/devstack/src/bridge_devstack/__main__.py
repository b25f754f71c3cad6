"""`bridge-up` (`just up`): the command line around :mod:`bridge_devstack.launcher`.

Only the standard library is imported before the signal handlers are in place, so a
Ctrl-C at any moment ends with one line instead of a traceback.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    code = 1
    try:
        from .errors import StackError

        try:
            from . import launcher

            code = launcher.up(launcher.parse(argv))
        except StackError as exc:
            print(f"bridge-up: {exc}", file=sys.stderr, flush=True)
            code = 1
        else:
            print("bridge-up: stopped", flush=True)
    except KeyboardInterrupt:
        print("bridge-up: interrupted; everything started here is stopped", flush=True)
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(code)


if __name__ == "__main__":
    main()
