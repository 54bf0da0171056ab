"""Growatt MIN/MIC TL-X and MOD TL3-X PV inverters: the code beside ``growatt.toml``.

Register facts: registers.md section 1 (legacy input block 0-124, holding 0-124, 209-223,
3000); the table and the identification are in the file. What is special here:

* ``/Ac/MaxPower`` is a number in W: the ``max_power`` option, else holding 6-7 (0.1 VA).
* ``/Ac/PowerLimit`` is owned by a ``PowerLimiter`` writing holding 3 (active power rate,
  %); the applied limit is read back from input 101-103. Holding 2 (do commands to 3/4/5
  survive a restart?) is read with the identity: 1 disables limiting (no streaming of
  writes into the inverter's non-volatile memory); 0 enables it, with limits marked
  volatile (a reduction during export is not held back by the write interval). Every
  write of holding 3 is read back on the priority lane.
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
from ..modbus.pdu import READ_HOLDING
from ..registers import Register, Value
from .base import Driver, Identity
from .definition import register_driver

if TYPE_CHECKING:
    from ..transports.base import UnitClient
    from .base import Model

NO_LIMIT = 255
MAX_TRACKERS = 8


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
            read_rate=self._read_rate,
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
            self.limiter.enable(volatile=True)  # forgotten at restart: a limit wears nothing
        self._set_max_power(values.get("pmax"))
        return Identity(
            serial=str(serial),
            firmware=fw or None,
            extra={"dtc": values.get("dtc"), "trackers": self.trackers,
                   "phases": (tp & 0xFF) if isinstance(tp, int) else None, "persist": persist},
        )

    def registers(self) -> Sequence[Register]:
        keep = tuple(f"/Internal/Pv/{n}/" for n in range(self.trackers))
        return tuple(r for r in super().registers()  # the variant's rows (one or three phases)
                     if not r.name.startswith("/Internal/Pv/") or r.name.startswith(keep))

    # -- items ------------------------------------------------------------------------------------
    def extra_items(self) -> None:
        store = self.store
        store.add("/Ac/MaxPower", self.limiter.max_power, unit="W", precision=0, kind=float,
                  formatter=lambda v: f"{v:.0f} W")
        store.add("/NrOfPhases", self.nr_of_phases, kind=int)
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

    async def _read_rate(self) -> int:
        """Holding 3 as the inverter holds it now (the read-back of every limit write)."""
        return (await self.client.read(READ_HOLDING, 3, 1, timeout=self.timeout, priority=True))[0]

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


async def detect(client: UnitClient, timeout: float) -> Model | None:
    """The Growatt family's detector (growatt.toml's identification)."""
    from . import family

    return await family("growatt").detect(client, timeout)


register_driver("growatt", GrowattDriver)

__all__ = ["GrowattDriver", "detect"]
