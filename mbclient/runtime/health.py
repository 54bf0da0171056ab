"""Per-device health on D-Bus under /Mgmt/Stats (a subtree Victron's GUI ignores).

The counters come from the link (``UnitStats``: every transaction the arbiter ran for the
unit); the achieved refresh interval is measured here, by the device task. Updates are
rate-limited to one batch every few seconds: counters change on every transaction, and
publishing each change would be exactly the signal storm the D-Bus layer must avoid.
"""

from __future__ import annotations

from collections.abc import Callable

from ..items import ItemStore
from ..transports.base import UnitStats

P_TRANSACTIONS = "/Mgmt/Stats/Transactions"
P_TIMEOUTS = "/Mgmt/Stats/Timeouts"
P_FRAME_ERRORS = "/Mgmt/Stats/FrameErrors"
P_EXCEPTIONS = "/Mgmt/Stats/Exceptions"
P_LATENCY = "/Mgmt/Stats/Latency"  # filtered request->reply time, milliseconds
P_REFRESH = "/Mgmt/Stats/RefreshInterval"  # achieved interval of the fast registers, seconds
P_STATE = "/Mgmt/Stats/State"  # online / failing / asleep (text for people and tests)


class RefreshMeter:
    """Exponentially filtered interval between successive fast-register refreshes."""

    __slots__ = ("alpha", "interval", "_last")

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.interval: float | None = None
        self._last: float | None = None

    def mark(self, now: float) -> None:
        if self._last is not None:
            dt = now - self._last
            self.interval = dt if self.interval is None else self.interval + self.alpha * (dt - self.interval)
        self._last = now

    def gap(self) -> None:
        """Forget the last mark: the time spent asleep is not a refresh interval."""
        self._last = None


class HealthPublisher:
    """Copies a unit's statistics into its store, at most once per ``interval`` seconds."""

    def __init__(self, store: ItemStore, stats: Callable[[], UnitStats], interval: float = 5.0) -> None:
        self.store = store
        self.stats = stats
        self.interval = interval
        self.refresh = RefreshMeter()
        self._last: float | None = None

    def add_items(self) -> None:
        s = self.store
        s.add(P_TRANSACTIONS, 0, kind=int)
        s.add(P_TIMEOUTS, 0, kind=int)
        s.add(P_FRAME_ERRORS, 0, kind=int)
        s.add(P_EXCEPTIONS, 0, kind=int)
        s.add(P_LATENCY, None, kind=float, unit=" ms", precision=1)
        s.add(P_REFRESH, None, kind=float, unit=" s", precision=2)
        s.add(P_STATE, "", kind=str)

    def set_state(self, state: str) -> None:
        self.store.set(P_STATE, state)

    def update(self, now: float, force: bool = False) -> bool:
        """Refresh the counters if ``interval`` has passed (or ``force``). No flush."""
        if not force and self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        st = self.stats()
        latency = st.latency
        self.store.update({
            P_TRANSACTIONS: st.transactions,
            P_TIMEOUTS: st.timeouts,
            P_FRAME_ERRORS: st.frame_errors,
            P_EXCEPTIONS: st.exceptions,
            P_LATENCY: None if latency is None else round(latency * 1000.0, 2),
            P_REFRESH: None if self.refresh.interval is None else round(self.refresh.interval, 3),
        })
        return True
