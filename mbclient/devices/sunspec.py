"""SunSpec inverters and meters, over Modbus TCP and RS-485 alike.

SunSpec is its own device definition: a unit announces "SunS" at holding 40000 (else 50000,
else 0) followed by a chain of models, each ``ID, L`` and ``L`` registers of named points,
ending with ID 0xFFFF. Which points mbclient reads, their offsets, types, scale factors and
D-Bus paths are data (``sunspec_models/points.toml``); this module only walks the chain, splits it into
devices, turns the points of one device into ``Register`` rows at their absolute addresses,
applies the scale factors (value = raw x 10^SF) and drives the power limit (models 123/704).

Devices behind one address: every inverter (101-103, 111-113, 701) and meter (201-204,
211-214) model in the chain is a device of its own, numbered in chain order. A spec names
the n-th with ``<model>@<n>`` (``tcp:10.0.0.5:502:1:sunspec@2``); without an index it is
the first. The models 120/702 (rating), 123/704 (limit) and 160 (MPPT) belong to the
inverter before them. Each device's model 1 (the nearest one before it) gives
manufacturer, model, version and serial; a device sharing its model 1 with an earlier device
of the chain gets the serial ``<SN>_<n>`` (n counts the devices of that model 1), so every
device has its own service name and settings.

Vendor differences are named in the data file's ``[vendors]`` (matched on model 1's
manufacturer): the meter's sign of power, whether the limit's enable flag may be written
(SMA refuses cyclic writes: limiting only when it already reads enabled, and only the
percentage is written), and Fronius' null frames (zeros, or all 0xFFFF, while its data
source times out or the unit boots): such a read is dropped, values kept, for up to
``NULL_FRAME_PATIENCE`` seconds.
"""

from __future__ import annotations

import dataclasses
import math
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..control.limiter import PowerLimiter
from ..errors import ModbusError, ModbusExceptionResponse
from ..registers import (
    F32,
    F32LE,
    FAST,
    HOLDING,
    NORMAL,
    ONCE,
    S16,
    S32,
    SLOW,
    U16,
    U32,
    U32LE,
    U64,
    Block,
    DataType,
    Derived,
    Refresh,
    Register,
    Value,
    text,
)
from . import register_detector, register_model
from .base import METER_ROLES, Driver, Identity, Model

if TYPE_CHECKING:
    from ..transports.base import UnitClient

MARKER = (0x5375, 0x6E53)  # "SunS"
BASES = (40000, 50000, 0)
END_ID = 0xFFFF
MAX_MODELS = 64  # a chain longer than this is not a SunSpec chain
INVERTER_IDS = frozenset({101, 102, 103, 111, 112, 113, 701})
METER_IDS = frozenset({201, 202, 203, 204, 211, 212, 213, 214})
#: Our own product ids (see eastron.py for the range).
PRODUCT_SUNSPEC_INVERTER = 0xFE20
PRODUCT_SUNSPEC_METER = 0xFE21

#: Seconds a device may answer null frames before it counts as not answering.
NULL_FRAME_PATIENCE = 30.0
#: Revert timer written with every limit (s): the device drops the limit by itself if
#: mbclient stops renewing it. dbus-fronius uses 120 s and renews every 60 s.
REVERT_SECONDS = 120
REFRESH_SECONDS = 60.0

_REFRESH = {"fast": FAST, "normal": NORMAL, "slow": SLOW, "once": ONCE}

#: SolarEdge Enhanced Dynamic Power Control (holding; 32-bit values low word first), as
#: dbus-fronius' solaredge_limiter.cpp uses it: enable (u16), max active power (f32, W),
#: command timeout (u32, s), fallback limit (f32, %), ramp up/down (f32, %/min, -1 off),
#: dynamic active power limit (f32, %).
EDPC_ENABLE = 0xF300
EDPC_MAX_POWER = 0xF304
EDPC_TIMEOUT = 0xF310
EDPC_FALLBACK = 0xF312
EDPC_RAMP_UP = 0xF318
EDPC_RAMP_DOWN = 0xF31A
EDPC_LIMIT = 0xF322

#: SunSpec type -> (register type, raw values meaning "not implemented").
TYPES: dict[str, tuple[DataType, tuple[int | float, ...]]] = {
    "u16": (U16, (0xFFFF,)),
    "enum16": (U16, (0xFFFF,)),
    "count": (U16, (0xFFFF,)),
    "s16": (S16, (-0x8000,)),
    "sunssf": (S16, (-0x8000,)),
    "u32": (U32, (0xFFFFFFFF,)),
    "s32": (S32, (-0x80000000,)),
    "u64": (U64, (0xFFFFFFFFFFFFFFFF,)),
    "acc32": (U32, (0,)),
    "acc64": (U64, (0,)),
    "f32": (F32, ()),  # NaN is invalid for every float already
}


def _type(name: str) -> tuple[DataType, tuple[int | float, ...]]:
    if name.startswith("text"):
        return text(int(name[4:])), ()
    try:
        return TYPES[name]
    except KeyError:
        raise ValueError(f"unknown SunSpec type {name!r}") from None


# --- the data file ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    offset: int
    type: str
    sf: str | None = None
    path: str | None = None
    unit: str = ""
    precision: int | None = None
    refresh: Refresh = NORMAL
    factor: float = 1.0
    phase: int = 0
    cumulative: bool = False
    flow: bool = False
    asleep: Value = None
    internal: bool = False
    map: str | None = None

    @property
    def words(self) -> int:
        return _type(self.type)[0].words


