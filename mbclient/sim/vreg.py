"""Simulated VregLink devices: a generic VREG table behind a function-23 block, and the
Victron energy meters VM-3P75CT / VM-3P5A built on it.

``VregUnit`` answers function 23 on its VregLink block the way the seed README describes:
the write part selects (id only) or sets (id, size, data) a VREG, the read part returns id,
status, size and data in the same transaction. Everything else (plain register reads, the
fault switches) is ``SimUnit``'s. The VREG table has read-only, write-only and read/write
entries; an id not in the table is "does not exist".

``VictronMeterSim`` adds the meter's register map (facts from Victron's dbus-modbus-client,
see mbclient/devices/victron_em.py) with simple physics: per-phase voltage and power set by
the test, current derived, energy counters integrated on every read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FrameError, ModbusExceptionResponse
from ..modbus.pdu import READ_WRITE_MULTIPLE, parse_request, registers_response
from ..vreglink import DEFAULT_SIZE, READ_HEADER, WRITE_HEADER, VregStatus, pack_bytes, unpack_registers
from .unit import HOLDING, ILLEGAL_ADDRESS, SimUnit

Validator = Callable[[bytes], bool]


@dataclass(slots=True)
class Vreg:
    """One VREG of a simulated device."""

    value: bytes = b""
    readable: bool = True
    writable: bool = False
    valid: Validator | None = None  # a set with data this refuses answers 0x8104


class VregUnit(SimUnit):
    """A ``SimUnit`` with a VregLink block at ``vreg_base`` carrying ``vreg_size`` data registers.

    ``vregs`` maps id -> ``Vreg``. ``on_vreg_set(id, data)`` runs after an accepted set (a
    model mirrors the value into its plain registers there). ``vreg_log`` records every
    access as ``(id, data or None)``. Fault switches: ``vreg_wrong_id`` answers with
    another id in the read-back (a device confused by a concurrent client);
    ``vreg_short_reply = n`` leaves the last ``n`` registers out of an otherwise
    well-formed reply (a truncated answer the client must refuse).
    """

    def __init__(
        self,
        address: int,
        *,
        vregs: dict[int, Vreg] | None = None,
        vreg_base: int = 0x4000,
        vreg_size: int = DEFAULT_SIZE,
        **kwargs,
    ) -> None:
        super().__init__(address, **kwargs)
        self.vregs: dict[int, Vreg] = dict(vregs or {})
        self.vreg_base = vreg_base
        self.vreg_size = vreg_size
        self.vreg_wrong_id = False
        self.vreg_short_reply = 0
        self.on_vreg_set: Callable[[int, bytes], None] | None = None
        self.vreg_log: list[tuple[int, bytes | None]] = []

    @property
    def vreg_block(self) -> range:
        return range(self.vreg_base, self.vreg_base + READ_HEADER + self.vreg_size)

    def handle(self, pdu: bytes, *, broadcast: bool = False) -> bytes | None:
        """Take function-23 requests aimed at the VregLink block; leave the rest to SimUnit."""
        if broadcast or self.exception is not None or not pdu or pdu[0] != READ_WRITE_MULTIPLE:
            return super().handle(pdu, broadcast=broadcast)
        try:
            req = parse_request(pdu)
        except (FrameError, ModbusExceptionResponse):
            return super().handle(pdu)
        if req.write_address != self.vreg_base and req.address != self.vreg_base:
            return super().handle(pdu)
        block = self.vreg_block
        if (
            req.write_address != self.vreg_base
            or req.address != self.vreg_base
            or req.count > len(block)
            or len(req.values) > len(block) - 1
        ):
            return bytes((READ_WRITE_MULTIPLE | 0x80, ILLEGAL_ADDRESS))
        self.counters.writes += 1
        regs = self._vreg_transaction(list(req.values), req.count)
        if self.vreg_short_reply:
            regs = regs[: max(0, len(regs) - self.vreg_short_reply)]
        return registers_response(READ_WRITE_MULTIPLE, regs)

    def _vreg_transaction(self, written: list[int], count: int) -> list[int]:
        """Execute the write part, build the read part (``count`` registers)."""
        vreg = written[0]
        if len(written) == 1:
            self.vreg_log.append((vreg, None))
            status, value = self._get(vreg)
        else:
            size, data_regs = written[1], written[WRITE_HEADER:]
            data = unpack_registers(data_regs)
            if size not in (len(data), len(data) - 1):
                status = VregStatus.WRITE_INVALID  # size field inconsistent with the data sent
            else:
                data = data[:size]
                self.vreg_log.append((vreg, data))
                status = self._set(vreg, data)
            value = b""
        echoed = vreg ^ 0x0001 if self.vreg_wrong_id else vreg
        regs = [echoed, int(status), len(value), *pack_bytes(value)]
        regs += [0] * max(0, count - len(regs))
        return regs[:count]  # the real size stays in regs[2] even when the data is cut off

    def _get(self, vreg: int) -> tuple[int, bytes]:
        entry = self.vregs.get(vreg)
        if entry is None:
            return VregStatus.READ_NOT_FOUND, b""
        if not entry.readable:
            return VregStatus.READ_WRITE_ONLY, b""
        return VregStatus.SUCCESS, entry.value

    def _set(self, vreg: int, data: bytes) -> int:
        entry = self.vregs.get(vreg)
        if entry is None:
            return VregStatus.WRITE_NOT_FOUND
        if not entry.writable:
            return VregStatus.WRITE_READ_ONLY
        if entry.valid is not None and not entry.valid(data):
            return VregStatus.WRITE_INVALID
        entry.value = data
        if self.on_vreg_set is not None:
            self.on_vreg_set(vreg, data)
        return VregStatus.SUCCESS


# -- Victron energy meters ----------------------------------------------------------------------

VM_3P75CT = 0xA1B1
VM_3P5A = 0xA1B2

VREG_PRODUCT_ID = 0x0100
VREG_DESCRIPTION = 0x010C  # the custom name
VREG_N2K_INSTANCE = 0x0112

ROLES = ("grid", "pvinverter", "genset", "acload", "evcharger", "heatpump")
PHASE_CONFIGS = {1: 0, 2: 4, 3: 3}  # number of phases -> register 0x2000 (L1 only, L1+L2, 3-phase)


def _text_valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(data) <= 64  # 32 registers at 0x2002


class VictronMeterSim(VregUnit):
    """A VM-3P75CT (or VM-3P5A with ``product_id=VM_3P5A``) on Modbus UDP, unit 1.

    Tests set ``phase_power`` / ``phase_voltage`` (per phase, W / V); registers are rebuilt
    before every read, and the energy counters integrate power over wall-clock time.
    """

    def __init__(
        self,
        address: int = 1,
        *,
        product_id: int = VM_3P75CT,
        serial: str = "HQ2345ABCDE",
        firmware: tuple[int, int, int, int] = (0, 1, 9, 0xFF),
        role: str = "grid",
        phases: int = 3,
        custom_name: str = "",
        **kwargs,
    ) -> None:
        super().__init__(address, vreg_base=0x4000, vreg_size=DEFAULT_SIZE, **kwargs)
        self.product_id = product_id
        self.phase_voltage = [230.0, 231.0, 229.0][:phases]
        self.phase_power = [0.0] * phases
        self.frequency = 50.0
        self.imported = [0.0] * phases  # kWh per phase
        self.exported = [0.0] * phases
        self._last = time.monotonic()
        h = self.holding
        h[0x1000] = product_id
        self.set_text(HOLDING, 0x1001, 8, serial)
        h[0x1009], h[0x100A] = (firmware[0] << 8) | firmware[1], (firmware[2] << 8) | firmware[3]
        h[0x100B] = 1  # hardware version
        h[0x2000] = PHASE_CONFIGS[phases]
        h[0x2001] = ROLES.index(role)
        self._store_name(custom_name.encode("utf-8"))
        h[0x2022] = 0  # position
        h[0x2023] = 0  # N2K system instance
        self.set_u32(HOLDING, 0x2024, 0x0400)  # capabilities: UDP snapshots
        self.define(HOLDING, 0x3032, 0x3090 - 0x3032)
        self.vregs.update({
            # Layout of the product-id value copied from the seed's worked example
            # (byte 0, id big-endian, 0xFE) [unverified for real meters].
            VREG_PRODUCT_ID: Vreg(bytes((0, product_id >> 8, product_id & 0xFF, 0xFE))),
            VREG_DESCRIPTION: Vreg(custom_name.encode("utf-8"), writable=True, valid=_text_valid),
            VREG_N2K_INSTANCE: Vreg(b"\0", writable=True, valid=lambda d: len(d) == 1),
        })
        self.on_vreg_set = self._mirror_vreg
        self.on_read = lambda table, address, count: self.refresh()
        self.refresh()

    @property
    def phases(self) -> int:
        return len(self.phase_power)

    def _store_name(self, raw: bytes) -> None:
        raw = raw[:64].ljust(64, b"\0")
        for i, reg in enumerate(pack_bytes(raw)):
            self.holding[0x2002 + i] = reg

    def _mirror_vreg(self, vreg: int, data: bytes) -> None:
        """What the meter does with a VREG set: the name and N2K instance show up in registers."""
        if vreg == VREG_DESCRIPTION:
            self._store_name(data)
        elif vreg == VREG_N2K_INSTANCE:
            self.holding[0x2023] = data[0]

    def refresh(self) -> None:
        """Integrate energy since the last call and rebuild the measurement registers."""
        now = time.monotonic()
        hours, self._last = (now - self._last) / 3600.0, now
        for n, p in enumerate(self.phase_power):
            if p >= 0:
                self.imported[n] += p * hours / 1000.0
            else:
                self.exported[n] += -p * hours / 1000.0
        s16, s32, u32 = self._s16, self._s32, self._u32
        s16(0x3032, self.frequency * 100)
        s16(0x3033, 0)  # PEN voltage
        u32(0x3034, sum(self.imported) * 100)
        u32(0x3036, sum(self.exported) * 100)
        self.holding[0x3038] = 0  # error code
        current_n = 0.0
        for n in range(3):
            base = 0x3040 + 8 * n
            if n >= self.phases:
                for a in range(base, base + 8):
                    self.holding[a] = 0
                continue
            v, p = self.phase_voltage[n], self.phase_power[n]
            i = p / v if v else 0.0
            current_n += i * math.cos(2 * math.pi * n / 3)
            s16(base, v * 100)
            s16(base + 1, i * 100)
            u32(base + 2, self.imported[n] * 100)
            u32(base + 4, self.exported[n] * 100)
            self.holding[base + 6] = round(v * math.sqrt(3) * 100) & 0xFFFF if self.phases > 1 else 0xFFFF
            s16(base + 7, 1000)  # resistive load: power factor 1
            s32(0x3058 + 2 * n, i * 100)  # VM-3P5A current (32 bit)
            s32(0x3082 + 4 * n, p)
        s16(0x3039, abs(current_n) * 10)
        s16(0x303A, 1000)
        self.holding[0x303B] = 0  # phase sequence L1-L2-L3
        u32(0x303C, 0)  # alarms
        s32(0x3080, sum(self.phase_power))

    def _s16(self, addr: int, value: float) -> None:
        self.holding[addr] = round(value) & 0xFFFF

    def _s32(self, addr: int, value: float) -> None:
        self.set_s32(HOLDING, addr, round(value))

    def _u32(self, addr: int, value: float) -> None:
        self.set_u32(HOLDING, addr, round(value))
