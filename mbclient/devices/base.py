"""The driver contract: a ``Model`` is data, a ``Driver`` runs it against one unit.

The runtime (device task) only ever calls what is defined here:

* ``model.create(client, store, options) -> Driver``
* ``await driver.read_identity() -> Identity`` (once per connection)
* ``driver.add_items()`` (every device-specific D-Bus path, invalid until read)
* ``driver.due(now)`` / ``driver.next_deadline(now)`` / ``await driver.poll(now)``
* ``driver.go_offline()`` when the unit stops answering
* ``await driver.service_writes(now)`` whenever ``driver.wakeup`` is set or a deadline passes
* ``driver.timeout`` for the caller's own probes

Everything generic - block planning, decoding, publishing, latency-adaptive timeouts,
invalidation when offline, remote writes of writable registers - lives in ``Driver``;
a family module supplies register tables and overrides a hook only where the device is
truly special (Growatt's power limiter, Eastron's serial number format).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ModbusError, ModbusExceptionResponse
from ..items import ItemStore
from ..registers import (
    DEFAULT_INTERVALS,
    DEFAULT_TURNAROUND,
    FAST,
    ONCE,
    Block,
    BlockRules,
    Derived,
    Refresh,
    Register,
    ScheduledBlock,
    Value,
    bridge_limit,
    plan_blocks,
    split_block,
)

if TYPE_CHECKING:
    from ..transports.base import UnitClient

log = logging.getLogger(__name__)

ROLES = ("grid", "pvinverter", "genset", "acload", "evcharger", "heatpump")
METER_ROLES = ROLES
#: /Position choices per role (gui-v2 AcPosition): pvinverter 0 AC input 1, 1 AC output,
#: 2 AC input 2; acload/evcharger/heatpump 0 AC output, 1 AC input; grid/genset none.
POSITION_CHOICES: Mapping[str, tuple[int, ...]] = {
    "pvinverter": (0, 1, 2),
    "acload": (0, 1),
    "evcharger": (0, 1),
    "heatpump": (0, 1),
}

#: Timeout = max(min_timeout, LATENCY_FACTOR x filtered latency), capped at MAX_TIMEOUT,
#: as upstream dbus-modbus-client adapts it (its factor is 4 too).
LATENCY_FACTOR = 4.0
MAX_TIMEOUT = 2.0

_BUS_BAD = re.compile(r"[^A-Za-z0-9_-]")  # bus-name element (may hold '-')
_IDENT_BAD = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True, slots=True)
class Identity:
    """What a unit says about itself, read once per connection. Strings, as published."""

    serial: str
    firmware: str | None = None
    hardware: str | None = None
    product_name: str | None = None  # overrides the model's product name when set
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class G100Config:
    """Growatt export-limit configuration (UK G98/G100). ``None`` fields are left alone.

    These registers live in the inverter's EEPROM: they are written only when configured
    here and only when the inverter's read-back differs.
    """

    failsafe: int | None = None  # holding 42: 1 enable, 0 disable
    export_limit_mode: int | None = None  # holding 122: 0 off, 1 RS485 meter, 2 RS232 meter, 3 CT
    export_limit_rate: int | None = None  # holding 123: -1000..1000, 0.1 % of rated power
    failsafe_power_rate: int | None = None  # holding 3000: 0..1000, 0.1 % of rated power


@dataclass(slots=True)
class DeviceOptions:
    """Per-device choices (settings / CLI). Defaults suit a GX on a 9600 Bd line."""

    role: str | None = None  # None: the model's default role
    zero_when_asleep: bool = False  # publish 0 W / 0 A instead of invalid while offline
    max_power: float | None = None  # rated power override (W) for inverters
    g100: G100Config | None = None
    refresh: Mapping[Refresh, float] = field(default_factory=dict)  # seconds, overrides per class
    power_limit_timeout: float = 60.0  # ESS limit returns to maximum after this long unrenewed
    limit_min_interval: float = 2.0  # controller (dyngen) writes at most this often
    limit_deadband: float = 1.0  # controller writes only when the rate moves more (points)
    baud: int | None = None  # serial line speed (sizes hole bridging); None for TCP/UDP
    turnaround: float = DEFAULT_TURNAROUND
    min_timeout: float | None = None  # None: the model's
    initial_timeout: float | None = None  # before any latency was measured; None: the model's
    index: int = 1  # which device behind the unit address (spec ``<model>@<n>``; SunSpec chains)


# --- variants and quirks ---------------------------------------------------------------------------

#: Device quirks a definition file may name; the driver implements them (seconds each).
#: ``connect_delay``: wait after connecting before the first request (devices that drop
#: requests while they set up a connection); ``request_gap``: least pause between the end
#: of one request of this unit and the next (devices that need to breathe between reads).
QUIRKS = ("connect_delay", "request_gap")


@dataclass(frozen=True, slots=True)
class Variant:
    """Rows a unit has or lacks by an identity value (e.g. its phase configuration):
    when identity register ``key`` reads one of ``values``, the rows named in ``add``
    are polled and published, those in ``drop`` are not, and ``phases`` (if set) is the
    unit's /NrOfPhases."""

    key: str
    values: tuple[Value, ...]
    add: frozenset[str] = frozenset()
    drop: frozenset[str] = frozenset()
    phases: int | None = None