@dataclass(frozen=True, slots=True)
class Layout:
    name: str
    ids: tuple[int, ...]
    kind: str  # "" (common), inverter, meter, rating, limit, mppt
    points: Mapping[str, Point]
    module_first: int = 0
    module_size: int = 0
    module_max: int = 0
    module_points: Mapping[str, Point] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Vendor:
    name: str
    match: str = ""
    meter_sign: int = 1
    limit_enable: str = "write"
    null_frame: bool = False
    own_limiter: str = ""  # "edpc": SolarEdge Enhanced Dynamic Power Control when no 123/704


@dataclass(frozen=True, slots=True)
class Definitions:
    layouts: Mapping[int, Layout]  # by model id
    maps: Mapping[str, Mapping[int, int]]
    vendors: tuple[Vendor, ...]  # default last

    def vendor(self, manufacturer: str | None) -> Vendor:
        mn = (manufacturer or "").strip().lower()
        for v in self.vendors:
            if v.match and mn.startswith(v.match.lower()):
                return v
        return self.vendors[-1]


def _point(name: str, raw: Mapping[str, Any]) -> Point:
    known = {f.name for f in dataclasses.fields(Point)} - {"name"}
    extra = set(raw) - known
    if extra:
        raise ValueError(f"point {name}: unknown keys {sorted(extra)}")
    kw = dict(raw)
    kw["refresh"] = _REFRESH[kw.get("refresh", "normal")]
    _type(kw["type"])
    return Point(name=name, **kw)


def load_definitions(data: Mapping[str, Any]) -> Definitions:
    """Build the definitions from the parsed TOML (ValueError names what is wrong)."""
    layouts: dict[int, Layout] = {}
    for lname, raw in data["layouts"].items():
        points = {n: _point(n, p) for n, p in raw.get("points", {}).items()}
        for p in points.values():
            if p.sf is not None and p.sf not in points:
                raise ValueError(f"{lname}.{p.name}: scale factor {p.sf} is not a point of the model")
        module = raw.get("module", {})
        mpoints = {n: _point(n, p) for n, p in module.get("points", {}).items()}
        for p in mpoints.values():
            if p.sf is not None and p.sf not in points:
                raise ValueError(f"{lname}.module.{p.name}: scale factor {p.sf} is not a point of the model")
        layout = Layout(lname, tuple(raw["ids"]), raw.get("kind", ""), points, module.get("first", 0),
                        module.get("size", 0), module.get("max", 0), mpoints)
        for mid in layout.ids:
            if mid in layouts:
                raise ValueError(f"model {mid} in two layouts")
            layouts[mid] = layout
    maps = {name: {int(k): int(v) for k, v in m.items()} for name, m in data.get("maps", {}).items()}
    for layout in layouts.values():
        for p in layout.points.values():
            if p.map is not None and p.map not in maps:
                raise ValueError(f"{layout.name}.{p.name}: unknown map {p.map}")
    vendors = [Vendor(name=n, **{k: v for k, v in raw.items()}) for n, raw in data.get("vendors", {}).items()
               if n != "default"]
    default = data.get("vendors", {}).get("default", {})
    vendors.append(Vendor(name="default", **default))
    return Definitions(layouts, maps, tuple(vendors))


def _load() -> Definitions:
    raw = resources.files(__package__).joinpath("sunspec_models", "points.toml").read_text(encoding="utf-8")
    return load_definitions(tomllib.loads(raw))


DEFS = _load()


# --- the chain ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainModel:
    """One model of the chain: its ID, the address of its ID register and its length L."""

    id: int
    address: int
    length: int


@dataclass(frozen=True, slots=True)
class ChainDevice:
    """One device of a chain: its inverter/meter model, the model 1 before it (if any),
    the models that belong to it and where it stands."""

    index: int  # 1-based, chain order
    main: ChainModel
    common: ChainModel | None
    extras: tuple[ChainModel, ...]
    sharing: int  # 1 for the first device of its model 1, 2 for the second ...

    @property
    def kind(self) -> str:
        return "inverter" if self.main.id in INVERTER_IDS else "meter"

    def extra(self, *ids: int) -> ChainModel | None:
        return next((m for m in self.extras if m.id in ids), None)


async def find_base(client: UnitClient, timeout: float) -> int | None:
    """The address of "SunS" (40000, 50000 or 0), None if the unit has none.

    Exception replies mean "not here"; a timeout propagates (the unit is silent)."""
    for base in BASES:
        try:
            regs = await client.read_holding(base, 2, timeout=timeout)
        except ModbusExceptionResponse:
            continue
        if tuple(regs) == MARKER:
            return base
    return None


async def walk_chain(client: UnitClient, base: int, timeout: float) -> list[ChainModel]:
    """Read every model header after the marker until the end model.

    Devices that end their chain otherwise are accepted as they are: an exception (SMA
    answers one instead of the end model), or a header of zeros (a chain that simply
    stops, SolarEdge units without end marker). Raises ModbusError on a silent unit."""
    chain: list[ChainModel] = []
    address = base + 2
    for _ in range(MAX_MODELS):
        if address + 2 > 0x10000:
            break
        try:
            mid, length = await client.read_holding(address, 2, timeout=timeout)
        except ModbusExceptionResponse as exc:
            if exc.code == 2 and chain:
                break
            raise
        if mid == END_ID or (mid == 0 and length == 0):
            break
        chain.append(ChainModel(mid, address, length))
        address += 2 + length
    return chain


