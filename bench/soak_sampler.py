"""Soak helpers: per-interval samples of the running suite (RSS of every service process,
end-to-end lag and p99 latency, ETL backlog, error counts), the CSV, the trend and the chart."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class Sample:
    t: float  # seconds since the start
    rss_mb: dict[str, float]
    p99_ms: float | None
    lag_s: float
    etl_backlog: int
    committed: int
    delivered_min: int
    errors: int
    reconnects: int
    api_ms: float | None


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)

    def write_csv(self, path: Path, services: Sequence[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                [
                    "t_s",
                    *(f"rss_mb_{s}" for s in services),
                    "p99_ms",
                    "lag_s",
                    "etl_backlog",
                    "committed",
                    "delivered_min",
                    "errors",
                    "reconnects",
                    "api_ms",
                ]
            )
            for s in self.samples:
                w.writerow(
                    [
                        f"{s.t:.1f}",
                        *(f"{s.rss_mb.get(n, float('nan')):.1f}" for n in services),
                        "" if s.p99_ms is None else f"{s.p99_ms:.1f}",
                        f"{s.lag_s:.2f}",
                        s.etl_backlog,
                        s.committed,
                        s.delivered_min,
                        s.errors,
                        s.reconnects,
                        "" if s.api_ms is None else f"{s.api_ms:.1f}",
                    ]
                )


def rss_mb(pid: int) -> float:
    try:
        return float(psutil.Process(pid).memory_info().rss) / (1024 * 1024)
    except psutil.Error:
        return math.nan


def p99(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def slope_per_hour(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (seconds), scaled to units per hour."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if not math.isnan(y)]
    if len(pts) < 3:
        return math.nan
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    den = sum((x - mx) ** 2 for x, _ in pts)
    if den == 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in pts) / den * 3600


def rss_trend(series: Series, service: str) -> tuple[float, float, float]:
    """(first, last, slope MB/h over the second half — after warm-up) for one service."""
    xs = [s.t for s in series.samples]
    ys = [s.rss_mb.get(service, math.nan) for s in series.samples]
    half = len(xs) // 2
    return (
        ys[0] if ys else math.nan,
        ys[-1] if ys else math.nan,
        slope_per_hour(xs[half:], ys[half:]),
    )


def chart(series: Series, services: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s.t / 60 for s in series.samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for name in services:
        axes[0].plot(xs, [s.rss_mb.get(name, math.nan) for s in series.samples], label=name)
    axes[0].set_ylabel("RSS (MB)")
    axes[0].legend(fontsize=8, ncol=3)
    axes[1].plot(xs, [s.p99_ms or math.nan for s in series.samples], label="p99 commit→client")
    axes[1].plot(xs, [s.lag_s * 1000 for s in series.samples], label="oldest undelivered")
    axes[1].set_ylabel("ms")
    axes[1].legend(fontsize=8)
    axes[2].plot(xs, [s.errors for s in series.samples], label="errors (cumulative)")
    axes[2].plot(xs, [s.reconnects for s in series.samples], label="client reconnects")
    axes[2].plot(xs, [s.etl_backlog for s in series.samples], label="ETL backlog (rows)")
    axes[2].set_ylabel("count")
    axes[2].set_xlabel("minutes")
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
