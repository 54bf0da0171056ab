"""Growatt MIN TL-X single-phase PV inverter, published as ``com.victronenergy.pvinverter``.

Register facts: registers.md section 1 (legacy input block 0-124, holding 0-124, 209-223,
3000). What is special here, beyond the table:

* ``/Ac/MaxPower`` is a number in W: the ``max_power`` option, else holding 6-7 (0.1 VA).
* ``/Ac/PowerLimit`` is owned by a ``PowerLimiter`` writing holding 3 (active power rate,
  %); the applied limit is read back from input 101-103. Holding 2 (do commands to 3/4/5
  survive a restart?) is read with the identity: 1 disables limiting (no streaming of
  writes into the inverter's non-volatile memory); 0 enables it.
* G100 export-limit registers (42, 122, 123, 3000) are written only when configured in
  ``DeviceOptions.g100`` and only when the read-back differs.
* PV strings are published under the fork's ``/Internal/Pv/<n>/...`` (0-based like the
  fork and Victron's ``/Pv/<n>``), as many as holding 44 reports trackers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..control.limiter import PowerLimiter
from ..errors import ModbusError, ModbusExceptionResponse
from ..registers import (
    FAST,
    HOLDING,
    INPUT,
    NORMAL,
    ONCE,
    S16,
    SLOW,
    U16,
    U32,
    BlockRules,
    Register,
    Value,
    text,
)
from . import register_detector, register_model
from .base import Driver, Identity, Model

if TYPE_CHECKING:
    from ..transports.base import UnitClient

PRODUCT_GROWATT_MIN = 0xFE10  # mbclient's own range, see eastron.py

#: Keep each read inside one 125-register range and at most 100 registers (v1.20-era
#: firmware limit reported by the Home Assistant integration).
RULES = BlockRules(max_count=100, window=125)

#: Growatt run state (input 0) -> Victron /StatusCode: 0 waiting -> 8 standby,
#: 1 normal -> 7 running, 3 fault -> 10 error; anything else is left invalid.
STATUS_MAP = {0: 8, 1: 7, 3: 10}
STATUS_TEXT = {7: "Running", 8: "Standby", 10: "Error"}
#: Derating mode, legacy input 104 (registers.md 1.4; 2 and 8 have no documented name).
DERATE_TEXT = {0: "None", 1: "PV", 3: "Vac", 4: "Fac", 5: "Tboost", 6: "Tinv", 7: "Control",
               9: "Over-back-by-time"}
NO_LIMIT = 255
MAX_TRACKERS = 8


def _in(address: int, name: str, type_=U16, scale: float = 10, unit: str = "", precision: int = 1,
        refresh=NORMAL, **kw) -> Register:  # noqa: ANN001
    return Register(name, address, type_, INPUT, scale=scale, unit=unit, precision=precision, refresh=refresh, **kw)


def pv_string(n: int) -> list[Register]:
    """String ``n`` (0-based): V, I, P (input 3+4n ...) and energies (59+4n ...)."""
    b, e = 3 + 4 * n, 59 + 4 * n
    p = f"/Internal/Pv/{n}"
    return [
        _in(b, f"{p}/V", unit="V", asleep=0.0),
        _in(b + 1, f"{p}/I", unit="A", asleep=0.0),
        _in(b + 2, f"{p}/P", U32, unit="W", asleep=0.0),
        _in(e, f"{p}/Energy/Today", U32, unit="kWh", refresh=SLOW, cumulative=True),
        _in(e + 2, f"{p}/Energy/Total", U32, unit="kWh", refresh=SLOW, cumulative=True),
    ]


REGISTERS: tuple[Register, ...] = (
    # -- live AC values (input 35-39), what ESS and the controller close their loops on
    _in(35, "/Ac/Power", U32, unit="W", refresh=FAST, also=("/Ac/L1/Power",), asleep=0.0),
    _in(37, "/Ac/Frequency", scale=100, unit="Hz", precision=2, refresh=FAST),
    _in(38, "/Ac/L1/Voltage", unit="V", refresh=FAST),
    _in(39, "/Ac/L1/Current", unit="A", refresh=FAST, asleep=0.0),
    # -- state
    Register("/StatusCode", 0, U16, INPUT, values=STATUS_MAP, text=STATUS_TEXT, refresh=NORMAL, asleep=8),
    _in(104, "/Internal/DerateMode", scale=1, precision=0, text=DERATE_TEXT),
    _in(105, "/ErrorCode", scale=1, precision=0),
    # -- applied limit read-back: percent (101) and watts (102-103)
    _in(101, "limit_percent", scale=1),
    _in(102, "limit_watts", U32, unit="W"),
    # -- energy (lifetime 55-56, NOT today's 53-54)
    _in(55, "/Ac/Energy/Forward", U32, unit="kWh", refresh=SLOW, cumulative=True, also=("/Ac/L1/Energy/Forward",)),
    # -- temperatures (the fork's paths); signed so a frosty morning is not 6553 degC
    _in(93, "/Internal/InverterTemp", S16, unit="°C", refresh=SLOW),
    _in(94, "/Internal/IPMTemp", S16, unit="°C", refresh=SLOW),
    _in(95, "/Internal/BoostTemp", S16, unit="°C", refresh=SLOW),
    # -- holding read-backs (the fork's paths): the rate register and the G100 settings
    Register("/Internal/activePowerRate", 3, U16, HOLDING, refresh=SLOW, text={NO_LIMIT: "no limit"}),
    Register("/Internal/g100FailSafe", 42, U16, HOLDING, refresh=SLOW),
    Register("/Internal/exportLimitType", 122, U16, HOLDING, refresh=SLOW,
             text={0: "Disabled", 1: "RS485 meter", 2: "RS232 meter", 3: "CT"}),
    Register("/Internal/ExportLimitPowerRate", 123, S16, HOLDING, scale=10, unit="%", precision=1, refresh=SLOW),
    Register("/Internal/g100FailSafePowerRate", 3000, U16, HOLDING, scale=10, unit="%", precision=1,
             refresh=SLOW, optional=True),
    # -- rating, once per connection (the driver publishes /Ac/MaxPower from it or the option)
    Register("pmax", 6, U32, HOLDING, scale=10, refresh=ONCE),
    *(r for n in range(MAX_TRACKERS) for r in pv_string(n)),
)

IDENTITY: tuple[Register, ...] = (
    Register("persist", 2, U16, HOLDING),
    Register("pmax", 6, U32, HOLDING, scale=10),
    Register("fw", 9, text(3), HOLDING),
    Register("control_fw", 12, text(3), HOLDING),
    Register("serial_old", 23, text(5), HOLDING),
    Register("dtc", 43, U16, HOLDING),
    Register("trackers_phases", 44, U16, HOLDING),
    Register("serial_new", 209, text(15), HOLDING, optional=True),
)

#: Device type codes at holding 43 known to be Growatt PV inverters (registers.md 1.6):
#: the newer families, and the older table's high bytes (low byte 0).
NEW_FAMILIES = frozenset({5100, 5200, 5400})
OLD_FAMILIES = frozenset({0x01, 0x02, 0x07, 0x08})  # 1/2-MPPT single/three-phase TL


class GrowattDriver(Driver):
    """The table plus the power limiter, G100 configuration and the tracker count."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002,ANN003
        super().__init__(*args, **kwargs)
        opts = self.options
        self.trackers = 2
        self.limiter = PowerLimiter(
            self._write_rate,
            wake=self.wakeup.set,
            max_power=opts.max_power,
            ess_timeout=opts.power_limit_timeout,
            min_interval=opts.limit_min_interval,
            deadband=opts.limit_deadband,
            name=self.model.name,
        )
        self._g100_checked = False

    # -- identity --------------------------------------------------------------------------------
    def make_identity(self, values: Mapping[str, Value]) -> Identity:
        serial = values.get("serial_new") or values.get("serial_old")
        if not serial:
            raise ModbusError(f"{self.model.name}: no serial number in holding 209-223 or 23-27")
        tp = values.get("trackers_phases")
        if isinstance(tp, int) and 1 <= tp >> 8 <= MAX_TRACKERS and tp >> 8 != self.trackers:
            self.trackers = tp >> 8
            self.replan()  # the real number of strings
        fw = "/".join(str(v) for v in (values.get("fw"), values.get("control_fw")) if v)
        persist = values.get("persist")
        if persist == 1:
            self.limiter.disable("holding 2 = 1: the inverter keeps power-rate commands in memory; "
                                 "refusing to stream limits into it")
        elif persist == 0:
            self.limiter.enable()
        self._set_max_power(values.get("pmax"))
        return Identity(
            serial=str(serial),
            firmware=fw or None,
            extra={"dtc": values.get("dtc"), "trackers": self.trackers,
                   "phases": (tp & 0xFF) if isinstance(tp, int) else None, "persist": persist},
        )

    def registers(self) -> Sequence[Register]:
        keep = tuple(f"/Internal/Pv/{n}/" for n in range(self.trackers))
        return tuple(r for r in self.model.registers
                     if not r.name.startswith("/Internal/Pv/") or r.name.startswith(keep))

    # -- items ------------------------------------------------------------------------------------
    def extra_items(self) -> None:
        store = self.store
        store.add("/Ac/MaxPower", self.limiter.max_power, unit="W", precision=0, kind=float,
                  formatter=lambda v: f"{v:.0f} W")
        store.add("/NrOfPhases", 1, kind=int)
        self.limiter.add_items(store)

    def _set_max_power(self, rated: Value) -> None:
        watts = self.options.max_power or (float(rated) if isinstance(rated, (int, float)) and rated > 0 else None)
        if watts is None:
            return
        self.limiter.set_max_power(watts)
        if "/Ac/MaxPower" in self.store:
            self.store.set("/Ac/MaxPower", float(watts))

    def on_values(self, changed: Mapping[str, Value]) -> None:
        if "pmax" in changed:
            self._set_max_power(changed["pmax"])
        if "limit_percent" in changed or "limit_watts" in changed:
            self.limiter.on_readback(self.values.get("limit_percent"), self.values.get("limit_watts"))
        if "/Internal/activePowerRate" in changed:
            rate = changed["/Internal/activePowerRate"]
            self.limiter.sync(rate if isinstance(rate, int) else None)

    def offline_hook(self) -> None:
        self.limiter.forget()
        self._g100_checked = False
        # The limit the inverter applies is unknown while it sleeps; /Ac/PowerLimit (a set
        # point, not a measurement) keeps its value, the read-back is forgotten.
        self.limiter.applied_watts = None

    # -- writes -----------------------------------------------------------------------------------
    async def _write_rate(self, percent: int) -> None:
        await self.client.write_register(3, percent, timeout=self.timeout, priority=True)

    def writes_deadline(self, now: float) -> float:
        own = self.limiter.deadline(now)
        if self.options.g100 is not None and not self._g100_checked:
            own = now
        return min(super().writes_deadline(now), own)

    async def service_device(self, now: float) -> None:
        if self.options.g100 is not None and not self._g100_checked:
            await self._apply_g100()
        await self.limiter.service(now)

    async def _apply_g100(self) -> None:
        """Write each configured G100 register only if the inverter holds another value."""
        g = self.options.g100
        assert g is not None
        wanted = ((42, g.failsafe), (122, g.export_limit_mode), (123, g.export_limit_rate),
                  (3000, g.failsafe_power_rate))
        for address, value in wanted:
            if value is None:
                continue
            raw = int(value) & 0xFFFF
            try:
                current = (await self.client.read_holding(address, 1, timeout=self.timeout))[0]
            except ModbusExceptionResponse as exc:
                if exc.code != 2:
                    raise
                self.log.warning("%s: holding %d does not exist on this unit; G100 setting not applied",
                                 self.model.name, address)
                continue
            if current == raw:
                continue
            await self.client.write_register(address, raw, timeout=self.timeout)
            self.log.info("%s: holding %d %d -> %d (configured G100 setting)", self.model.name, address,
                          _s16(current), _s16(raw))
        self._g100_checked = True