def split_devices(chain: Sequence[ChainModel]) -> list[ChainDevice]:
    """The chain's inverters and meters with their model 1 and their extra models."""
    devices: list[dict[str, Any]] = []
    common: ChainModel | None = None
    sharing: dict[int | None, int] = {}
    pending: list[ChainModel] = []  # extras seen before any inverter
    for m in chain:
        if m.id == 1:
            common = m
        elif m.id in INVERTER_IDS or m.id in METER_IDS:
            key = common.address if common else None
            sharing[key] = sharing.get(key, 0) + 1
            dev = {"main": m, "common": common, "extras": [], "sharing": sharing[key]}
            if m.id in INVERTER_IDS:
                dev["extras"].extend(pending)
                pending = []
            devices.append(dev)
        elif m.id in DEFS.layouts:
            owner = next((d for d in reversed(devices) if d["main"].id in INVERTER_IDS), None)
            if owner is not None and devices[-1] is owner:
                owner["extras"].append(m)
            elif owner is None:
                pending.append(m)
    return [ChainDevice(i + 1, d["main"], d["common"], tuple(d["extras"]), d["sharing"])
            for i, d in enumerate(devices)]


async def discover(client: UnitClient, timeout: float) -> list[ChainDevice]:
    """Every inverter and meter behind this unit (empty: no SunSpec here)."""
    base = await find_base(client, timeout)
    if base is None:
        return []
    return split_devices(await walk_chain(client, base, timeout))


def phases_of(model_id: int, ac_type: int | None = None) -> int:
    """Phases from the model number (x01 one, x02 split = two, x03/x04 three); 701 from
    ACType (0 single, 1 split, 2 three)."""
    if model_id == 701:
        return {0: 1, 1: 2, 2: 3}.get(ac_type if ac_type is not None else 2, 3)
    return {1: 1, 2: 2, 3: 3, 4: 3}[model_id % 10]


# --- registers for one device -------------------------------------------------------------------


def _scaled(factor: float, sign: int) -> Callable[..., Value]:
    # Divide by exact powers of ten where the scale shrinks the value: 6123 x 10^-1 is
    # published as 612.3, not 612.3000000000001.
    divisor = round(1 / factor) if 0 < factor < 1 and abs(1 / factor - round(1 / factor)) < 1e-9 else None

    def fn(raw: float, sf: int | None = None) -> float:
        value = float(raw)
        if sf is not None:
            value = value / 10 ** -int(sf) if sf < 0 else value * 10 ** int(sf)
        value = value / divisor if divisor else value * factor
        return value * sign + 0.0  # no -0.0 on the bus

    return fn


def _phase_power(phases: int, n: int) -> Callable[..., Value]:
    """A phase's share of the total power, by its share of the current (a model without
    per-phase power; with no current the total is split evenly)."""

    def fn(total: float, *currents: float) -> float:
        amps = sum(abs(a) for a in currents)
        if amps <= 0:
            return total / phases
        return total * abs(currents[n - 1]) / amps

    return fn


@dataclass
class DeviceTable:
    """What one device polls and publishes (absolute addresses)."""

    registers: list[Register] = field(default_factory=list)
    derived: list[Derived] = field(default_factory=list)
    names: dict[tuple[int, str], str] = field(default_factory=dict)  # (model address, point) -> register name

    def value_name(self, model: ChainModel, point: str) -> str | None:
        return self.names.get((model.address, point))


def _register(model: ChainModel, point: Point, refresh: Refresh, address: int | None = None,
              suffix: str = "") -> Register:
    dtype, invalid = _type(point.type)
    return Register(f"{model.id}@{model.address}.{point.name}{suffix}", model.address + point.offset
                    if address is None else address, dtype, HOLDING, refresh=refresh, invalid=invalid)