# --- detection ---------------------------------------------------------------------------------

Detector = Callable[["UnitClient", float], "Any"]  # async (client, timeout) -> Model | None


@dataclass(frozen=True, slots=True)
class Model:
    """A device model: data only. ``driver`` is the class that runs it (usually ``Driver``)."""

    name: str  # spec/CLI name, e.g. "sdm230"
    product_name: str
    product_id: int
    vendor: str  # ident prefix: service com.victronenergy.<role>.<vendor>_<serial>
    manufacturer: str
    registers: tuple[Register, ...]
    default_role: str
    allowed_roles: tuple[str, ...]
    device_instance: int  # preferred VRM instance
    phases: int = 1
    rules: BlockRules = BlockRules()
    identity: tuple[Register, ...] = ()
    derived: tuple[Derived, ...] = ()
    detect: str = ""  # how ``identify`` recognises it (shown by --models and in docs)
    driver: type[Driver] | None = None
    min_timeout: float = 0.3
    initial_timeout: float = 1.0
    intervals: Mapping[Refresh, float] = field(default_factory=lambda: dict(DEFAULT_INTERVALS))
    is_meter: bool = True  # energy meter (publishes /IsGenericEnergyMeter in non-grid roles)
    # Where a scan looks for this model (discovery): the transports it speaks ("rtu",
    # "ascii", "tcp", "udp"), the units it answers as from the factory, its factory baud
    # rates (serial) and its TCP/UDP port.
    transports: tuple[str, ...] = ("rtu",)
    default_units: tuple[int, ...] = (1,)
    rates: tuple[int, ...] = (9600,)
    tcp_port: int = 502
    # Rows (register and derived names) only a matching variant adds, and the variants.
    variant_rows: frozenset[str] = frozenset()
    variants: tuple[Variant, ...] = ()
    quirks: Mapping[str, float] = field(default_factory=dict)
    #: Register sets of the definition file by name -> the row names in them (code that
    #: picks rows by what the unit says, e.g. by firmware version, names sets).
    sets: Mapping[str, frozenset[str]] = field(default_factory=dict)
    source: str = ""  # definition file the model was loaded from ("" for a model built in code)
    #: Devices one unit address can hold (spec ``<model>@<n>``): SunSpec chains hold several.
    max_devices: int = 1
    #: The name a spec uses for a family whose driver resolves the concrete model at
    #: identification (``sunspec`` -> ``sunspec_inverter``/``sunspec_meter``); "" otherwise.
    family: str = ""
    #: Bus-name element on a serial line when it is not the settings ident, from the fields
    #: ``{port}`` (the tty as the stock driver names it) and ``{unit}``: the stock driver
    #: of a family names its services by connection (dbus-cgwacs ``cgwacs_{port}_mb{unit}``),
    #: its settings by serial. "" = the ident. Network connections always use the ident.
    bus_name: str = ""

    def __post_init__(self) -> None:
        if self.default_role not in self.allowed_roles:
            raise ValueError(f"{self.name}: default role {self.default_role} not allowed")
        plan_blocks(self.registers, self.rules)  # a table the device cannot serve is a bug

    def create(self, client: UnitClient, store: ItemStore, options: DeviceOptions | None = None) -> Driver:
        cls = self.driver or Driver
        return cls(self, client, store, options or DeviceOptions())

    def ident(self, serial: str) -> str:
        """``<vendor>_<serial>``: /Settings/Devices/<ident>, and the bus-name element unless
        the model has a :attr:`bus_name`."""
        return _IDENT_BAD.sub("_", f"{self.vendor}_{serial}")

    def service_ident(self, serial: str, tty: str | None = None, unit: int = 0) -> str:
        """Fourth element of the service name: ``bus_name`` filled in for a device on the
        serial line ``tty`` (a device path, ``/dev/`` dropped and ``/`` -> ``_`` as
        dbus-cgwacs does), else :meth:`ident`."""
        if not self.bus_name or tty is None:
            return self.ident(serial)
        port = tty.removeprefix("/dev/").replace("/", "_")
        return _BUS_BAD.sub("_", self.bus_name.format(port=port, unit=unit))

    def position_choices(self, role: str) -> tuple[int, ...] | None:
        """Allowed /Position values in ``role``, or None when the role has no /Position."""
        return POSITION_CHOICES.get(role)

    def check_role(self, role: str) -> str:
        if role not in self.allowed_roles:
            raise ConfigError(f"role {role!r} not allowed for {self.name} (one of {', '.join(self.allowed_roles)})")
        return role


