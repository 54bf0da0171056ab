"""Turns on a shared line: a priority lane, then round-robin across units.

Every link (serial arbiter, TCP, UDP) has exactly one transaction in flight at a time.
``Turns`` decides who goes next when the holder releases the line:

1. priority callers, first come first served - writes (control writes, limits) before
   priority reads (a controller's input, see ``devices.base``): a priority write waits for
   at most the transaction already in flight, a priority read for that and the writes;
2. otherwise the next unit *after the last one served* (in order of first appearance) that
   has a waiting caller, FIFO within the unit. Position-based round-robin means a unit
   with many callers, or a dead unit that burns its whole timeout on every turn, still
   gets one turn per round and no more.

The turn is handed over directly (baton passing): the releasing task resolves the next
caller's future, so no one can slip in between. Memory is bounded by the number of
distinct units (at most 248) plus the callers actually waiting; nothing grows with the
number of transactions or timeouts.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Turns:
    """Grant the line to one caller at a time (see module docstring)."""

    __slots__ = ("_busy", "_first", "_priority", "_queues", "_order", "_last")

    def __init__(self) -> None:
        self._busy = False
        self._first: deque[asyncio.Future[None]] = deque()  # priority writes
        self._priority: deque[asyncio.Future[None]] = deque()
        self._queues: dict[int, deque[asyncio.Future[None]]] = {}
        self._order: list[int] = []  # units in order of first appearance
        self._last = -1  # index in _order of the unit served last

    @property
    def busy(self) -> bool:
        return self._busy

    def waiting(self) -> int:
        """Callers queued (not counting the holder)."""
        return len(self._first) + len(self._priority) + sum(len(q) for q in self._queues.values())

    async def acquire(self, unit: int, priority: bool = False, *, first: bool = False) -> None:
        """Wait for the line. Cancellation while waiting leaves the queue consistent.
        ``first`` (a write) puts a priority caller ahead of the priority reads."""
        if not self._busy:
            self._busy = True
            self._note_served(unit, priority)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if priority:
            queue = self._first if first else self._priority
        else:
            queue = self._queues.get(unit)
            if queue is None:
                queue = self._queues[unit] = deque()
                self._order.append(unit)
        queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled before using it: pass it on
            else:
                try:
                    queue.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        """Hand the line to the next caller, or mark it free."""
        while True:
            fut = self._next()
            if fut is None:
                self._busy = False
                return
            if not fut.done():  # skip callers cancelled but not yet unwound
                fut.set_result(None)
                return

    def _note_served(self, unit: int, priority: bool) -> None:
        if priority:
            return
        if unit not in self._queues:
            self._queues[unit] = deque()
            self._order.append(unit)
        self._last = self._order.index(unit)

    def _next(self) -> asyncio.Future[None] | None:
        if self._first:
            return self._first.popleft()
        if self._priority:
            return self._priority.popleft()
        order = self._order
        n = len(order)
        for step in range(1, n + 1):
            i = (self._last + step) % n
            queue = self._queues[order[i]]
            if queue:
                self._last = i
                return queue.popleft()
        return None