def build_table(device: ChainDevice, phases: int, vendor: Vendor, trackers: int = 0) -> DeviceTable:
    """Registers and derived (scaled) values of ``device`` per the data file."""
    table = DeviceTable()
    models = [device.main, *device.extras]
    sign = vendor.meter_sign if device.kind == "meter" else 1
    for model in models:
        layout = DEFS.layouts[model.id]
        sf_regs: dict[tuple[str, Refresh], Register] = {}

        def sf_register(name: str, refresh: Refresh, model: ChainModel = model, layout: Layout = layout) -> str:
            key = (name, refresh)
            if key not in sf_regs:
                reg = _register(model, layout.points[name], refresh, suffix=f"#{refresh.name.lower()}")
                sf_regs[key] = reg
                table.registers.append(reg)
            return sf_regs[key].name

        def add(point: Point, address: int | None = None, path: str | None = None, key: str | None = None,
                model: ChainModel = model) -> None:
            if point.type == "sunssf":
                return
            if point.phase and point.phase > phases:
                return
            end = (address if address is not None else model.address + point.offset) + point.words
            if end > model.address + 2 + model.length or (
                    point.sf is not None and layout.points[point.sf].offset >= 2 + model.length):
                return  # beyond the model's length on this device (a shorter, older layout)
            reg = _register(model, point, point.refresh, address, suffix=f"[{key}]" if key else "")
            table.registers.append(reg)
            table.names[(model.address, key or point.name)] = reg.name
            path = path or point.path
            if point.internal or path is None:
                if point.sf is not None:  # the driver scales it: read its SF with it
                    table.names[(model.address, f"{key or point.name}.sf")] = sf_register(point.sf, point.refresh)
                return
            inputs = [reg.name]
            if point.sf is not None:
                inputs.append(sf_register(point.sf, point.refresh))
            if point.map is not None:
                mapping = DEFS.maps[point.map]
                table.derived.append(Derived(path, (reg.name,), lambda raw, m=mapping: m.get(int(raw)), kind=int))
                return
            table.derived.append(Derived(
                path, tuple(inputs), _scaled(point.factor, sign if point.flow else 1), unit=point.unit,
                precision=point.precision if point.precision is not None else (0 if point.unit == "W" else 1),
                cumulative=point.cumulative, asleep=point.asleep))

        for point in layout.points.values():
            add(point)
        for k in range(min(trackers, layout.module_max) if layout.module_points else 0):
            start = model.address + layout.module_first + layout.module_size * k
            for point in layout.module_points.values():
                add(point, start + point.offset, point.path.format(k=k) if point.path else None, f"{point.name}{k}")
    main_layout = DEFS.layouts[device.main.id]
    if device.kind == "inverter" and "WL1" not in main_layout.points:
        # 101-103 / 111-113: no per-phase power; 1 phase: the total, else by current share
        currents = tuple(f"/Ac/L{n}/Current" for n in range(1, phases + 1))
        for n in range(1, phases + 1):
            if phases == 1:
                table.derived.append(Derived("/Ac/L1/Power", ("/Ac/Power",), _scaled(1.0, 1), unit="W", precision=0,
                                             asleep=0.0))
            else:
                table.derived.append(Derived(f"/Ac/L{n}/Power", ("/Ac/Power", *currents), _phase_power(phases, n),
                                             unit="W", precision=0, asleep=0.0))
        if phases == 1:
            table.derived.append(Derived("/Ac/L1/Energy/Forward", ("/Ac/Energy/Forward",), _scaled(1.0, 1),
                                         unit="kWh", precision=2, cumulative=True))
    return table


# --- the driver ---------------------------------------------------------------------------------


class NullFrame(ModbusError):
    """The device answered nothing but placeholders for too long (Fronius null frames)."""


class NotInChain(ModbusError):
    """The unit answers, but its chain has no such device (no SunSpec, fewer devices than
    the spec's index, or another kind). A ModbusError: the runtime keeps probing with
    backoff (a data manager may list its devices only once they are awake)."""


