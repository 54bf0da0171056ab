"""Victron energy meters VM-3P75CT and VM-3P5A (Modbus UDP, unit 1), with VregLink.

Register facts: Victron's published dbus-modbus-client (``victron_em.py``, read at v1.83),
the only public source found for this map; a register list document from Victron was not
found in the reference corpus, so every row below is "[src]" from that code, none checked
against a meter. All registers are holding registers; 32-bit values are big-endian words.

Identity: product id at 0x1000 (0xA1B1 VM-3P75CT, 0xA1B2 VM-3P5A), serial 0x1001 (8
registers of text), firmware 0x1009-0x100A (4 bytes: -, major, minor, beta; beta 0xFF means
a release, shown "v1.09"), hardware version 0x100B, phase configuration 0x2000 (0-2: one
phase L1/L2/L3, 3: three phases, 4: L1+L2) and the role the meter was configured with
0x2001. Firmware gates measurements as upstream does: nothing before v1.03.01, neutral
current and line-to-line voltage from v1.07, power factors, phase sequence, alarms and the
N2K instance from v1.09.

What is special here:

* VregLink at 0x4000 with 32 data registers (``self.vreglink``): the D-Bus layer exports
  ``com.victronenergy.VregLink`` on ``/Devices/0/VregLink`` for VictronConnect.
* The name lives in the meter (0x2002, 32 registers UTF-8) and is written with VREG
  0x010C; the N2K system instance (0x2023) with VREG 0x0112 (one byte). Remote writes of
  ``/CustomName`` and ``/N2kSystemInstance`` therefore go through VregLink, not fc 6/16.
* The service role comes from the GX setting (default grid), not from register 0x2001 as
  upstream does; a mismatch is logged once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ModbusError
from ..items import ItemStore
from ..registers import (
    FAST,
    HOLDING,
    NORMAL,
    ONCE,
    S16,
    S32,
    SLOW,
    U16,
    U32,
    DataType,
    Register,
    Value,
    text,
)
from ..vreglink import VregLink, VregStatus, add_vreglink_items, mirror_vreglink_items
from . import register_detector, register_model
from .base import METER_ROLES, Driver, Identity, Model

if TYPE_CHECKING:
    from ..transports.base import UnitClient

PRODUCT_VM_3P75CT = 0xA1B1
PRODUCT_VM_3P5A = 0xA1B2

VREGLINK_BASE = 0x4000
VREGLINK_SIZE = 32
VREG_DESCRIPTION = 0x010C  # the custom name, UTF-8
VREG_N2K_INSTANCE = 0x0112  # one byte

#: Register 0x2001 -> role, in upstream's order (6 and 7 are acload variants).
METER_ROLE_CODES = ("grid", "pvinverter", "genset", "acload", "evcharger", "heatpump", "acload", "acload")
#: Register 0x2000 -> phases measured.
PHASE_CONFIGS: Mapping[int, tuple[int, ...]] = {0: (1,), 1: (2,), 2: (3,), 3: (1, 2, 3), 4: (1, 2)}
PHASE_SEQUENCE_TEXT = {0: "L1-L2-L3", 1: "L1-L3-L2"}

Firmware = tuple[int, int, int, int]
FW_DATA = (0, 1, 3, 1)  # measurements exist
FW_NEUTRAL = (0, 1, 7, 0)  # /Ac/N/Current, line-to-line voltages
FW_PF = (0, 1, 9, 0)  # power factors, phase sequence, alarms, N2K instance, capabilities
NEWEST: Firmware = (0, 0xFF, 0xFF, 0xFF)  # firmware unknown (published from memory): all rows


@dataclass(frozen=True, slots=True)
class Utf8Text(DataType):
    """Text of UTF-8 bytes, MSB first, NUL padded (the meter's name)."""

    def decode(self, regs: Sequence[int]) -> str:
        raw = struct.pack(f">{len(regs)}H", *regs).rstrip(b"\0")
        return raw.decode("utf-8", "replace").strip()

    def encode(self, value: int | float | str) -> list[int]:
        raw = str(value).encode("utf-8")[: 2 * self.words].ljust(2 * self.words, b"\0")
        return list(struct.unpack(f">{self.words}H", raw))


NAME_TEXT = Utf8Text("utf8text32", 32)
NAME_BYTES = 2 * NAME_TEXT.words


def firmware_text(raw: int) -> str:
    """0x00010903 -> 'v1.09-beta-03'; beta byte 0xFF is a release: 'v1.09'."""
    _, major, minor, beta = raw.to_bytes(4, "big")
    return f"v{major:x}.{minor:02x}" if beta == 0xFF else f"v{major:x}.{minor:02x}-beta-{beta:02x}"


# --- the register table ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """A register plus when it exists: minimum firmware, and the phase it measures."""

    register: Register
    firmware: Firmware = FW_DATA
    phase: int | None = None


def _h(name: str, address: int, dtype: DataType, refresh, scale: float = 1, unit: str = "",  # noqa: ANN001
       precision: int | None = None, **kw) -> Register:  # noqa: ANN003
    return Register(name, address, dtype, HOLDING, scale=scale, unit=unit, precision=precision,
                    refresh=refresh, **kw)


def _phase_rows(n: int, current: Register) -> list[Row]:
    base = 0x3040 + 8 * (n - 1)
    p = f"/Ac/L{n}"
    return [
        Row(_h(f"{p}/Voltage", base, S16, FAST, 100, "V", 1), phase=n),
        Row(current, phase=n),
        Row(_h(f"{p}/Energy/Forward", base + 2, U32, SLOW, 100, "kWh", 2, invalid=(0xFFFFFFFF,), cumulative=True),
            phase=n),
        Row(_h(f"{p}/Energy/Reverse", base + 4, U32, SLOW, 100, "kWh", 2, invalid=(0xFFFFFFFF,), cumulative=True),
            phase=n),
        Row(_h(f"{p}/Power", 0x3082 + 4 * (n - 1), S32, FAST, 1, "W", 1, asleep=0.0, kind=float),
            phase=n),
        Row(_h(f"{p}/VoltageLineToLine", base + 6, U16, NORMAL, 100, "V", 1, invalid=(0xFFFF,)), FW_NEUTRAL, n),
        Row(_h(f"{p}/PowerFactor", base + 7, S16, NORMAL, 1000, "", 3), FW_PF, n),
    ]


def _current_75ct(n: int) -> Register:
    """VM-3P75CT: 16-bit current next to the voltage (0.01 A)."""
    return _h(f"/Ac/L{n}/Current", 0x3041 + 8 * (n - 1), S16, FAST, 100, "A", 2, asleep=0.0)


def _current_5a(n: int) -> Register:
    """VM-3P5A: 32-bit current at 0x3058 + 2(n-1) (0.01 A), for its higher range."""
    return _h(f"/Ac/L{n}/Current", 0x3058 + 2 * (n - 1), S32, FAST, 100, "A", 2, asleep=0.0)


def _rows(current: Callable[[int], Register]) -> tuple[Row, ...]:
    rows = [
        Row(_h("phase_config", 0x2000, U16, SLOW), (0, 0, 0, 0)),
        Row(_h("meter_role", 0x2001, U16, SLOW), (0, 0, 0, 0)),
        Row(_h("custom_name", 0x2002, NAME_TEXT, SLOW), (0, 0, 0, 0)),
        Row(_h("/Ac/Frequency", 0x3032, U16, NORMAL, 100, "Hz", 2)),
        Row(_h("/Ac/PENVoltage", 0x3033, S16, NORMAL, 100, "V", 1)),
        Row(_h("/Ac/Energy/Forward", 0x3034, U32, SLOW, 100, "kWh", 2, invalid=(0xFFFFFFFF,), cumulative=True)),
        Row(_h("/Ac/Energy/Reverse", 0x3036, U32, SLOW, 100, "kWh", 2, invalid=(0xFFFFFFFF,), cumulative=True)),
        Row(_h("/ErrorCode", 0x3038, U16, NORMAL)),
        Row(_h("/Ac/Power", 0x3080, S32, FAST, 1, "W", 1, asleep=0.0, kind=float)),
        # neutral current: 0.1 A, signed (upstream fixed both in 2024/25)
        Row(_h("/Ac/N/Current", 0x3039, S16, NORMAL, 10, "A", 1), FW_NEUTRAL),
        Row(_h("/N2kSystemInstance", 0x2023, U16, SLOW), FW_PF),
        Row(_h("/Ac/PowerFactor", 0x303A, S16, NORMAL, 1000, "", 3), FW_PF),
        Row(_h("/PhaseSequence", 0x303B, U16, NORMAL, invalid=(0xFF,), text=PHASE_SEQUENCE_TEXT), FW_PF),
        # alarms, low two bits: phase rotation 1 ok -> 0, 2 -> 1, 3 -> 2 (0: unknown)
        Row(_h("/Alarms/PhaseRotation", 0x303C, U32, NORMAL, bits=(0, 2), values={1: 0, 2: 1, 3: 2}), FW_PF),
        Row(_h("/Capabilities/HasUdpSnapshots", 0x2024, U32, ONCE, bits=(10, 1)), FW_PF),
    ]
    for n in (1, 2, 3):
        rows += _phase_rows(n, current(n))
    return tuple(rows)


ROWS_75CT = _rows(_current_75ct)
ROWS_5A = _rows(_current_5a)
ROWS: dict[int, tuple[Row, ...]] = {PRODUCT_VM_3P75CT: ROWS_75CT, PRODUCT_VM_3P5A: ROWS_5A}

IDENTITY = (
    _h("product_id", 0x1000, U16, ONCE),
    _h("serial", 0x1001, text(8), ONCE),
    _h("firmware_raw", 0x1009, U32, ONCE),
    _h("hardware", 0x100B, U16, ONCE),
    _h("phase_config", 0x2000, U16, ONCE),
    _h("meter_role", 0x2001, U16, ONCE),
)


# --- the driver -----------------------------------------------------------------------------------


class VictronMeterDriver(Driver):
    """Registers by firmware and phase configuration, VregLink, name and N2K instance
    written through VREGs."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.vreglink = VregLink(self.client, VREGLINK_BASE, VREGLINK_SIZE)
        self.firmware: Firmware = NEWEST
        self.phases: tuple[int, ...] = (1, 2, 3)
        self._vreg_writes: dict[int, bytes] = {}
        self._role_warned = False

    # -- identity ------------------------------------------------------------------------------
    def make_identity(self, values: Mapping[str, Value]) -> Identity:
        serial = values.get("serial")
        if not serial:
            raise ModbusError(f"{self.model.name}: no serial number at holding 0x1001")
        raw = values.get("firmware_raw")
        if isinstance(raw, int):
            b = raw.to_bytes(4, "big")
            self.firmware = (b[0], b[1], b[2], b[3])
        config = values.get("phase_config")
        self.phases = PHASE_CONFIGS.get(config, (1, 2, 3)) if isinstance(config, int) else (1, 2, 3)
        self._schedule = None  # re-plan for this firmware and phase configuration
        self._check_role(values.get("meter_role"))
        hw = values.get("hardware")
        return Identity(
            serial=str(serial),
            firmware=firmware_text(raw) if isinstance(raw, int) else None,
            hardware=None if hw is None else str(hw),
            extra={"product_id": values.get("product_id"), "phase_config": config,
                   "meter_role": values.get("meter_role"), "firmware_tuple": self.firmware},
        )

    async def read_identity(self) -> Identity:
        identity = await super().read_identity()
        self._drop_unused_items()
        return identity

    def _check_role(self, code: Value) -> None:
        if not isinstance(code, int) or self._role_warned:
            return
        configured = METER_ROLE_CODES[code] if code < len(METER_ROLE_CODES) else None
        if configured is not None and configured != self.role:
            self._role_warned = True
            self.log.warning("%s: the meter is configured as %s but published as %s (the GX setting wins)",
                             self.model.name, configured, self.role)

    def registers(self) -> Sequence[Register]:
        rows = ROWS[self.model.product_id]
        return tuple(r.register for r in rows
                     if self.firmware >= r.firmware and (r.phase is None or r.phase in self.phases))

    def _drop_unused_items(self) -> None:
        """Paths added before the identity was known (published from memory) that this
        meter does not have."""
        if self.store is None or "/Ac/Power" not in self.store:
            return
        keep = {p for r in self.registers() for p in r.paths}
        for row in ROWS[self.model.product_id]:
            for path in row.register.paths:
                if path not in keep and path in self.store:
                    self.store.remove(path)
        if "/NrOfPhases" in self.store:
            self.store.set("/NrOfPhases", len(self.phases))

    # -- items -----------------------------------------------------------------------------------
    def extra_items(self) -> None:
        store = self.store
        store.set("/NrOfPhases", len(self.phases))
        if "/Capabilities/HasUdpSnapshots" not in store:
            store.add("/Capabilities/HasUdpSnapshots", 0, kind=int)  # firmware before v1.09
        if "/N2kSystemInstance" in store:
            item = store.item("/N2kSystemInstance")
            item.writable, item.kind, item.min, item.max = True, int, 0, 255
            item.on_write = lambda v: self._queue_vreg(VREG_N2K_INSTANCE, bytes((int(v),)))
        self._hook_custom_name(store)
        add_vreglink_items(store)
        self._mirror()

    def _hook_custom_name(self, store: ItemStore) -> None:
        """A remote /CustomName write also renames the meter (VREG 0x010C), after the
        runtime's own handling (persisting it) accepted it."""
        item = store.items.get("/CustomName")
        if item is None:
            return
        previous = item.on_write

        def on_write(value: Value) -> bool:
            data = str(value).encode("utf-8")
            if len(data) > NAME_BYTES:
                return False
            if previous is not None and not previous(value):
                return False
            return self._queue_vreg(VREG_DESCRIPTION, data)

        item.on_write = on_write

    def _queue_vreg(self, vreg: int, data: bytes) -> bool:
        self._vreg_writes[vreg] = data
        self.wakeup.set()
        return True

    def on_values(self, changed: Mapping[str, Value]) -> None:
        if "custom_name" in changed and changed["custom_name"] is not None and "/CustomName" in self.store:
            self.store.set("/CustomName", changed["custom_name"])
        if "phase_config" in changed:
            config = changed["phase_config"]
            phases = PHASE_CONFIGS.get(config) if isinstance(config, int) else None
            if phases is not None and phases != self.phases:
                self.log.warning("%s: phase configuration changed to %s; reconnect to republish", self.model.name,
                                 "+".join(f"L{n}" for n in phases))
        if "meter_role" in changed:
            self._check_role(changed["meter_role"])

    async def poll(self, now: float, *, interleave: bool = False) -> None:
        await super().poll(now, interleave=interleave)
        self._mirror()

    def _mirror(self) -> None:
        service = None
        if self.identity is not None:
            service = f"com.victronenergy.{self.role}.{self.model.ident(self.identity.serial)}"
        mirror_vreglink_items(self.store, service)

    # -- writes ----------------------------------------------------------------------------------
    def writes_deadline(self, now: float) -> float:
        return now if self._vreg_writes else super().writes_deadline(now)

    async def service_device(self, now: float) -> None:
        """VREG writes queued by remote writes. VregLink never raises: a refused write is
        logged and the next read-back shows the meter's real value."""
        while self._vreg_writes:
            vreg, data = next(iter(self._vreg_writes.items()))
            reply = await self.vreglink.set(vreg, data)
            if self._vreg_writes.get(vreg) == data:
                del self._vreg_writes[vreg]
            if reply.status != VregStatus.SUCCESS:
                self.log.warning("%s: VREG %#06x write answered %#06x", self.model.name, vreg, reply.status)
            for sb in self.schedule:  # read the result back at the next poll
                if any(r.name in ("custom_name", "/N2kSystemInstance") for r in sb.block.registers):
                    sb.next_due = 0.0


def _model(name: str, product: str, pid: int, rows: tuple[Row, ...]) -> Model:
    return register_model(Model(
        name=name,
        product_name=product,
        product_id=pid,
        vendor="ve",
        manufacturer="Victron Energy",
        registers=tuple(r.register for r in rows),
        default_role="grid",
        allowed_roles=METER_ROLES,
        device_instance=40,
        phases=3,
        identity=IDENTITY,
        detect=f"product id {pid:#06x} at holding 0x1000",
        driver=VictronMeterDriver,
        min_timeout=0.2,
        initial_timeout=1.0,
        transports=("udp",),
        rates=(),
    ))


VM_3P75CT = _model("vm3p75ct", "Energy Meter VM-3P75CT", PRODUCT_VM_3P75CT, ROWS_75CT)
VM_3P5A = _model("vm3p5a", "Energy Meter VM-3P5A", PRODUCT_VM_3P5A, ROWS_5A)
BY_PRODUCT_ID = {PRODUCT_VM_3P75CT: VM_3P75CT, PRODUCT_VM_3P5A: VM_3P5A}


async def detect(client: UnitClient, timeout: float) -> Model | None:
    """The product id at holding 0x1000 names the model; any other value is not ours."""
    pid = (await client.read_holding(0x1000, 1, timeout=timeout))[0]
    return BY_PRODUCT_ID.get(pid)


register_detector("victron_em", detect, order=30)

__all__ = ["VM_3P5A", "VM_3P75CT", "VictronMeterDriver", "detect"]
