"""Victron energy meters VM-3P75CT and VM-3P5A (Modbus UDP, unit 1), with VregLink.

Register facts: Victron's published dbus-modbus-client (``victron_em.py``, read at v1.83),
the only public source found for this map; a register list document from Victron was not
found in the reference corpus, so every row of ``victron_em.toml`` is "[src]" from that
code, none checked against a meter. All registers are holding registers; 32-bit values are
big-endian words.

Identity: product id at 0x1000 (0xA1B1 VM-3P75CT, 0xA1B2 VM-3P5A), serial 0x1001 (8
registers of text), firmware 0x1009-0x100A (4 bytes: -, major, minor, beta; beta 0xFF means
a release, shown "v1.09"), hardware version 0x100B, phase configuration 0x2000 (0-2: one
phase L1/L2/L3, 3: three phases, 4: L1+L2) and the role the meter was configured with
0x2001. Firmware gates measurements as upstream does: nothing before v1.03.01, neutral
current and line-to-line voltage from v1.07, power factors, phase sequence, alarms and the
N2K instance from v1.09.

What is special here (the tables are in ``victron_em.toml``):

* Which register sets a meter has: by firmware version and by the phases it measures.
* VregLink at 0x4000 with 32 data registers (``self.vreglink``): the D-Bus layer exports
  ``com.victronenergy.VregLink`` on ``/Devices/0/VregLink`` for VictronConnect.
* The name lives in the meter (0x2002, 32 registers UTF-8) and is written with VREG
  0x010C; the N2K system instance (0x2023) with VREG 0x0112 (one byte). Remote writes of
  ``/CustomName`` and ``/N2kSystemInstance`` therefore go through VregLink, not fc 6/16.
* The service role comes from the GX setting (default grid), not from register 0x2001 as
  upstream does; a mismatch is logged once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import ModbusError
from ..items import ItemStore
from ..registers import Register, Value
from ..vreglink import VregLink, VregStatus, add_vreglink_items, mirror_vreglink_items
from .base import Driver, Identity
from .definition import register_driver

if TYPE_CHECKING:
    from ..transports.base import UnitClient
    from .base import Model

VREGLINK_BASE = 0x4000
VREGLINK_SIZE = 32
VREG_DESCRIPTION = 0x010C  # the custom name, UTF-8
VREG_N2K_INSTANCE = 0x0112  # one byte
NAME_BYTES = 64  # custom_name: 32 registers of UTF-8

#: Register 0x2001 -> role, in upstream's order (6 and 7 are acload variants).
METER_ROLE_CODES = ("grid", "pvinverter", "genset", "acload", "evcharger", "heatpump", "acload", "acload")
#: Register 0x2000 -> phases measured.
PHASE_CONFIGS: Mapping[int, tuple[int, ...]] = {0: (1,), 1: (2,), 2: (3,), 3: (1, 2, 3), 4: (1, 2)}

Firmware = tuple[int, int, int, int]
FW_DATA = (0, 1, 3, 1)  # measurements exist
FW_NEUTRAL = (0, 1, 7, 0)  # /Ac/N/Current, line-to-line voltages
FW_PF = (0, 1, 9, 0)  # power factors, phase sequence, alarms, N2K instance, capabilities
NEWEST: Firmware = (0, 0xFF, 0xFF, 0xFF)  # firmware unknown (published from memory): all rows


def firmware_text(raw: int) -> str:
    """0x00010903 -> 'v1.09-beta-03'; beta byte 0xFF is a release: 'v1.09'."""
    _, major, minor, beta = raw.to_bytes(4, "big")
    return f"v{major:x}.{minor:02x}" if beta == 0xFF else f"v{major:x}.{minor:02x}-beta-{beta:02x}"


def active_sets(model: Model, firmware: Firmware, phases: Sequence[int]) -> set[str]:
    """The file's register sets a meter with this firmware and these phases has."""
    names = {"config"}
    if firmware >= FW_DATA:
        names.add("base")
        for n in phases:
            names |= {f"l{n}", f"l{n}_75ct", f"l{n}_5a"}
    if firmware >= FW_NEUTRAL:
        names |= {"neutral"} | {f"l{n}_neutral" for n in phases if firmware >= FW_DATA}
    if firmware >= FW_PF:
        names |= {"pf"} | {f"l{n}_pf" for n in phases if firmware >= FW_DATA}
    return names & set(model.sets)


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
        sets = self.model.sets
        keep = {name for s in active_sets(self.model, self.firmware, self.phases) for name in sets[s]}
        return tuple(r for r in self.model.registers if r.name in keep)

    def _drop_unused_items(self) -> None:
        """Paths added before the identity was known (published from memory) that this
        meter does not have."""
        if self.store is None or "/Ac/Power" not in self.store:
            return
        keep = {p for r in self.registers() for p in r.paths}
        for row in self.model.registers:
            for path in row.paths:
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


class P1LinkDriver(VictronMeterDriver):
    """The P1Link: VregLink and the name as on the energy meters; its rows follow the file's
    phase variant (0: L1 only, otherwise three phases), not the meters' firmware table."""

    def make_identity(self, values: Mapping[str, Value]) -> Identity:
        identity = super().make_identity(values)
        self.phases = (1,) if values.get("phase_config") == 0 else (1, 2, 3)
        return identity

    def registers(self) -> Sequence[Register]:
        return Driver.registers(self)


async def detect(client: UnitClient, timeout: float) -> Model | None:
    """The family's detector: the product id at holding 0x1000 names the model."""
    from . import family

    return await family("victron_em").detect(client, timeout)


register_driver("victron_em", VictronMeterDriver)
register_driver("victron_p1link", P1LinkDriver)

__all__ = ["P1LinkDriver", "VictronMeterDriver", "active_sets", "detect", "firmware_text"]