class SunSpecDriver(Driver):
    """Walks the chain at identification, then runs the device it found like any table."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.device: ChainDevice | None = None
        self.vendor = DEFS.vendors[-1]
        self.table: DeviceTable | None = None
        self.phases = self.model.phases
        self.trackers = 0
        self._limit_model: ChainModel | None = None
        self._limit_sf: int | None = None
        self._limit_refreshed = -math.inf
        self._limit_written: int | None = None  # percent in force by our write (None: released)
        self._placeholders: set[str] = set()  # paths published before the chain was walked
        self._edpc = False  # SolarEdge's own limiter in use
        self._edpc_configured = False
        self._null_since: float | None = None
        self._null_logged = False
        self._last_good: dict[int, list[int]] = {}
        self.null_frames = 0
        self.limiter = None
        if self.model.name == SUNSPEC_INVERTER.name:
            self._make_limiter()

    def _make_limiter(self) -> None:
        if self.limiter is None:
            opts = self.options
            self.limiter = PowerLimiter(self._write_rate, wake=self.wakeup.set, max_power=opts.max_power,
                                        ess_timeout=opts.power_limit_timeout, min_interval=opts.limit_min_interval,
                                        deadband=opts.limit_deadband, name=self.model.name,
                                        read_rate=self._read_rate)

    # -- identification ------------------------------------------------------------------------
    async def read_identity(self) -> Identity:
        client, timeout = self.client, self.timeout
        devices = await discover(client, timeout)
        if not devices:
            raise NotInChain(f"unit {client.unit} has no SunSpec inverter or meter (no 'SunS' marker or no "
                             "inverter/meter model)")
        index = self.options.index
        if index > len(devices):
            raise NotInChain(f"unit {client.unit} holds {len(devices)} SunSpec device(s), not {index}")
        device = devices[index - 1]
        wanted = {SUNSPEC_INVERTER.name: "inverter", SUNSPEC_METER.name: "meter"}.get(self.model.name)
        if wanted is not None and device.kind != wanted:
            raise NotInChain(f"SunSpec device {index} of unit {client.unit} is a{'n' if device.kind[0] == 'i' else ''} "
                             f"{device.kind} (model {device.main.id}), not a{'n' if wanted[0] == 'i' else ''} {wanted}")
        common: dict[str, Value] = {}
        if device.common is not None:
            layout = DEFS.layouts[1]
            regs = [_register(device.common, p, ONCE) for p in layout.points.values()]
            start = device.common.address
            words = await client.read_holding(start, min(2 + device.common.length, 68), timeout=timeout)
            for reg in regs:
                off = reg.address - start
                if off + reg.words <= len(words):
                    common[reg.name.rsplit(".", 1)[1]] = reg.decode(words[off:off + reg.words])
        sn = common.get("SN")
        if not sn:
            raise ModbusError(f"SunSpec unit {client.unit}: model 1 gives no serial number")
        serial = str(sn) if device.sharing == 1 else f"{sn}_{device.sharing}"
        vendor = DEFS.vendor(str(common.get("Mn") or ""))
        ac_type = None
        if device.main.id == 701:
            ac_type = (await client.read_holding(device.main.address + 2, 1, timeout=timeout))[0]
        phases = phases_of(device.main.id, ac_type)
        trackers = 0
        mppt = device.extra(160)
        if mppt is not None:
            n = (await client.read_holding(mppt.address + DEFS.layouts[160].points["N"].offset, 1, timeout=timeout))[0]
            trackers = 0 if n == 0xFFFF else n
        self.devices_behind = len(devices)  # scans offer the others as <family>@<n>
        self._adopt(device, vendor, phases, trackers)
        if device.kind == "inverter":
            await self._read_limit_setup(client, timeout)
        product = " ".join(str(v) for v in (common.get("Mn"), common.get("Md")) if v)
        if device.sharing > 1:  # another device's model 1: its model name is not this device's
            kind = "energy meter" if device.kind == "meter" else "PV inverter"
            product = " ".join(str(v) for v in (common.get("Mn"), kind, f"(SunSpec {device.main.id})") if v)
        self.identity = Identity(
            serial=serial, firmware=str(common.get("Vr") or "") or None, product_name=product or None,
            extra={"sunspec_device": f"{index} of {len(devices)}", "sunspec_model": device.main.id,
                   "sunspec_address": device.main.address, "phases": phases, "trackers": trackers,
                   "vendor": vendor.name, "options": common.get("Opt")})
        return self.identity

    def _adopt(self, device: ChainDevice, vendor: Vendor, phases: int, trackers: int) -> None:
        """Become the concrete model of ``device`` (registers at their addresses)."""
        self.device, self.vendor, self.phases, self.trackers = device, vendor, phases, trackers
        self.table = build_table(device, phases, vendor, trackers)
        template = SUNSPEC_INVERTER if device.kind == "inverter" else SUNSPEC_METER
        model = dataclasses.replace(template, registers=tuple(self.table.registers),
                                    derived=tuple(self.table.derived), phases=phases)
        if self.model.name != model.name:
            self.role = model.check_role(self.options.role or model.default_role)
        self.model = model
        self._by_input = {}
        for d in model.derived:
            for name in d.inputs:
                self._by_input.setdefault(name, []).append(d)
        if device.kind == "inverter":
            self._make_limiter()
            self._limit_model = device.extra(123) or device.extra(704)  # 123 preferred, as dbus-fronius
        else:
            self.limiter = None
        if self._items_added:
            for path in self._placeholders - {d.name for d in model.derived}:
                self.store.remove(path)
            self._placeholders.clear()
            for d in model.derived:
                if d.name not in self.store:
                    self.store.add(d.name, self.values.get(d.name), unit=d.unit, precision=d.precision,
                                   kind=d.kind, formatter=d.formatter())
            self.extra_items()
        self.replan()

    async def _read_limit_setup(self, client: UnitClient, timeout: float) -> None:
        """Rated power (120/702), the limit model's scale factor and enable flag."""
        assert self.device is not None and self.limiter is not None
        rating = self.device.extra(120, 702)
        watts = None
        if rating is not None:
            layout = DEFS.layouts[rating.id]
            value = "WRtg" if rating.id == 120 else "WMaxRtg"
            p, sf = layout.points[value], layout.points[layout.points[value].sf]
            raw = await client.read_holding(rating.address + p.offset, 1, timeout=timeout)
            sfw = await client.read_holding(rating.address + sf.offset, 1, timeout=timeout)
            rv, sv = _type(p.type)[0].decode(raw), _type("sunssf")[0].decode(sfw)
            if rv != 0xFFFF and sv != -0x8000:
                watts = float(rv) * 10.0 ** sv
        self._set_max_power(watts)
        lm = self._limit_model
        if lm is None and self.vendor.own_limiter == "edpc":
            await self._edpc_setup_read(client, timeout)
            return
        if lm is None:
            self.limiter.disable("no SunSpec limit model (123 or 704)")
            return
        layout = DEFS.layouts[lm.id]
        sf = layout.points["WMaxLimPct_SF"]
        sfv = S16.decode(await client.read_holding(lm.address + sf.offset, 1, timeout=timeout))
        self._limit_sf = 0 if sfv == -0x8000 else int(sfv)
        ena_point = layout.points["WMaxLim_Ena" if lm.id == 123 else "WMaxLimPctEna"]
        ena = (await client.read_holding(lm.address + ena_point.offset, 1, timeout=timeout))[0]
        if self.vendor.limit_enable == "preset" and ena != 1:
            self.limiter.disable(f"the limit's enable flag reads {ena} and this {self.vendor.name} device refuses "
                                 "writing it: enable active power limitation on the inverter")
        elif not self.limiter.max_power:
            self.limiter.disable("rated power unknown (no model 120/702): set the max_power option")
        else:
            # A limit with a revert timer lives in the inverter's working memory (SunSpec
            # 123/704 as Fronius and the 700-series use it): reductions need no spacing.
            # SMA-like devices (enable flag preset) are treated as keeping what they get.
            self.limiter.enable(volatile=self.vendor.limit_enable == "write")

    async def _edpc_setup_read(self, client: UnitClient, timeout: float) -> None:
        """SolarEdge without 123/704: its own limiter. The rating comes from its max active
        power register when no model 120 gave one. Nothing is written until a limit is
        asked for (then the EDPC settings once per connection, see ``_edpc_configure``)."""
        assert self.limiter is not None
        try:
            rating = F32LE.decode(await client.read_holding(EDPC_MAX_POWER, 2, timeout=timeout))
        except ModbusExceptionResponse:
            self.limiter.disable("no SunSpec limit model and no SolarEdge power control registers "
                                 "(firmware too old?)")
            return
        if not self.limiter.max_power and math.isfinite(rating) and rating > 0:
            self._set_max_power(float(rating))
        self._edpc = True
        self._edpc_configured = False
        if not self.limiter.max_power:
            self.limiter.disable("rated power unknown: set the max_power option")
        else:
            self.limiter.enable(volatile=True)  # the dynamic limit times out by itself

    async def _edpc_configure(self) -> None:
        """Once per connection before the first limit: ramps off, fall back to 100 % after
        the command timeout (REVERT_SECONDS) without a new limit, EDPC on."""
        t, c = self.timeout, self.client
        for address, words in ((EDPC_RAMP_UP, F32LE.encode(-1.0)), (EDPC_RAMP_DOWN, F32LE.encode(-1.0)),
                               (EDPC_FALLBACK, F32LE.encode(100.0)), (EDPC_TIMEOUT, U32LE.encode(REVERT_SECONDS)),
                               (EDPC_ENABLE, [1])):
            await c.write_registers(address, words, timeout=t, priority=True)
        self._edpc_configured = True
        self.log.info("%s: SolarEdge power control configured (timeout %d s, fallback 100 %%)", self.model.name,
                      REVERT_SECONDS)

    def _set_max_power(self, watts: float | None) -> None:
        watts = self.options.max_power or (watts if watts and watts > 0 else None)
        if watts is None or self.limiter is None:
            return
        self.limiter.set_max_power(watts)
        if "/Ac/MaxPower" in self.store:
            self.store.set("/Ac/MaxPower", float(watts))

    # -- items ---------------------------------------------------------------------------------------
    def extra_items(self) -> None:
        store = self.store
        if self.model.is_meter or self.model.name == SUNSPEC.name:
            if "/NrOfPhases" in store:
                store.set("/NrOfPhases", self.phases)
            return
        if "/NrOfPhases" not in store:
            store.add("/NrOfPhases", self.phases, kind=int)
        else:
            store.set("/NrOfPhases", self.phases)
        if "/Ac/MaxPower" not in store and self.limiter is not None:
            store.add("/Ac/MaxPower", self.limiter.max_power, unit="W", precision=0, kind=float,
                      formatter=lambda v: f"{v:.0f} W")
            self.limiter.add_items(store)
        if "/Internal/NullFrames" not in store:
            store.add("/Internal/NullFrames", self.null_frames, kind=int)

    def add_items(self) -> None:
        super().add_items()
        if self.model.is_meter and "/NrOfPhases" in self.store:
            self.store.set("/NrOfPhases", self.phases)
        if self.device is None:
            # Published from memory before the unit answered (a sleeping inverter or data
            # manager at boot): the usual paths of its kind, invalid, so consumers that scan
            # a service once find them; the chain walk then drops what the device lacks.
            for path, unit in _placeholder_paths(self.model.is_meter):
                if path not in self.store:
                    self.store.add(path, None, unit=unit, precision=0 if unit == "W" else 2, kind=float)
                    self._placeholders.add(path)

    # -- values ----------------------------------------------------------------------------------------
    def _scaled_value(self, model: ChainModel, point: str) -> float | None:
        table = self.table
        if table is None:
            return None
        name = table.value_name(model, point)
        raw = self.values.get(name) if name else None
        if raw is None:
            return None
        sf_name = table.value_name(model, f"{point}.sf")
        if sf_name is None:
            return float(raw)
        sf = self.values.get(sf_name)
        return None if sf is None else float(raw) * 10.0 ** int(sf)

    def on_values(self, changed: Mapping[str, Value]) -> None:
        if self.limiter is None or self._limit_model is None or self.table is None:
            return
        lm = self._limit_model
        names = {self.table.value_name(lm, p) for p in ("WMaxLimPct", "WMaxLim_Ena", "WMaxLimPctEna")}
        if not names & set(changed):
            return
        pct = self._scaled_value(lm, "WMaxLimPct")
        ena_name = self.table.value_name(lm, "WMaxLim_Ena" if lm.id == 123 else "WMaxLimPctEna")
        ena = self.values.get(ena_name) if ena_name else None
        if pct is None or ena is None:
            return
        effective = round(pct) if ena == 1 else 100
        self.limiter.sync(int(min(effective, 100)))
        self.limiter.on_readback(float(min(effective, 100)), None)

    def offline_hook(self) -> None:
        if self.limiter is not None:
            self.limiter.forget()
            self.limiter.applied_watts = None
        self._limit_written = None
        self._edpc_configured = False  # configured again after a reconnection
        # _null_since stays: a unit that keeps answering null frames stays offline
        self._last_good.clear()

    # -- null frames ---------------------------------------------------------------------------------
    async def _read_block(self, block: Block) -> list[int]:
        regs = await super()._read_block(block)
        if not self.vendor.null_frame or self.device is None or self.device.kind != "inverter":
            return regs
        main = self.device.main
        lo, hi = main.address + 2, main.address + 2 + main.length
        start, end = max(lo, block.address), min(hi, block.end)
        if start >= end:
            return regs
        part = regs[start - block.address:end - block.address]
        if not _is_null_frame(part, self._status_offset(), start - lo):
            self._null_since = None
            self._last_good[block.address] = regs
            return regs
        now = time.monotonic()
        self.null_frames += 1
        if "/Internal/NullFrames" in self.store:
            self.store.set("/Internal/NullFrames", self.null_frames)
        if self._null_since is None:
            self._null_since = now
        if not self._null_logged:
            self.log.info("%s: null frame at %s (placeholder data): keeping the last values", self.model.name, block)
            self._null_logged = True
        good = self._last_good.get(block.address)
        if now - self._null_since >= NULL_FRAME_PATIENCE:
            raise NullFrame(f"null frames for {now - self._null_since:.0f} s")
        if good is None:  # nothing to keep: the values stay invalid until a real frame
            return _invalid_frame(block)
        return good

    def _status_offset(self) -> int | None:
        layout = DEFS.layouts[self.device.main.id] if self.device else None
        if layout is None:
            return None
        p = layout.points.get("St") or layout.points.get("InvSt")
        return None if p is None else p.offset - 2

    # -- limiting --------------------------------------------------------------------------------------
    def _raw_percent(self, percent: int) -> int:
        sf = self._limit_sf or 0
        return max(0, min(0xFFFF, round(percent / 10.0 ** sf)))

    async def _write_rate(self, percent: int) -> None:
        lm = self._limit_model
        if lm is None and self._edpc:
            if not self._edpc_configured:
                await self._edpc_configure()
            await self.client.write_registers(EDPC_LIMIT, F32LE.encode(float(min(percent, 100))),
                                              timeout=self.timeout, priority=True)
            self._limit_written = None if percent >= 100 else percent
            self._limit_refreshed = time.monotonic()
            return
        if lm is None:
            raise ModbusError("no limit model")
        raw = self._raw_percent(percent)
        release = percent >= 100
        preset = self.vendor.limit_enable == "preset"
        t = self.timeout
        if lm.id == 123:
            if preset:
                await self.client.write_register(lm.address + 5, raw, timeout=t, priority=True)
            elif release:
                await self.client.write_register(lm.address + 9, 0, timeout=t, priority=True)
            else:  # WMaxLimPct, WinTms 0, RvrtTms, RmpTms 0, WMaxLim_Ena 1 in one write
                await self.client.write_registers(lm.address + 5, [raw, 0, REVERT_SECONDS, 0, 1], timeout=t,
                                                  priority=True)
        else:
            if preset:
                await self.client.write_register(lm.address + 15, raw, timeout=t, priority=True)
            elif release:
                await self.client.write_register(lm.address + 14, 0, timeout=t, priority=True)
            else:  # Ena 1, WMaxLimPct, revert to 100 % and disabled after RvrtTms (u32)
                await self.client.write_registers(
                    lm.address + 14, [1, raw, self._raw_percent(100), 0, REVERT_SECONDS >> 16,
                                      REVERT_SECONDS & 0xFFFF], timeout=t, priority=True)
        self._limit_written = None if release else percent
        self._limit_refreshed = time.monotonic()

    def writes_deadline(self, now: float) -> float:
        own = math.inf
        if self.limiter is not None:
            own = self.limiter.deadline(now)
            if self._limit_written is not None and self.vendor.limit_enable != "preset":
                own = min(own, self._limit_refreshed + REFRESH_SECONDS)
        return min(super().writes_deadline(now), own)

    async def service_device(self, now: float) -> None:
        if self.limiter is None:
            return
        if await self.limiter.service(now):
            return  # the limiter read the write back (``_read_rate``)
        pct = self._limit_written
        if (pct is not None and self.vendor.limit_enable != "preset"
                and time.monotonic() - self._limit_refreshed >= REFRESH_SECONDS):
            # The device drops the limit after REVERT_SECONDS unless it is renewed: the
            # limit in force is written again (same value) well before that.
            await self._write_rate(pct)
            self.log.debug("%s: renewed the %d%% limit before its revert timer", self.model.name, pct)

    async def _read_rate(self) -> int:
        """The limit in force as read back (percent; 100 when the enable flag is off), for
        the limiter after every write. The read also refreshes the published read-backs."""
        lm = self._limit_model
        if lm is None and self._edpc:
            enabled, _ = await self.client.read(int(HOLDING), EDPC_ENABLE, 2, timeout=self.timeout, priority=True)
            pct = F32LE.decode(await self.client.read(int(HOLDING), EDPC_LIMIT, 2, timeout=self.timeout,
                                                      priority=True))
            if enabled != 1 or not math.isfinite(pct):
                return 100
            return int(min(round(pct), 100))
        if lm is None or self.table is None:
            raise ModbusError("no limit model")
        layout = DEFS.layouts[lm.id]
        first = min(p.offset for p in layout.points.values())
        last = max(p.offset + p.words for p in layout.points.values())
        regs = await self.client.read(int(HOLDING), lm.address + first, last - first, timeout=self.timeout,
                                      priority=True)
        decoded: dict[Register, Value] = {}
        for reg in self.model.registers:
            if lm.address + first <= reg.address and reg.end <= lm.address + last:
                off = reg.address - lm.address - first
                decoded[reg] = reg.decode(regs[off:off + reg.words])
        self._apply(decoded)
        self.store.flush()
        pct = self._scaled_value(lm, "WMaxLimPct")
        ena_name = self.table.value_name(lm, "WMaxLim_Ena" if lm.id == 123 else "WMaxLimPctEna")
        ena = self.values.get(ena_name) if ena_name else None
        if pct is None or ena != 1:
            return 100
        return int(min(round(pct), 100))

    async def release(self) -> None:
        """On stop: give the inverter its full power back (the revert timer would too)."""
        if self.limiter is None or (self._limit_model is None and not self._edpc) or not self.limiter.enabled:
            return
        if self._limit_written is None:
            return
        await self._write_rate(100)
        self.log.info("%s: power limit released on stop", self.model.name)


