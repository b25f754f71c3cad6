"""Exception root of the alerter; every error carries a stable `code`."""

from __future__ import annotations

from dataclasses import dataclass


class AlerterError(Exception):
    """Base of every error the alerter raises."""

    code = "alerter"


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """One problem in a rules file, located by its 1-based line."""

    line: int
    path: str
    message: str

    def format(self, filename: str) -> str:
        where = f" {self.path}:" if self.path else ""
        return f"{filename}:{self.line}:{where} {self.message}"


class RulesError(AlerterError):
    """A rules file that cannot be used; `problems` lists every error found."""

    code = "invalid_rules"

    def __init__(self, filename: str, problems: list[RuleProblem]) -> None:
        self.filename = filename
        self.problems = sorted(problems, key=lambda p: p.line)
        super().__init__(self.one_line())

    def lines(self, limit: int = 100) -> list[str]:
        """One line per problem, at most `limit` (then how many more there are)."""
        out = [p.format(self.filename) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            out.append(f"{self.filename}: ... and {len(self.problems) - limit} more errors")
        return out

    def one_line(self, limit: int = 10) -> str:
        n = len(self.problems)
        text = f"{n} error{'s' if n != 1 else ''} in {self.filename}: " + "; ".join(
            f"line {p.line}:{' ' + p.path + ':' if p.path else ''} {p.message}"
            for p in self.problems[:limit]
        )
        if n > limit:
            text += f"; ... and {n - limit} more"
        return text


class DeliveryError(AlerterError):
    """A notification attempt that failed; `retry` says whether trying again may help."""

    code = "delivery"

    def __init__(self, message: str, *, retry: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after