def _s16(raw: int) -> int:
    return raw - 0x10000 if raw & 0x8000 else raw


GROWATT_MIN = register_model(Model(
    name="growatt_min",
    product_name="Growatt MIN TL-X",
    product_id=PRODUCT_GROWATT_MIN,
    vendor="growatt",
    manufacturer="Growatt",
    registers=REGISTERS,
    default_role="pvinverter",
    allowed_roles=("pvinverter",),
    device_instance=20,
    phases=1,
    rules=RULES,
    identity=IDENTITY,
    detect="device type code at holding 43 (5100/5200/5400 or an older TL family) with 1-8 trackers, 1 phase at 44",
    driver=GrowattDriver,
    min_timeout=0.5,
    initial_timeout=1.0,
    is_meter=False,
))


def plausible_dtc(dtc: int) -> bool:
    return dtc in NEW_FAMILIES or (dtc & 0xFF == 0 and dtc >> 8 in OLD_FAMILIES)


async def detect(client: UnitClient, timeout: float) -> Model | None:
    """Holding 43 (device type code) and 44 (trackers << 8 | phases) must both look like a
    single-phase Growatt PV inverter; Eastron meters answer exception 2 here."""
    dtc, tp = await client.read_holding(43, 2, timeout=timeout)
    trackers, phases = tp >> 8, tp & 0xFF
    if plausible_dtc(dtc) and 1 <= trackers <= MAX_TRACKERS and phases == 1:
        return GROWATT_MIN
    return None


register_detector("growatt", detect, order=20)

__all__ = ["GROWATT_MIN", "GrowattDriver", "STATUS_MAP", "detect"]