def _placeholder_paths(meter: bool) -> list[tuple[str, str]]:
    """The paths a three-phase SunSpec meter or inverter of this kind usually publishes."""
    paths = [("/Ac/Power", "W"), ("/Ac/Current", "A"), ("/Ac/Frequency", "Hz"), ("/Ac/Energy/Forward", "kWh")]
    per_phase = [("Voltage", "V"), ("Current", "A"), ("Power", "W")]
    if meter:
        paths.append(("/Ac/Energy/Reverse", "kWh"))
        per_phase += [("Energy/Forward", "kWh"), ("Energy/Reverse", "kWh")]
    paths += [(f"/Ac/L{n}/{name}", unit) for n in (1, 2, 3) for name, unit in per_phase]
    return paths


def _is_null_frame(words: Sequence[int], status_offset: int | None, first_offset: int) -> bool:
    """All data words zero (the status may read fault) or all 0xFFFF."""
    if len(words) < 4:
        return False
    st = None if status_offset is None else status_offset - first_offset
    rest = [w for i, w in enumerate(words) if i != st]
    if all(w == 0xFFFF for w in words):
        return True
    return all(w == 0 for w in rest) and (st is None or not 0 <= st < len(words) or words[st] in (0, 7))


def _invalid_frame(block: Block) -> list[int]:
    """A frame that decodes to "not implemented" everywhere (nothing published)."""
    out = [0] * block.count
    for reg in block.registers:
        off = reg.address - block.address
        sentinel = next(iter(reg.invalid), None)
        if sentinel is None:
            words = [0x7FC0, 0] if reg.type.is_float else [0] * reg.words
        else:
            words = reg.type.encode(sentinel)
        out[off:off + reg.words] = words
    return out


