"""The rules file: channels and threshold rules, validated strictly with line numbers.

The file is composed into YAML nodes (not loaded into plain values) so every problem can be
reported at the line it sits on; all problems are collected, never just the first. Values
are built by PyYAML's safe constructor only: no tags, no code.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from bridge_common.snapshots import SNAPSHOT_METRICS, known_metric
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import template
from .destinations import DestinationError, allowed_from, check_url
from .durations import parse_duration
from .errors import RuleProblem, RulesError

ChannelType = Literal["slack", "webhook"]
NoData = Literal["keep", "ok", "alerting"]

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
SEVERITIES = ("debug", "info", "warning", "error", "critical")
NO_DATA = ("keep", "ok", "alerting")
DEFAULT_REPEAT_INTERVAL = 4 * 3600.0
#: a rules file larger than this is refused unread (bounded work on hostile input)
MAX_FILE_BYTES = 1024 * 1024

#: metrics the metrics API publishes; others only draw a warning (new metrics may appear)
KNOWN_METRICS = SNAPSHOT_METRICS

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,127}$")
_CHANNEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
_METRIC_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,127}$")
_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_ENV_RE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")

_TOP_KEYS = ("channels", "rules")
_CHANNEL_KEYS = {"slack": ("type", "url"), "webhook": ("type", "url", "secret")}
_RULE_REQUIRED = ("name", "metric", "op", "threshold", "severity", "summary", "notify")
_RULE_OPTIONAL = ("for", "repeat_interval", "labels", "no_data")


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """Where notifications go: a Slack incoming webhook or a signed generic webhook."""

    name: str
    type: ChannelType
    url: str
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One threshold rule over a snapshot metric."""

    name: str
    metric: str
    op: str
    threshold: float
    for_seconds: float
    severity: str
    summary: str
    notify: tuple[str, ...]
    repeat_interval: float = DEFAULT_REPEAT_INTERVAL
    labels: Mapping[str, str] = field(default_factory=dict)
    no_data: NoData = "keep"

    @property
    def fingerprint(self) -> str:
        """Stable id of the alert: the rule name plus its labels, never its thresholds."""
        key = json.dumps([self.name, sorted(self.labels.items())], separators=(",", ":"))
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    def render_summary(self, value: float | None) -> str:
        values = {
            "value": template.format_number(value),
            "threshold": template.format_number(self.threshold),
            "rule": self.name,
            "metric": self.metric,
            "severity": self.severity,
            "op": self.op,
        }
        values.update({f"labels.{k}": v for k, v in self.labels.items()})
        return template.render(self.summary, values)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A validated rules file."""

    channels: Mapping[str, ChannelConfig]
    rules: tuple[Rule, ...]
    source: str = ""
    warnings: tuple[str, ...] = ()

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


def load_rules(path: str | Path, env: Mapping[str, str] | None = None) -> RuleSet:
    """Read and validate a rules file; raises :class:`RulesError` listing every problem."""
    filename = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise RulesError(filename, [RuleProblem(0, "", f"cannot read: {exc}")]) from None
    if len(data) > MAX_FILE_BYTES:
        message = f"larger than {MAX_FILE_BYTES // 1024} KiB; a rules file is small"
        raise RulesError(filename, [RuleProblem(0, "", message)])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesError(filename, [RuleProblem(0, "", f"not UTF-8 text: {exc}")]) from None
    return parse_rules(text, filename, env=env)


def parse_rules(
    text: str, filename: str = "<rules>", env: Mapping[str, str] | None = None
) -> RuleSet:
    """Validate rules given as YAML text (see :func:`load_rules`)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        reason = " ".join(p for p in (exc.context, exc.problem) if p)
        raise RulesError(filename, [RuleProblem(line, "", f"invalid YAML: {reason}")]) from None
    except yaml.YAMLError as exc:
        raise RulesError(filename, [RuleProblem(0, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise RulesError(
            filename, [RuleProblem(1, "", "invalid YAML: nested too deeply")]
        ) from None
    checker = _Checker(filename, os.environ if env is None else env)
    ruleset = checker.check(root)
    if checker.problems:
        raise RulesError(filename, checker.problems)
    return ruleset


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Checker:
    """Walks the node tree once, collecting problems and building the model."""

    def __init__(self, filename: str, env: Mapping[str, str]) -> None:
        self.filename = filename
        self.env = env
        self.problems: list[RuleProblem] = []
        self.warnings: list[str] = []
        self._constructor = SafeConstructor()

    @property
    def allowed(self) -> tuple[Any, ...]:
        """Networks webhooks may reach although special (see `destinations`)."""
        return allowed_from(self.env)

    def problem(self, node: Node | int, path: str, message: str) -> None:
        line = node if isinstance(node, int) else _line(node)
        self.problems.append(RuleProblem(line, path, message))

    # -- building blocks ------------------------------------------------------------------
    def scalar(self, node: Node) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            return _Invalid(str(exc.problem or exc))

    def mapping(self, node: Node, path: str, what: str) -> dict[str, tuple[Node, Node]] | None:
        """Key → (key node, value node); problems for non-mappings and duplicate keys."""
        if not isinstance(node, MappingNode):
            self.problem(node, path, f"{what} must be a mapping, got {_kind(node)}")
            return None
        out: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                self.problem(key_node, path, f"keys must be strings, got {_kind(key_node)}")
                continue
            if key in out:
                first = _line(out[key][0])
                self.problem(key_node, path, f"duplicate key {key!r} (first at line {first})")
                continue
            out[key] = (key_node, value_node)
        return out

    def unknown_keys(
        self, items: Mapping[str, tuple[Node, Node]], allowed: tuple[str, ...], path: str
    ) -> None:
        for key, (key_node, _) in items.items():
            if key not in allowed:
                self.problem(key_node, path, f"unknown key {key!r} (allowed: {', '.join(allowed)})")

    def string(
        self, node: Node, path: str, *, pattern: re.Pattern[str] | None = None
    ) -> str | None:
        value = self.scalar(node) if isinstance(node, ScalarNode) else None
        if not isinstance(value, str) or not isinstance(node, ScalarNode):
            self.problem(node, path, f"must be a string, got {_describe(node, value)}")
            return None
        if not value.strip():
            self.problem(node, path, "must not be empty")
            return None
        if pattern is not None and not pattern.match(value):
            self.problem(node, path, f"{value!r} is not a valid name ({pattern.pattern})")
            return None
        return value

    def number(self, node: Node, path: str) -> float | None:
        value = self.scalar(node) if isinstance(node, ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(node, path, f"must be a number, got {_describe(node, value)}")
            return None
        if not math.isfinite(value):
            self.problem(node, path, "must be a finite number")
            return None
        return float(value)

    def duration(self, node: Node, path: str, *, positive: bool = False) -> float | None:
        value = self.scalar(node) if isinstance(node, ScalarNode) else None
        if not isinstance(node, ScalarNode):
            self.problem(node, path, f"must be a duration such as 30s or 5m, got {_kind(node)}")
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return None
        if positive and seconds <= 0:
            self.problem(node, path, "must be greater than zero")
            return None
        return seconds

    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> str | None:
        value = self.scalar(node) if isinstance(node, ScalarNode) else None
        if value not in choices:
            shown = repr(value) if isinstance(node, ScalarNode) else _kind(node)
            self.problem(node, path, f"must be one of {' '.join(choices)} (got {shown})")
            return None
        assert isinstance(value, str)
        return value

    def secret_text(self, node: Node, path: str) -> str | None:
        """A string, where `${NAME}` means the environment variable NAME."""
        value = self.string(node, path)
        if value is None:
            return None
        m = _ENV_RE.match(value.strip())
        if m is None:
            return value
        resolved = self.env.get(m.group(1))
        if not resolved:
            self.problem(node, path, f"environment variable {m.group(1)} is not set")
            return None
        return resolved

    # -- the file ---------------------------------------------------------------------------
    def check(self, root: Node | None) -> RuleSet:
        if root is None:
            self.problem(1, "", "the file is empty (expected 'channels:' and 'rules:')")
            return RuleSet({}, ())
        top = self.mapping(root, "", "the file")
        if top is None:
            return RuleSet({}, ())
        self.unknown_keys(top, _TOP_KEYS, "")
        channels: dict[str, ChannelConfig] = {}
        channel_names: set[str] = set()
        if "channels" in top:
            channels, channel_names = self.channels(top["channels"][1])
        rules: list[Rule] = []
        if "rules" not in top:
            self.problem(root, "", "missing key 'rules'")
        else:
            rules = self.rules(top["rules"][1], channel_names)
        return RuleSet(channels, tuple(rules), self.filename, tuple(self.warnings))

    def channels(self, node: Node) -> tuple[dict[str, ChannelConfig], set[str]]:
        out: dict[str, ChannelConfig] = {}
        names: set[str] = set()
        if isinstance(node, ScalarNode) and self.scalar(node) is None:
            return out, names
        items = self.mapping(node, "channels", "'channels'")
        for name, (key_node, value_node) in (items or {}).items():
            path = f"channels.{name}"
            if not _CHANNEL_RE.match(name):
                self.problem(key_node, path, f"{name!r} is not a valid channel name")
                continue
            names.add(name)
            channel = self.channel(name, value_node, path)
            if channel is not None:
                out[name] = channel
        return out, names

    def channel(self, name: str, node: Node, path: str) -> ChannelConfig | None:
        items = self.mapping(node, path, "a channel")
        if items is None:
            return None
        if "type" not in items:
            self.problem(node, path, "missing key 'type' (slack or webhook)")
            self.unknown_keys(items, _CHANNEL_KEYS["webhook"], path)
            return None
        kind = self.choice(items["type"][1], f"{path}.type", ("slack", "webhook"))
        self.unknown_keys(items, _CHANNEL_KEYS[kind or "webhook"], path)
        url: str | None = None
        if "url" not in items:
            self.problem(node, path, "missing key 'url'")
        else:
            url = self.secret_text(items["url"][1], f"{path}.url")
            if url is not None:
                try:
                    check_url(url, self.allowed)
                except DestinationError as exc:
                    self.problem(items["url"][1], f"{path}.url", str(exc))
                    url = None
                except ValueError as exc:  # the allow-list itself
                    self.problem(
                        items["url"][1], f"{path}.url", f"BRIDGE_ALERTER_ALLOWED_NETWORKS: {exc}"
                    )
                    url = None
        secret = None
        if "secret" in items and kind == "webhook":
            secret = self.secret_text(items["secret"][1], f"{path}.secret")
        if kind is None or url is None:
            return None
        channel_type: ChannelType = "slack" if kind == "slack" else "webhook"
        return ChannelConfig(name=name, type=channel_type, url=url, secret=secret)

    def rules(self, node: Node, channel_names: set[str]) -> list[Rule]:
        if not isinstance(node, SequenceNode):
            self.problem(node, "rules", f"'rules' must be a list, got {_kind(node)}")
            return []
        out: list[Rule] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(node.value):
            rule = self.rule(item, f"rules[{i}]", channel_names, seen)
            if rule is not None:
                out.append(rule)
        return out

    def rule(
        self, node: Node, path: str, channel_names: set[str], seen: dict[str, int]
    ) -> Rule | None:
        items = self.mapping(node, path, "a rule")
        if items is None:
            return None
        name_value = self.scalar(items["name"][1]) if "name" in items else None
        if isinstance(name_value, str):
            path = f"{path}({name_value})"
            if name_value in seen:
                first = seen[name_value]
                self.problem(items["name"][1], path, f"duplicate rule name (first at line {first})")
            else:
                seen[name_value] = _line(node)
        self.unknown_keys(items, _RULE_REQUIRED + _RULE_OPTIONAL, path)
        missing = [k for k in _RULE_REQUIRED if k not in items]
        for key in missing:
            self.problem(node, path, f"missing key {key!r}")
        before = len(self.problems)

        def value(key: str) -> Node | None:
            return items[key][1] if key in items else None

        fields: dict[str, Any] = {}
        if (n := value("name")) is not None:
            fields["name"] = self.string(n, f"{path}.name", pattern=_NAME_RE)
        if (n := value("metric")) is not None:
            metric = self.string(n, f"{path}.metric", pattern=_METRIC_RE)
            if metric is not None and not known_metric(metric):
                self.warnings.append(
                    f"{self.filename}:{_line(n)}: {path}.metric: {metric!r} is not a metric the "
                    "metrics API is known to publish"
                )
            fields["metric"] = metric
        if (n := value("op")) is not None:
            fields["op"] = self.choice(n, f"{path}.op", tuple(OPS))
        if (n := value("threshold")) is not None:
            fields["threshold"] = self.number(n, f"{path}.threshold")
        if (n := value("severity")) is not None:
            fields["severity"] = self.choice(n, f"{path}.severity", SEVERITIES)
        fields["for_seconds"] = 0.0
        if (n := value("for")) is not None:
            fields["for_seconds"] = self.duration(n, f"{path}.for")
        fields["repeat_interval"] = DEFAULT_REPEAT_INTERVAL
        if (n := value("repeat_interval")) is not None:
            fields["repeat_interval"] = self.duration(n, f"{path}.repeat_interval", positive=True)
        fields["no_data"] = "keep"
        if (n := value("no_data")) is not None:
            fields["no_data"] = self.choice(n, f"{path}.no_data", NO_DATA)
        labels: dict[str, str] = {}
        if (n := value("labels")) is not None:
            labels = self.labels(n, f"{path}.labels")
        fields["labels"] = labels
        if (n := value("summary")) is not None:
            summary = self.string(n, f"{path}.summary")
            if summary is not None:
                for bad in template.unknown_placeholders(summary, labels):
                    allowed = ", ".join(template.NAMES) + ", labels.<name>"
                    self.problem(
                        n, f"{path}.summary", f"unknown placeholder {{{{ {bad} }}}} (use {allowed})"
                    )
            fields["summary"] = summary
        if (n := value("notify")) is not None:
            fields["notify"] = self.notify(n, f"{path}.notify", channel_names)
        if missing or len(self.problems) > before or any(v is None for v in fields.values()):
            return None
        fields["notify"] = tuple(fields["notify"])
        return Rule(**fields)

    def labels(self, node: Node, path: str) -> dict[str, str]:
        items = self.mapping(node, path, "'labels'")
        out: dict[str, str] = {}
        for key, (key_node, value_node) in (items or {}).items():
            if not _LABEL_RE.match(key):
                self.problem(key_node, path, f"{key!r} is not a valid label name")
                continue
            v = self.scalar(value_node) if isinstance(value_node, ScalarNode) else None
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                self.problem(
                    value_node, f"{path}.{key}", f"must be a string, got {_describe(value_node, v)}"
                )
                continue
            out[key] = str(v)
        return out

    def notify(self, node: Node, path: str, channel_names: set[str]) -> list[str] | None:
        if not isinstance(node, SequenceNode):
            self.problem(node, path, f"must be a list of channel names, got {_kind(node)}")
            return None
        out: list[str] = []
        ok = True
        for i, item in enumerate(node.value):
            name = self.string(item, f"{path}[{i}]")
            if name is None:
                ok = False
            elif name not in channel_names:
                known = ", ".join(sorted(channel_names)) or "none defined"
                self.problem(item, f"{path}[{i}]", f"unknown channel {name!r} (channels: {known})")
                ok = False
            elif name in out:
                self.problem(item, f"{path}[{i}]", f"channel {name!r} listed twice")
                ok = False
            else:
                out.append(name)
        return out if ok else None


class _Invalid:
    """A scalar the safe constructor rejected (reported by the caller as a wrong type)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"invalid value ({self.reason})"


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return "a scalar"


def _describe(node: Node, value: Any) -> str:
    if not isinstance(node, ScalarNode):
        return _kind(node)
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({node.value})"
    if isinstance(value, int | float):
        return f"a number ({node.value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    return f"{type(value).__name__} ({node.value})"
