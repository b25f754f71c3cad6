"""Event mode's repair: copy from the source table what the stream may have lost.

The stream consumer (stream.py) reports every loss it detects — a trim past the group,
trimmed pending entries, a lost group or stream, Redis going back in time. Each report
wakes one run of the polling path (`Poller`, `once`): under the poller's advisory lock it
reads the source from the durable polling watermark to the end, settles the id gaps of
transactions still open, loads with `ON CONFLICT DO NOTHING` and advances the watermark.
Reports that arrive during a run are folded into one more run. Every
`BRIDGE_ETL_REPAIR_INTERVAL` seconds a run happens anyway (reconciliation), which covers a
loss no consumer can see and keeps the watermark close, so a repair reads little.

Guarantee: after a repair that started after a loss, every audit row committed before the
loss is in the target (the watermark covers what lies below it, the run everything above);
rows committed later reach the stream the loss cannot touch any more, or the next repair.
Loads are idempotent, so a repair racing the stream consumer costs index probes, not
duplicates. The first run on a target reads the source from its polling watermark (0 on a
new target, like a first polling run).
"""

from __future__ import annotations

import asyncio
import contextlib

from bridge_common.logging import get_logger

from .polling import Poller
from .stats import EtlStats

log = get_logger(__name__)


class Repair:
    """Runs the poller once per batch of loss reports, and on a timer (see docstring)."""

    def __init__(self, poller: Poller, stats: EtlStats, *, interval: float) -> None:
        self.poller = poller
        self.stats = stats
        self.interval = interval
        self._reasons: set[str] = set()
        self._wake = asyncio.Event()

    def request(self, reason: str) -> None:
        """A loss was detected (called by the stream consumer); never blocks."""
        self.stats.stream_loss(reason)
        self._reasons.add(reason)
        self._wake.set()

    @property
    def pending(self) -> bool:
        return self._wake.is_set()

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> None:
        """Repair on request (and every `interval` s when > 0) until `stop`; with `once`,
        only what was requested so far, then return."""
        while not stop.is_set():
            if once and not self._wake.is_set():
                return
            if not self._wake.is_set():
                waits = [
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(stop.wait()),
                ]
                try:
                    await asyncio.wait(
                        waits,
                        timeout=self.interval or None,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    for w in waits:
                        w.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await w
                if stop.is_set():
                    return
            reason = ",".join(sorted(self._reasons)) or "reconciliation"
            self._reasons.clear()
            self._wake.clear()
            await self.run_once(stop, reason)

    async def run_once(self, stop: asyncio.Event, reason: str) -> None:
        before = self.stats.rows_by_origin.get(self.poller.origin, 0)
        log.info("repair.started", reason=reason, watermark=self.stats.watermark)
        await self.poller.run(stop, once=True)
        if stop.is_set():
            return
        rows = self.stats.rows_by_origin.get(self.poller.origin, 0) - before
        self.stats.repaired(reason)
        log.info("repair.done", reason=reason, rows=rows, watermark=self.stats.watermark)