# --- models and detection ----------------------------------------------------------------------

_COMMON = dict(
    manufacturer="SunSpec", vendor="sunspec", registers=(),
    identity=(Register("marker", 40000, U32, HOLDING),),  # any reply proves the unit awake
    driver=SunSpecDriver, max_devices=32, family="sunspec",
    # Where scans look: inverters answer at unit 1 (Fronius, SolarEdge; 2 for a second one),
    # SMA's SunSpec profile at 126, Fronius Smart Meters at 240 (data manager) / 200 (GEN24).
    # RS-485 SunSpec devices mostly run 9600 or 19200 Bd. (SolarEdge's factory TCP port is
    # 1502, not scanned: give it in the spec.)
    transports=("tcp", "rtu", "rtuovertcp"), default_units=(1, 2, 126, 200, 240),
    rates=(9600, 19200), tcp_port=502, min_timeout=0.3, initial_timeout=1.0,
)

SUNSPEC_INVERTER = register_model(Model(
    name="sunspec_inverter", product_name="SunSpec PV inverter", product_id=PRODUCT_SUNSPEC_INVERTER,
    default_role="pvinverter", allowed_roles=("pvinverter",), device_instance=20, phases=3, is_meter=False,
    detect="'SunS' at holding 40000/50000/0, model 1 and an inverter model (101-103, 111-113, 701)",
    **_COMMON))
