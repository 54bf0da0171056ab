"""Poll demand: a controller asks for one of our services' power to be read faster.

The zero-export controller closes its loop on the grid meter's ``/Ac/Power``. At the
meters' normal FAST interval (0.25 s) the wait for the next read alone eats the whole
latency budget (a grid step must reach the inverter within 250 ms at 9600 Bd). Polling
every meter at 10 Hz all the time would waste the line for everyone else, so the
controller says which service it follows while it is active, and only that device polls
its FAST class faster, only for as long as someone wants it.

The controller names a D-Bus service, because it finds its meter on D-Bus like any other
consumer (the meter may as well belong to another process; then nothing happens here).
Device tasks attach under their service name and are told the interval wanted for it
(``None``: no demand). Several owners may want the same service: the shortest wins.

The same link answers the controller's other question about a meter of ours: when was it
last read successfully? Over D-Bus our own service keeps answering with the last value
while the device is failing, so "unchanged" would read as "alive" until the grace period
ends. A device task attaches with a ``last_read`` function; :meth:`PollDemand.read_age`
gives the age of that read (``None``: the service is not ours, judge it over D-Bus).

And a third: where are that meter's values in this process? A controller following one
of our own meters takes its readings from the meter's item store (:meth:`PollDemand.store`)
as they are decoded, instead of having each one travel out to the bus daemon and back
in again (ten times a second while it steers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..items import ItemStore

Listener = Callable[[float | None], None]
LastRead = Callable[[], float | None]  # time.monotonic() of the last successful read, None: never


class PollDemand:
    """Who wants which service's FAST registers how often (see the module docstring)."""

    def __init__(self) -> None:
        self._wants: dict[object, tuple[str, float]] = {}
        self._listeners: dict[str, Listener] = {}
        self._last_read: dict[str, LastRead] = {}
        self._told: dict[str, float | None] = {}
        self._stores: dict[str, ItemStore] = {}

    def want(self, owner: object, service: str | None, interval: float | None = None) -> None:
        """``owner`` now wants ``service`` polled every ``interval`` s (``None``: nothing)."""
        before = self._wants.get(owner)
        if service is None or interval is None:
            self._wants.pop(owner, None)
        else:
            self._wants[owner] = (service, interval)
        for name in {w[0] for w in (before, self._wants.get(owner)) if w is not None}:
            self._notify(name)

    def interval(self, service: str) -> float | None:
        """The shortest interval anyone wants for ``service`` (``None``: no demand)."""
        wanted = [iv for name, iv in self._wants.values() if name == service]
        return min(wanted) if wanted else None

    def read_age(self, service: str | None, now: float | None = None) -> float | None:
        """Seconds since ``service`` (one of ours) was last read successfully; ``inf`` if it
        never was; ``None`` if the service is not ours."""
        last_read = self._last_read.get(service) if service else None
        if last_read is None:
            return None
        at = last_read()
        if at is None:
            return float("inf")
        return max(0.0, (time.monotonic() if now is None else now) - at)

    def store(self, service: str | None) -> ItemStore | None:
        """The item store behind ``service`` if it is one of ours (``None``: not ours)."""
        return self._stores.get(service) if service else None

    def attach(self, service: str, listener: Listener, last_read: LastRead | None = None,
               store: ItemStore | None = None) -> Callable[[], None]:
        """Publish ``service`` as ours: ``listener`` hears the wanted interval now and on
        every change; ``last_read`` tells when the device last answered; ``store`` holds
        its values. Returns the detach function (call it before renaming the service)."""
        self._listeners[service] = listener
        if last_read is not None:
            self._last_read[service] = last_read
        if store is not None:
            self._stores[service] = store
        self._told.pop(service, None)
        self._notify(service)

        def detach() -> None:
            if self._listeners.get(service) is listener:
                del self._listeners[service]
                self._told.pop(service, None)
            if last_read is not None and self._last_read.get(service) is last_read:
                del self._last_read[service]
            if store is not None and self._stores.get(service) is store:
                del self._stores[service]

        return detach

    def _notify(self, service: str) -> None:
        listener = self._listeners.get(service)
        if listener is None:
            return
        interval = self.interval(service)
        if service in self._told and self._told[service] == interval:
            return
        self._told[service] = interval
        listener(interval)