def next_slot(after: float, interval: float) -> float:
    """The first multiple of ``interval`` on the monotonic clock strictly after ``after``.

    Every block is due on such a slot (fixed rate, no drift: a late poll does not push
    the next one later), and every driver uses the same slots: blocks of different
    devices with the same interval - or with intervals that are multiples of one
    another - fall due at the same instant, so the process wakes once for all of them
    and the bus arbiter hands the line from one to the next, instead of each device
    waking on its own timer and again when the line is handed to it (see
    ``Driver._next_due`` for reads that fall behind)."""
    if not interval > 0:
        return after
    slot = (math.floor(after / interval) + 1) * interval
    return slot if slot > after else slot + interval


class Wakeup:
    """``driver.wakeup``: an ``asyncio.Event`` (``set``/``clear``/``is_set``/``wait``) that
    can also wait until a deadline and tells a hook when it is set.

    ``wait_until`` replaces a timeout wrapped around ``Event.wait`` (a cancel scope, a timer
    and a cancellation on every idle wait of every device task) with one future and one
    timer; ``on_set`` lets a poll in flight queue a write the instant it is accepted."""

    __slots__ = ("_flag", "_waiters", "on_set")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: list[asyncio.Future[None]] = []
        self.on_set: Callable[[], Any] | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if self._flag:
            return
        self._flag = True
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        if self.on_set is not None:
            self.on_set()

    def clear(self) -> None:
        self._flag = False

    def poke(self) -> None:
        """End the current waits now without setting the flag (``wait_until`` returns
        False, as at its deadline)."""
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self) -> bool:
        return await self.wait_until(math.inf)

    async def wait_until(self, deadline: float) -> bool:
        """Until set or ``time.monotonic()`` reaches ``deadline``; True if set."""
        if self._flag:
            return True
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        handle = None
        if deadline != math.inf:
            if type(loop).time is not _MONOTONIC_TIME:  # a loop with a clock of its own
                deadline = loop.time() + (deadline - time.monotonic())
            # exactly the deadline otherwise: devices due on the same slot share one wakeup
            handle = loop.call_at(deadline, _resolve, fut)
        self._waiters.append(fut)
        try:
            await fut
        finally:
            self._waiters.remove(fut)
            if handle is not None:
                handle.cancel()
        return self._flag


_MONOTONIC_TIME = asyncio.BaseEventLoop.time  # the standard loops' clock is time.monotonic()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# --- the generic driver ------------------------------------------------------------------------


