"""`just bench [NAME ...]`: run benchmarks (bench/<name>.py, each with `main(argv)`).

Each benchmark writes its own section of docs/benchmarks.md. With no name, all run.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")]
    extra = [a for a in argv if a.startswith("-")]
    if names == ["list"]:
        print("\n".join(available()))
        return 0
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(available())}")
        return 2
    for name in names or available():
        print(f"== bench {name}")
        mod = importlib.import_module(f"bench.{name}")
        code = mod.main(extra)
        if code:
            return int(code)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
