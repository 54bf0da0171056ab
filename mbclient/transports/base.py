"""The one request API every transport offers, and the per-unit health counters.

A ``Link`` moves request PDUs to a unit and returns the reply PDU. It owns framing,
arbitration (one frame on an RS-485 line at a time), late-byte hygiene and statistics.
``UnitClient`` is what a device task holds: typed helpers over one unit of one link.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import FrameError, LinkDown, ModbusExceptionResponse
from ..modbus.pdu import READ_HOLDING, READ_INPUT, Request


@dataclass(slots=True)
class UnitStats:
    """Health of one unit as seen by its link. Published under /Mgmt/Stats and /metrics."""

    transactions: int = 0  # completed with a valid reply (including exception replies)
    timeouts: int = 0
    frame_errors: int = 0  # bad CRC/LRC, wrong unit/function/length, noise
    exceptions: int = 0  # Modbus exception replies
    latency: float | None = None  # filtered request->reply seconds (EMA)
    latency_buckets: dict[float, int] = field(default_factory=dict)  # histogram, upper bound -> count
    latency_sum: float = 0.0  # total of every recorded latency (the histogram's _sum in /metrics)

    def record_latency(self, seconds: float, alpha: float = 0.2) -> None:
        self.latency = seconds if self.latency is None else self.latency + alpha * (seconds - self.latency)
        self.latency_sum += seconds
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                self.latency_buckets[bound] = self.latency_buckets.get(bound, 0) + 1
                break
        else:
            self.latency_buckets[float("inf")] = self.latency_buckets.get(float("inf"), 0) + 1


LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def accept_reply(
    request: Request, pdu: bytes, stats: UnitStats, latency: float, unit: int, *, count_frame_error: bool = True
) -> list[int]:
    """Check a framed reply against its request and account it: every link does the same.

    An exception reply is a completed transaction (the unit is alive); a reply that does not
    match its request is a frame error and is never decoded.
    """
    try:
        values = request.check_reply(pdu)
    except ModbusExceptionResponse:
        stats.transactions += 1
        stats.exceptions += 1
        stats.record_latency(latency)
        raise
    except FrameError as exc:
        if count_frame_error:
            stats.frame_errors += 1
        raise FrameError(f"unit {unit}: {exc}") from None
    stats.transactions += 1
    stats.record_latency(latency)
    return values


class LinkBase:
    """What every link shares: per-unit statistics and the checks at the door of ``transact``."""

    name: str

    def __init__(self) -> None:
        self._stats: dict[int, UnitStats] = {}
        self._closed = False
        self._expected: dict[object, tuple[float, Callable[[], object]]] = {}

    def expect(self, key: object, when: float, wake: Callable[[], object]) -> None:
        """``key`` sleeps until ``when`` (``time.monotonic()``) and then wants the line:
        ``wake()`` may be called earlier, when the line is taken until ``when`` anyway
        (``_wake_expected``). A new call for ``key`` replaces its earlier one."""
        self._expected[key] = (when, wake)

    def unexpect(self, key: object) -> None:
        self._expected.pop(key, None)

    def _wake_expected(self, until: float) -> None:
        """Wake the sleepers due by ``until`` (``time.monotonic()``), the earliest moment
        the line is free again: each then queues for its turn now and is handed the line
        when it frees - exactly when it would have had it had it slept on - instead of
        waking on its own timer while the line is busy and once more at the hand-over.
        Every wakeup of the process costs CPU (far more than the work done in it)."""
        expected = self._expected
        due = [key for key, (when, _) in expected.items() if when <= until]
        for key in due:
            _, wake = expected.pop(key)
            wake()

    def stats(self, unit: int) -> UnitStats:
        stats = self._stats.get(unit)
        if stats is None:
            if not 0 <= unit <= 255:
                raise ValueError(f"unit {unit} outside 0..255")
            stats = self._stats[unit] = UnitStats()
        return stats

    async def connect(self) -> None:
        """Open the line now (normally the first request does). Raises ``LinkDown``.

        Stream links (serial, RTU over TCP, Modbus TCP) take a priority turn so that opening
        never races a transaction; they provide ``_turns`` and ``_ready_line``."""
        await self._turns.acquire(-1, True)  # type: ignore[attr-defined]
        try:
            await self._ready_line()  # type: ignore[attr-defined]
        finally:
            self._turns.release()  # type: ignore[attr-defined]

    def _admit(self, timeout: float) -> None:
        """Refuse a request before it queues: a bad timeout is a programming error, a
        closed link is down for good."""
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError(f"timeout {timeout!r} must be a positive number of seconds")
        if self._closed:
            raise LinkDown(f"{self.name}: link closed")


@runtime_checkable
class Link(Protocol):
    """A transport to one or more units (a serial port, a TCP/UDP endpoint)."""

    name: str  # human text for /Mgmt/Connection, e.g. "Modbus RTU ttyUSB0"

    async def transact(self, unit: int, request: Request, *, timeout: float, priority: bool = False) -> list[int]:
        """Send ``request`` to ``unit`` and return the registers of its checked reply.

        ``timeout`` is the caller's own deadline for the reply (not counting time spent
        waiting for the bus). ``priority`` puts the request ahead of queued normal ones
        (control writes): it waits for at most the transaction already in flight.
        Raises ModbusTimeout, FrameError, ModbusExceptionResponse or LinkDown. The link
        checks unit, CRC/LRC/MBAP and ``request.check_reply`` itself (so it can count
        frame errors and exceptions); writes return [].
        Cancellation leaves the link clean for the next caller.
        """
        ...

    def stats(self, unit: int) -> UnitStats: ...

    async def aclose(self) -> None: ...


class UnitClient:
    """Typed register access to one unit. Drivers and device tasks use only this."""

    def __init__(self, link: Link, unit: int) -> None:
        self.link = link
        self.unit = unit

    @property
    def stats(self) -> UnitStats:
        return self.link.stats(self.unit)

    async def _do(self, request: Request, timeout: float, priority: bool = False) -> list[int]:
        return await self.link.transact(self.unit, request, timeout=timeout, priority=priority)

    async def read(self, function: int, address: int, count: int, *, timeout: float,
                   priority: bool = False) -> list[int]:
        return await self._do(Request.read(function, address, count), timeout, priority)

    async def read_holding(self, address: int, count: int, *, timeout: float) -> list[int]:
        return await self.read(READ_HOLDING, address, count, timeout=timeout)

    async def read_input(self, address: int, count: int, *, timeout: float) -> list[int]:
        return await self.read(READ_INPUT, address, count, timeout=timeout)

    async def write_register(self, address: int, value: int, *, timeout: float, priority: bool = False) -> None:
        await self._do(Request.write_single(address, value), timeout, priority)

    async def write_registers(
        self, address: int, values: list[int], *, timeout: float, priority: bool = False
    ) -> None:
        await self._do(Request.write_multiple(address, values), timeout, priority)

    async def read_write(
        self, read_address: int, read_count: int, write_address: int, values: list[int], *,
        timeout: float, priority: bool = False,
    ) -> list[int]:
        return await self._do(Request.read_write(read_address, read_count, write_address, values), timeout, priority)