class Driver:
    """Runs one ``Model`` against one unit. Subclasses override hooks, not the contract."""

    #: The inverter's power limiter (``mbclient.control.limiter.PowerLimiter``) for models
    #: that can be curtailed; None for meters. The runtime hands it to the controller.
    limiter: Any = None

    def __init__(self, model: Model, client: UnitClient, store: ItemStore, options: DeviceOptions) -> None:
        self.model = model
        self.client = client
        self.store = store
        self.options = options
        self.role = model.check_role(options.role or model.default_role)
        self.identity: Identity | None = None
        self.values: dict[str, Value] = {}  # every decoded register and derived value by name
        #: Set when ``service_writes`` has work (a remote write was accepted, a limit
        #: requested). The device task awaits it next to its poll deadline.
        self.wakeup = Wakeup()
        self._writing = asyncio.Lock()  # service_writes also runs from inside poll
        self.log = log
        self._pending: dict[str, tuple[Register, Value]] = {}
        self._schedule: list[ScheduledBlock] | None = None
        self._polled: tuple[Register, ...] | None = None  # the registers _schedule was planned for
        self._items_added = False
        self._register_paths: set[str] = set()  # paths add_items made for registers
        self._latency: float | None = None
        self._intervals = {**model.intervals, **options.refresh}
        self._fast_override: float | None = None
        #: Polls that refreshed the FAST class (the runtime measures the achieved interval)
        self.fast_refreshes = 0
        # Unknown line speed: assume the slowest common one (9600 Bd), where bridging
        # decisions matter most; on TCP that merely bridges a little less than it could.
        self._max_gap = bridge_limit(options.baud or 9600, options.turnaround)
        self._by_input: dict[str, list[Derived]] = {}
        for d in model.derived:
            for name in d.inputs:
                self._by_input.setdefault(name, []).append(d)
        #: Rows this unit lacks (its variant); registers() and derived() leave them out.
        self._excluded: frozenset[str] = model.variant_rows
        self._variant_values: dict[str, Value] = {}
        self._variant_keys = {v.key for v in model.variants}
        self.nr_of_phases = model.phases
        self._last_request_end = 0.0
        self._scaled_by: dict[str, list[Register]] = {}
        self._raw: dict[str, Value] = {}  # unscaled values of scale_ref registers
        for r in model.registers:
            if r.scale_ref is not None:
                self._scaled_by.setdefault(r.scale_ref, []).append(r)

    # -- hooks for family modules -------------------------------------------------------------
    def registers(self) -> Sequence[Register]:
        """The registers this unit is polled for (a subclass may filter by identity)."""
        if not self._excluded:
            return self.model.registers
        return tuple(r for r in self.model.registers if r.name not in self._excluded)

    def derived(self) -> Sequence[Derived]:
        """The derived paths this unit publishes (those of its variant)."""
        if not self._excluded:
            return self.model.derived
        return tuple(d for d in self.model.derived if d.name not in self._excluded)

    def select_variant(self, values: Mapping[str, Value]) -> None:
        """Apply the first variant whose identity value (or ``role``) matches, or none: the
        base rows. Also called when a polled register named like a variant key changes
        (a written phase configuration), which adds and drops the paths at runtime."""
        model = self.model
        if not model.variants:
            return
        self._variant_values.update(values)
        values = {**self._variant_values, "role": self.role}
        excluded, phases = model.variant_rows, model.phases
        for v in model.variants:
            if values.get(v.key) in v.values:
                excluded = (model.variant_rows - v.add) | v.drop
                phases = v.phases or phases
                break
        if excluded != self._excluded or phases != self.nr_of_phases:
            self._excluded, self.nr_of_phases = excluded, phases
            if self._items_added:
                for d in model.derived:
                    if d.name in excluded and d.name in self.store:
                        self.store.remove(d.name)
                if "/NrOfPhases" in self.store:
                    self.store.set("/NrOfPhases", phases)
            self.replan()

    def make_identity(self, values: Mapping[str, Value]) -> Identity:
        """Build the Identity from the decoded identity registers (names serial, firmware,
        hardware, product_name; anything else goes to ``extra``)."""
        serial = values.get("serial")
        if serial in (None, ""):
            raise ModbusError(f"{self.model.name}: unit gave no serial number")
        extra = {k: v for k, v in values.items() if k not in ("serial", "firmware", "hardware", "product_name")}
        return Identity(
            serial=str(serial),
            firmware=_str_or_none(values.get("firmware")),
            hardware=_str_or_none(values.get("hardware")),
            product_name=_str_or_none(values.get("product_name")),
            extra=extra,
        )

    def extra_items(self) -> None:
        """Paths beyond the register table (subclasses)."""

    def on_values(self, changed: Mapping[str, Value]) -> None:
        """Called after each decoded block with the values that changed (subclasses)."""

    async def service_device(self, now: float) -> None:
        """Device-specific writes and timers (subclasses), run by ``service_writes``."""

    def offline_hook(self) -> None:
        """Device-specific part of going offline (subclasses)."""

    # -- identity ----------------------------------------------------------------------------------
    async def read_identity(self) -> Identity:
        """Read the identity registers (exception 2 on an optional block leaves those values
        unset, so a model can list fallbacks) and build the Identity. Raises ModbusError."""
        values: dict[str, Value] = {}
        delay = self.model.quirks.get("connect_delay")
        if delay:
            await asyncio.sleep(delay)
        blocks = plan_blocks(self.model.identity, self.model.rules, max_gap=self._max_gap)
        while blocks:
            block = blocks.pop(0)
            try:
                regs = await self._read_block(block)
            except ModbusExceptionResponse as exc:
                if exc.code != 2:
                    raise
                parts = self._fallback(block)
                if parts:
                    blocks[0:0] = parts
                    continue
                if block.optional:
                    continue
                raise
            for reg, v in block.decode(regs).items():
                values[reg.name] = v
        self.identity = self.make_identity(values)
        self.select_variant(values)
        return self.identity

    # -- items ---------------------------------------------------------------------------------
    def add_items(self) -> None:
        """Define every device path (invalid until read). Generic paths are the runtime's."""
        self._items_added = True
        self._add_register_items(self.registers())
        for d in self.derived():
            self.store.add(d.name, self.values.get(d.name), unit=d.unit, precision=d.precision, kind=d.kind,
                           formatter=d.formatter())
        if self.model.is_meter:
            self.store.add("/NrOfPhases", self.nr_of_phases, kind=int)
            if self.role != "grid":
                # Energy meters in another role are "generic energy meters" (upstream,
                # dbus-cgwacs, dbus-shelly): they measure but cannot limit.
                self.store.add("/IsGenericEnergyMeter", 1, kind=int)
        self.extra_items()

    def replan(self) -> None:
        """``registers()`` changed (e.g. the identity revealed the tracker count): plan the
        reads again and, if the items exist already, add new paths and drop stale ones."""
        self._schedule = None
        if not self._items_added:
            return
        regs = self.registers()
        new = {p for r in regs for p in r.paths}
        for path in self._register_paths - new:
            self.store.remove(path)
        self._register_paths &= new
        self._add_register_items([r for r in regs if any(p not in self.store for p in r.paths)])

    def _add_register_items(self, registers: Sequence[Register]) -> None:
        store = self.store
        for reg in registers:
            self._register_paths.update(reg.paths)
            for path in reg.paths:
                writable = reg.write is not None and path == reg.name
                store.add(
                    path,
                    self.values.get(reg.name),
                    unit=reg.unit,
                    precision=reg.precision,
                    kind=reg.value_kind,
                    formatter=reg.formatter(),
                    writable=writable,
                    min=reg.write.min if writable and reg.write else None,
                    max=reg.write.max if writable and reg.write else None,
                    choices=reg.write.choices if writable and reg.write else None,
                    on_write=self._write_hook(reg) if writable else None,
                )

    def _write_hook(self, reg: Register) -> Callable[[Value], bool]:
        def on_write(value: Value) -> bool:
            try:
                reg.encode(value, self._exponent(reg))
            except (ValueError, TypeError):
                return False
            self._pending[reg.name] = (reg, value)
            self.wakeup.set()
            return True

        return on_write

    # -- polling ---------------------------------------------------------------------------------
    @property
    def timeout(self) -> float:
        """Reply timeout for this unit: a multiple of its filtered latency with a floor."""
        latency = self._measured_latency()
        if latency is None:
            return self.options.initial_timeout or self.model.initial_timeout
        floor = self.options.min_timeout or self.model.min_timeout
        return min(MAX_TIMEOUT, max(floor, LATENCY_FACTOR * latency))

    def _measured_latency(self) -> float | None:
        try:
            latency = self.client.stats.latency
        except Exception:  # a link without statistics: fall back to our own measurement
            latency = None
        return latency if latency is not None else self._latency

    @property
    def schedule(self) -> list[ScheduledBlock]:
        if self._schedule is None:
            self._polled = tuple(self.registers())
            self._schedule = [ScheduledBlock(b) for b in plan_blocks(self._polled, self.model.rules, self._max_gap)]
        return self._schedule

    @property
    def blocks(self) -> list[Block]:
        return [s.block for s in self.schedule if not s.disabled]

    def interval(self, refresh: Refresh) -> float:
        configured = self._intervals.get(refresh, DEFAULT_INTERVALS[refresh])
        if refresh == FAST and self._fast_override is not None:
            return min(configured, self._fast_override)
        return configured

    def set_fast_interval(self, seconds: float | None) -> None:
        """Poll the FAST class at least every ``seconds`` (``None``: back to the configured
        interval; a configured interval that is shorter still applies).

        The runtime uses it while a controller closes its loop on this device's power; a
        shorter interval takes effect at once, not after the current, longer one.
        """
        self._fast_override = seconds
        if seconds is None or self._schedule is None:
            return
        soonest = next_slot(time.monotonic(), self.interval(FAST))
        for sb in self._schedule:
            if sb.block.refresh == FAST and sb.next_due > soonest:
                sb.next_due = soonest
        self.wakeup.set()  # the device task re-reads its deadline

    def due(self, now: float) -> bool:
        return any(not s.disabled and s.next_due <= now for s in self.schedule)

    def next_deadline(self, now: float) -> float:
        """Earliest time ``poll`` or ``service_writes`` needs to run (inf: nothing planned)."""
        return min(self.poll_deadline(), self.writes_deadline(now))

    def poll_deadline(self) -> float:
        """When the next block falls due (inf: none)."""
        return min([s.next_due for s in self.schedule if not s.disabled], default=math.inf)

    def writes_deadline(self, now: float) -> float:
        """When ``service_writes`` must run next even without a wakeup (subclasses)."""
        return now if self._pending else math.inf

    async def poll(self, now: float, *, interleave: bool = False) -> None:
        """Read every due block, decode, ``store.set``; flush after each block. Raises ModbusError.

        The flush per block lets a fresh power reading reach D-Bus at once, not after the
        slower blocks that fell due in the same cycle (the zero-export controller's latency
        budget is counted in tens of milliseconds). With ``interleave`` the poll ends after
        the first block slower than FAST (the FAST ones come first): the caller's next cycle
        then reads the FAST class again before the next slow block if it fell due meanwhile,
        so a burst of slow reads never starves the power reading.

        A block whose hole bridging meets exception 2 is re-planned without bridging (a
        unit that does not serve its undefined registers); an optional block the unit
        lacks is disabled. Blocks read before a failure keep their values. Pending writes
        (``wakeup`` set) are serviced between two reads.
        """
        schedule = self.schedule
        started = time.monotonic()  # ``now`` may be another clock's (tests): only differences
        fast = False
        i = 0
        while i < len(schedule):
            sb = schedule[i]
            if sb.disabled or sb.next_due > now:
                i += 1
                continue
            try:
                regs = await self._read_serving_writes(sb.block, now)
            except ModbusExceptionResponse as exc:
                if exc.code != 2:
                    raise
                parts = self._fallback(sb.block)
                if parts:
                    self.log.info("%s: exception 2 on %s, reading it as %s", self.model.name, sb.block,
                                  ", ".join(map(str, parts)))
                    schedule[i : i + 1] = [ScheduledBlock(b, sb.next_due) for b in parts]
                    continue
                if sb.block.optional:
                    self.log.info("%s: unit lacks %s, not reading it again", self.model.name, sb.block)
                    sb.disabled = True
                    i += 1
                    continue
                raise
            if sb.block.refresh == ONCE:
                sb.next_due = math.inf
            else:
                sb.next_due = self._next_due(sb.next_due, self.interval(sb.block.refresh), now,
                                             now + time.monotonic() - started)
            self._apply(sb.block.decode(regs))
            self.store.flush()
            if sb.block.refresh == FAST:
                if not fast:
                    fast = True
                    self.fast_refreshes += 1
            elif interleave:
                return
            i += 1

    @staticmethod
    def _next_due(due: float, interval: float, now: float, end: float) -> float:
        """When a block read for the poll at ``now`` (due at ``due``, the read ending at
        ``end``) is due next: the next slot (``next_slot``) - one interval after the slot it
        was read for, not one interval after the read, so the rate holds without drift.

        A read off the slots (the first one, a read-back after a write, a re-read after
        the device was offline) is next due on a slot at least half an interval later,
        not at once on the slot that happens to follow. A read that ended after its next
        slot began is followed by one read for that slot at once; the slots it missed
        before that are skipped (no burst of catch-up reads after a stall)."""
        if now - due < interval:
            nxt = next_slot(now, interval)
        else:
            nxt = next_slot(now + 0.5 * interval, interval)
        if nxt <= end:
            nxt = next_slot(end, interval) - interval
        return nxt

    def _fallback(self, block: Block) -> list[Block] | None:
        """How to read ``block`` after it met exception 2: without bridging if it bridged a
        hole, else its required and optional registers apart; None if nothing is left to try."""
        parts: list[Block] = []
        if block.bridged:
            parts = split_block(block, self.model.rules)
        if len(parts) <= 1:  # nothing to unbridge (or only alignment padding)
            required = [r for r in block.registers if not r.optional]
            optional = [r for r in block.registers if r.optional]
            if not (required and optional):
                return None
            parts = plan_blocks(required, self.model.rules, max_gap=0) + [
                b for r in optional for b in plan_blocks([r], self.model.rules, max_gap=0)]
        return parts

    async def _read_serving_writes(self, block: Block, now: float) -> list[int]:
        """Read ``block``; a write accepted meanwhile (``wakeup``) is queued at once, on
        the link's priority lane, so it reaches the wire right after the transaction in
        flight - not after the rest of this poll.

        The read runs in the caller's task; only a wakeup during the read starts a task
        (the writer). A read costs no extra task, future or event-loop turn of its own."""
        wakeup = self.wakeup
        while wakeup.is_set():  # also one accepted while the previous write was on the line
            await self.service_writes(now)
        writer: asyncio.Future[None] | None = None

        async def serve() -> None:
            # a write accepted while the writer was busy (a limit asked for during the
            # read-back of the previous one) goes too, not after this read
            while True:
                await self.service_writes(now)
                if not wakeup.is_set():
                    return

        def start_writer() -> None:
            nonlocal writer
            if writer is None:
                writer = asyncio.ensure_future(serve())

        wakeup.on_set = start_writer
        try:
            regs = await self._read_block(block)
        except BaseException as exc:
            wakeup.on_set = None
            if writer is not None:
                if isinstance(exc, asyncio.CancelledError):
                    writer.cancel()
                await asyncio.wait((writer,))  # our own cancellation still propagates
                if not writer.cancelled():
                    writer.exception()  # retrieved: the read's error is the one raised
            raise
        wakeup.on_set = None
        if writer is not None:
            await writer  # its failure is the poll's (the write stays pending)
        return regs

    def _exponent(self, reg: Register) -> int | None:
        if reg.scale_ref is None:
            return None
        sf = self.values.get(reg.scale_ref)
        return sf if isinstance(sf, int) else None

    async def _read_block(self, block: Block) -> list[int]:
        gap = self.model.quirks.get("request_gap")
        if gap:
            # Paced per unit address, not per driver: two services read through one unit
            # (an inverter and the meter behind it) share the device's breathing time.
            pacer = _pacer(self.client)
            async with pacer.lock:
                wait = pacer.last_end + gap - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    return await self._timed_read(block)
                finally:
                    pacer.last_end = self._last_request_end = time.monotonic()
        try:
            return await self._timed_read(block)
        finally:
            self._last_request_end = time.monotonic()

    async def _timed_read(self, block: Block) -> list[int]:
        started = time.monotonic()
        # A controller's input (FAST class under poll demand) rides the priority lane like a
        # write: it waits for at most the transaction in flight, never for a round of turns.
        priority = block.refresh == FAST and self._fast_override is not None
        regs = await self.client.read(int(block.table), block.address, block.count, timeout=self.timeout,
                                      priority=priority)
        took = time.monotonic() - started
        self._latency = took if self._latency is None else self._latency + 0.2 * (took - self._latency)
        return regs

    def _apply(self, decoded: Mapping[Register, Value]) -> None:
        changed: dict[str, Value] = {}
        if self._scaled_by:
            decoded = self._rescale(decoded)
        store = self.store
        for reg, value in decoded.items():
            for key in reg.keys:
                if self._remember(key, value):
                    changed[key] = value
            for path in reg.paths:
                if path in store:  # polled before add_items (probes): values only
                    store.set(path, value)
        self._derive(changed)
        if changed:
            if self._variant_keys and not self._variant_keys.isdisjoint(changed):
                self.select_variant({k: changed[k] for k in self._variant_keys if k in changed})
            self.on_values(changed)

    def _rescale(self, decoded: Mapping[Register, Value]) -> dict[Register, Value]:
        """Apply scale factors read from other registers (SunSpec ``*_SF``): a value uses
        the factor read in the same block if there is one, else the last one read; a
        changed factor rescales the values already read with it."""
        out = dict(decoded)
        factors = {r.name: v for r, v in decoded.items() if r.name in self._scaled_by}
        for reg, value in decoded.items():
            if reg.scale_ref is not None:
                sf = factors.get(reg.scale_ref, self.values.get(reg.scale_ref))
                out[reg] = reg.rescale(value, sf)
                self._raw[reg.name] = value
        for name, sf in factors.items():
            if self.values.get(name, _MISSING) == sf:
                continue
            for reg in self._scaled_by[name]:
                if reg not in decoded and reg.name in self._raw:
                    out[reg] = reg.rescale(self._raw[reg.name], sf)
        return out

    def _remember(self, name: str, value: Value) -> bool:
        old = self.values.get(name, _MISSING)
        self.values[name] = value
        return old is _MISSING or old != value or type(old) is not type(value)

    def _derive(self, changed: dict[str, Value]) -> None:
        todo = list(changed)
        while todo:
            for d in self._by_input.get(todo.pop(), ()):
                if d.name in self._excluded:
                    continue
                args = [self.values.get(n) for n in d.inputs]
                value = None if (not d.partial and any(a is None for a in args)) else d.fn(*args)
                if value is not None and d.kind is float:
                    value = float(value)
                if self._remember(d.name, value):
                    changed[d.name] = value
                    todo.append(d.name)
                if d.name in self.store:
                    self.store.set(d.name, value)

    # -- offline ---------------------------------------------------------------------------------
    def go_offline(self) -> None:
        """Live values -> invalid (or their ``asleep`` value with ``zero_when_asleep``);
        cumulative counters and once-read values are kept. Everything is re-read on the
        next poll."""
        zero = self.options.zero_when_asleep
        rows: list[Register | Derived] = [*self.registers(), *self.derived()]
        for row in rows:
            if row.cumulative or getattr(row, "refresh", None) == ONCE:
                continue
            value = row.asleep if zero else None
            for key in (row.name, *row.paths):
                self.values[key] = value
            for path in row.paths:
                if path in self.store:
                    self.store.set(path, value)
        for sb in self.schedule:
            if sb.block.refresh != ONCE:
                sb.next_due = 0.0
        self.offline_hook()

    # -- writes ----------------------------------------------------------------------------------
    async def service_writes(self, now: float) -> None:
        """Pending remote writes (priority lane) and device timers. Raises ModbusError;
        a failed write stays pending and is retried on the next call."""
        async with self._writing:
            await self._service_writes(now)

    async def _service_writes(self, now: float) -> None:
        self.wakeup.clear()
        while self._pending:
            name, (reg, value) = next(iter(self._pending.items()))
            words = reg.encode(value, self._exponent(reg))
            old = self.values.get(reg.name)
            rule = reg.write
            address = rule.address if rule is not None and rule.address is not None else reg.address
            if len(words) == 1:
                await self.client.write_register(address, words[0], timeout=self.timeout, priority=True)
            else:
                await self.client.write_registers(address, words, timeout=self.timeout, priority=True)
            self.log.info("%s: wrote %s %r -> %r", self.model.name, reg.name, old, value)
            if self._pending.get(name, (None, None))[1] == value:
                del self._pending[name]
            if reg.scale_ref is None:
                self._apply({reg: value})
            else:  # _apply takes raw values of these
                self._remember(reg.name, value)
                for path in reg.paths:
                    if path in self.store:
                        self.store.set(path, value)
            if rule is not None and rule.readback:
                for sb in self.schedule:  # the device's own answer on the next poll
                    if reg in sb.block.registers:
                        sb.next_due = 0.0
        await self.service_device(now)


class _Pacer:
    """``request_gap`` state of one unit address (shared by the drivers reading it)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.last_end = 0.0


_PACERS: weakref.WeakKeyDictionary[Any, dict[int, _Pacer]] = weakref.WeakKeyDictionary()


def _pacer(client: UnitClient) -> _Pacer:
    """The pacing state of the client's unit on its link (kept as long as the link lives)."""
    return _PACERS.setdefault(client.link, {}).setdefault(client.unit, _Pacer())


class _Missing:
    pass


_MISSING = _Missing()


def _str_or_none(value: Value) -> str | None:
    return None if value in (None, "") else str(value)