SUNSPEC_METER = register_model(Model(
    name="sunspec_meter", product_name="SunSpec energy meter", product_id=PRODUCT_SUNSPEC_METER,
    default_role="grid", allowed_roles=METER_ROLES, device_instance=30, phases=3, is_meter=True,
    detect="'SunS' at holding 40000/50000/0, model 1 and a meter model (201-204, 211-214)",
    **_COMMON))
#: The family name a spec uses when it does not care which: resolved at identification.
SUNSPEC = register_model(Model(
    name="sunspec", product_name="SunSpec device", product_id=PRODUCT_SUNSPEC_INVERTER,
    default_role="pvinverter", allowed_roles=("pvinverter", *[r for r in METER_ROLES if r != "pvinverter"]),
    device_instance=20, phases=3, is_meter=False,
    detect="'SunS' at holding 40000/50000/0; the n-th inverter or meter of the chain (spec sunspec@n)",
    **{**_COMMON, "family": ""}))


async def detect(client: UnitClient, timeout: float) -> Model | None:
    """A unit with the SunSpec marker and at least one inverter or meter model."""
    devices = await discover(client, timeout)
    if not devices:
        return None
    return SUNSPEC_INVERTER if devices[0].kind == "inverter" else SUNSPEC_METER


register_detector("sunspec", detect, order=50)

__all__ = ["DEFS", "SUNSPEC", "SUNSPEC_INVERTER", "SUNSPEC_METER", "SunSpecDriver", "build_table", "detect",
           "discover", "load_definitions", "split_devices", "walk_chain"]
