"""docs/api.md's "HTTP API (metrics)" reference, generated from the OpenAPI document.

`python -m bridge_metrics_api.apidoc` prints the Markdown; `--write PATH` replaces the text
between the `<!-- openapi:metrics -->` markers in PATH; `--check PATH` exits 1 when PATH
is out of date (a test runs the same comparison).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from .openapi import openapi_document

START = "<!-- openapi:metrics -->"
END = "<!-- /openapi:metrics -->"


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    t = schema.get("type", "object")
    if isinstance(t, list):
        t = " \\| ".join(t)
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if schema.get("format"):
        return f"{t} ({schema['format']})"
    return str(t)


def _fields(schema: dict[str, Any], prefix: str = "") -> list[str]:
    rows = []
    for name, sub in schema.get("properties", {}).items():
        desc = str(sub.get("description", "")).replace("\n", " ")
        rows.append(f"| `{prefix}{name}` | {_type(sub)} | {desc} |")
        if sub.get("properties") and prefix.count(".") < 1:
            rows.extend(_fields(sub, f"{prefix}{name}."))
    return rows


def render(doc: dict[str, Any] | None = None) -> str:
    """The Markdown reference for every path of the document."""
    doc = doc or openapi_document()
    schemas = doc["components"]["schemas"]
    out = [
        "Generated from `/openapi.json` by `python -m bridge_metrics_api.apidoc --write "
        "docs/api.md`; a test fails when the two disagree.",
        "",
        str(doc["info"]["description"]),
    ]
    for path, item in doc["paths"].items():
        op = item["get"]
        out += ["", f"### `GET {path}` — {op['summary']}", "", str(op["description"])]
        if op["parameters"]:
            out += ["", "| parameter | type | meaning |", "|---|---|---|"]
            for p in op["parameters"]:
                schema = p["schema"]
                extra = ""
                if "default" in schema:
                    extra = f" Default `{schema['default']}`."
                out.append(f"| `{p['name']}` | {_type(schema)} | {p['description']}{extra} |")
        codes = ", ".join(
            f"`{code}` {resp['description']}" for code, resp in op["responses"].items()
        )
        out += ["", f"Responses: {codes}."]
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]
        name = _type(ok)
        out += ["", f"`200` body (`{name}`):", "", "| field | type | meaning |", "|---|---|---|"]
        out += _fields(schemas[name])
    err = schemas["InvalidParameter"]
    out += [
        "",
        "### Errors",
        "",
        "A bad parameter (not in the allow-list, not ISO 8601 with a time zone, out of "
        "bounds, unknown, or repeated) answers `422` with:",
        "",
        "```json",
        json.dumps(
            {
                "error": "invalid_parameter",
                "parameter": "bucket",
                "message": "must be one of 1m, 5m, 15m, 1h, 1d",
                "detail": [
                    {"loc": ["query", "bucket"], "msg": "must be one of 1m, 5m, 15m, 1h, 1d"}
                ],
            }
        ),
        "```",
        "",
        f"Fields: {', '.join(f'`{k}`' for k in err['properties'])}. A range that starts "
        "before the rollups' retention (`BRIDGE_METRICS_ROLLUP_RETENTION_DAYS`, 400 days by "
        "default) answers `422` with `error` `beyond_retention`, naming `since` (or `until` "
        "when `since` was left to its default) and giving `oldest`, the oldest time "
        "answered. A database that does not "
        'answer in time gives `503` `{"error": "unavailable", "message": …}`; the '
        "overview instead answers `200` with that part `null` and the reason in `errors`.",
    ]
    return "\n".join(out) + "\n"


_BLOCK = re.compile(re.escape(START) + r"\n.*?" + re.escape(END), re.S)


def current(text: str) -> str | None:
    """The generated block inside `text`, or None when the markers are missing."""
    m = _BLOCK.search(text)
    return None if m is None else m.group(0)[len(START) + 1 : -len(END)]


def write(path: Path) -> bool:
    """Replace the block in `path`; returns whether anything changed."""
    text = path.read_text()
    block = f"{START}\n{render()}{END}"
    if _BLOCK.search(text) is None:
        raise SystemExit(f"{path}: markers {START} … {END} not found")
    new = _BLOCK.sub(lambda _: block, text)
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge_metrics_api.apidoc")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="PATH")
    group.add_argument("--check", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    if args.write:
        print("updated" if write(args.write) else "up to date")
        return 0
    if args.check:
        ok = current(args.check.read_text()) == render()
        print("up to date" if ok else f"{args.check} is out of date: run --write")
        return 0 if ok else 1
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
