"""The environment-variable tables of README.md and docs/runbook.md list exactly the
variables the settings classes read, each with the default the code has.

Where the list comes from: every pydantic-settings class defined in bridge_common and in
the five services (found by importing their modules, so a new class is picked up too):
each field's environment name(s) and default, plus `BRIDGE_<SERVICE>_PORT` for every
service with a port.

Adding a variable? Put a row `| `BRIDGE_X` | default | meaning |` (or `| `BRIDGE_X` |
meaning | default |` in README's Configuration table) into the runbook section of its
service — general ones (read by every service) into README's Configuration table too.
How a default is written:
- unset (None): `unset`, optionally followed by words or a parenthesis
- empty string: `empty`
- a number: `10`, `0.5`, `50000` or `50 000`, optionally with a unit: `s`, `ms`
  (milliseconds kept as written), `KiB`/`MiB` and `m`/`h`/`d` (multiplied out), or any
  other word after it
- anything else: the value, in backticks or not; text after the first ` (` or `;` is
  commentary
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bridge_common.settings import BridgeSettings, port_variable
from pydantic import AliasChoices, SecretStr
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "bridge_common",
    "bridge_notifier",
    "bridge_gateway",
    "bridge_etl",
    "bridge_metrics_api",
    "bridge_alerter",
)
#: documented, but read by something other than a settings class (reason)
NOT_SETTINGS = {
    "BRIDGE_DATA_DIR": "bridge-up's data folder (libs/devstack)",
}


@dataclass(frozen=True)
class Variable:
    name: str
    default: Any
    where: str  # the class that reads it


def settings_classes() -> list[type[BaseSettings]]:
    found: dict[str, type[BaseSettings]] = {}
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names = [package_name] + [
            m.name
            for m in pkgutil.walk_packages(package.__path__, package_name + ".")
            if not m.name.endswith("__main__")
        ]
        for name in names:
            module = importlib.import_module(name)
            for obj in vars(module).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, BaseSettings)
                    and obj.__module__ == name
                ):
                    found[f"{name}.{obj.__qualname__}"] = obj
    return list(found.values())


def code_variables() -> dict[str, list[Variable]]:
    """Variable name → how each class that reads it defaults it."""
    out: dict[str, list[Variable]] = {}
    for cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        where = f"{cls.__module__}.{cls.__qualname__}"
        for field_name, info in cls.model_fields.items():
            default = info.default
            if default is PydanticUndefined and info.default_factory is not None:
                default = info.default_factory()  # type: ignore[call-arg]
            if field_name == "port" and issubclass(cls, BridgeSettings):
                if cls.default_port:
                    name = port_variable(cls.service_name)
                    out.setdefault(name, []).append(Variable(name, cls.default_port, where))
                continue
            alias = info.validation_alias
            if isinstance(alias, str):
                names = [alias]
            elif isinstance(alias, AliasChoices):
                names = [c for c in alias.choices if isinstance(c, str)]
            else:
                names = [f"{prefix}{field_name}".upper()]
            for name in names:
                out.setdefault(name, []).append(Variable(name, default, where))
    return out


# -- the docs ------------------------------------------------------------------------------

_VAR = re.compile(r"`([A-Z][A-Z0-9_]*)`")


@dataclass(frozen=True)
class Row:
    file: str
    line: int
    names: tuple[str, ...]
    default: str


def table_rows(path: Path) -> list[Row]:
    """Rows of every Markdown table with a `variable` column and a `default` column."""
    rows: list[Row] = []
    header: list[str] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set(line) <= set("|-: "):
            continue
        if "variable" not in header or "default" not in header:
            continue
        var_cell = cells[header.index("variable")]
        if "<" in var_cell:
            continue  # a pattern row such as BRIDGE_<SERVICE>_PORT: the service tables list each
        names = tuple(_VAR.findall(var_cell))
        if names:
            rows.append(
                Row(
                    path.relative_to(ROOT).as_posix(), number, names, cells[header.index("default")]
                )
            )
    return rows


def doc_rows() -> list[Row]:
    return table_rows(ROOT / "README.md") + table_rows(ROOT / "docs" / "runbook.md")


_UNITS = {
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    # durations written as the settings parse them (`90m`, `24h`, `7d`), in seconds
    "m": 60,
    "min": 60,
    "h": 3600,
    "d": 86400,
}


def documented_value(cell: str) -> str:
    text = re.split(r" \(|;", cell, maxsplit=1)[0].strip()
    return text.replace("`", "").strip()


def matches(cell: str, default: Any) -> bool:
    text = documented_value(cell)
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if default is None:
        return text.lower().startswith("unset")
    if isinstance(default, bool):
        return text.lower() == str(default).lower()
    if isinstance(default, int | float):
        m = re.match(r"^(\d[\d ,_]*(?:\.\d+)?)\s*([A-Za-z]+)?", text)
        if m is None:
            return False
        value = float(re.sub(r"[ ,_]", "", m.group(1)))
        unit = (m.group(2) or "").lower()
        value *= _UNITS.get(unit, 1)
        return abs(value - float(default)) < 1e-9
    if default == "":
        return text.lower() == "empty"
    return text == str(default)


def describe(default: Any) -> str:
    if default is None:
        return "unset"
    if default == "":
        return "empty"
    return repr(default)


# -- tests -----------------------------------------------------------------------------------


def test_settings_classes_are_found() -> None:
    names = {f"{c.__module__}.{c.__qualname__}" for c in settings_classes()}
    for expected in (
        "bridge_common.settings.BridgeSettings",
        "bridge_gateway.settings.Settings",
        "bridge_notifier.settings.Settings",
        "bridge_etl.settings.Settings",
        "bridge_metrics_api.settings.Settings",
        "bridge_alerter.settings.Settings",
    ):
        assert expected in names, names


def test_every_variable_is_documented_and_nothing_else() -> None:
    code = code_variables()
    documented = {n for row in doc_rows() for n in row.names}
    missing = sorted(set(code) - documented)
    extra = sorted(documented - set(code) - set(NOT_SETTINGS))
    problems = [
        f"{name} (read by {code[name][0].where}, default {describe(code[name][0].default)}) "
        "is in no table of README.md / docs/runbook.md: add a row to its service's "
        "runbook section (general ones also to README's Configuration table)"
        for name in missing
    ] + [
        f"{name} is documented in a table but no settings class reads it: remove the row, "
        "or add it to NOT_SETTINGS here with the reason"
        for name in extra
    ]
    assert not problems, "\n".join(problems)


def test_documented_defaults_are_the_code_defaults() -> None:
    code = code_variables()
    problems = []
    for row in doc_rows():
        for name in row.names:
            wrong: dict[str, list[str]] = {}
            for var in code.get(name, []):
                if not matches(row.default, var.default):
                    wrong.setdefault(describe(var.default), []).append(var.where)
            for default, where in wrong.items():
                more = f" and {len(where) - 1} more" if len(where) > 1 else ""
                problems.append(
                    f"{row.file}:{row.line}: {name} default is documented as "
                    f"{row.default!r}, but {where[0]}{more} default(s) it to {default}"
                )
    assert not problems, "\n".join(problems)


def test_general_variables_are_in_the_readme() -> None:
    readme = {n for row in table_rows(ROOT / "README.md") for n in row.names}
    general = {n for n, vs in code_variables().items()
               if any(v.where == "bridge_common.settings.BridgeSettings" for v in vs)}  # fmt: skip
    missing = sorted(general - readme)
    assert not missing, (
        f"read by every service but not in README.md's Configuration table: {missing}"
    )


@pytest.mark.parametrize(
    ("cell", "default", "ok"),
    [
        ("`postgresql://localhost/bridge`", "postgresql://localhost/bridge", True),
        ("unset (the source DSN)", None, True),
        ("4 MiB", 4 * 1024 * 1024, True),
        ("`24h`", 86_400.0, True),
        ("90m", 5_400, True),
        ("50 000", 50_000, True),
        ("20 s", 20.0, True),
        ("empty (any origin)", "", True),
        ("`jwt`", "jwt", True),
        ("10", 5, False),
        ("unset", "x", False),
    ],
)
def test_default_notation(cell: str, default: Any, ok: bool) -> None:
    assert matches(cell, default) is ok
