"""VregLink: Victron VREG reads and writes tunnelled through Modbus function 23.

Some Victron devices (the VM-3P75CT energy meter) expose a block of holding registers in
which one Read/Write Multiple Registers transaction first selects (and optionally sets) a
VREG and then reads back the answer. Doing both halves in one transaction is what makes it
safe with several callers: no other request can slip in between select and read.

Layouts (offsets in registers from the block base):

* written: ``VREG id``, then for a set ``size`` (bytes) and the data packed MSB first,
  an odd length padded with one zero byte;
* read back: ``VREG id``, ``status``, ``size``, data. The device reports the real size
  even when the block is too small to carry the whole value.

This module is the codec (pure functions over registers) and ``VregLink``, the capability a
driver switches on with its block base and size. ``VregLink.get``/``set`` never raise for
device trouble: every Modbus error, and every reply that answers another VREG, becomes the
documented error status, because the D-Bus caller (VictronConnect via mqtt-rpc) expects a
status, not an exception.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum

from .errors import ModbusError, ModbusTimeout
from .items import ItemStore
from .modbus.pdu import MAX_READ, MAX_RW_WRITE, Request
from .transports.base import UnitClient

log = logging.getLogger(__name__)


class VregStatus(IntEnum):
    """Status codes of the VregLink block (dbus-modbus-client README, section VregLink)."""

    SUCCESS = 0
    READ_ERROR = 0x8000  # read: unknown error (also: any Modbus failure, wrong VREG echoed)
    READ_NOT_FOUND = 0x8001  # read: VREG does not exist
    READ_WRITE_ONLY = 0x8002  # read: VREG is write-only
    WRITE_ERROR = 0x8100  # write: unknown error (also: any Modbus failure, wrong VREG echoed)
    WRITE_NOT_FOUND = 0x8101  # write: VREG does not exist
    WRITE_READ_ONLY = 0x8102  # write: VREG is read-only
    WRITE_INVALID = 0x8104  # write: data invalid for VREG


READ_HEADER = 3  # id, status, size
WRITE_HEADER = 2  # id, size
SET_REPLY = 2  # a set reads back id and status only (the seed's worked example)
DEFAULT_SIZE = 32  # data registers in the block of Victron energy meters
MAX_SIZE = MAX_READ - READ_HEADER  # 122: a whole fc 23 read


# -- byte <-> register packing -------------------------------------------------------------------


def pack_bytes(data: bytes) -> list[int]:
    """Bytes to registers, MSB first; an odd length gets one zero byte of padding."""
    if len(data) % 2:
        data = data + b"\0"
    return [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]


def unpack_registers(registers: list[int] | tuple[int, ...]) -> bytes:
    """Registers to bytes, MSB first (the inverse of ``pack_bytes`` before trimming)."""
    return b"".join(r.to_bytes(2, "big") for r in registers)


# -- what goes on the wire ----------------------------------------------------------------------


def select_registers(vreg: int) -> list[int]:
    """The write part of a read: only the VREG id, which selects it for the read-back."""
    _check_id(vreg)
    return [vreg]


def set_registers(vreg: int, data: bytes) -> list[int]:
    """The write part of a set: id, size in bytes (the real length, not the padded one), data."""
    _check_id(vreg)
    return [vreg, len(data), *pack_bytes(data)]


def get_request(base: int, vreg: int, size: int = DEFAULT_SIZE) -> Request:
    """fc 23 reading the header plus ``size`` data registers after selecting ``vreg``."""
    return Request.read_write(base, READ_HEADER + size, base, select_registers(vreg))


def set_request(base: int, vreg: int, data: bytes) -> Request:
    """fc 23 writing ``data`` to ``vreg`` and reading back its id and status."""
    return Request.read_write(base, SET_REPLY, base, set_registers(vreg, data))


@dataclass(frozen=True, slots=True)
class VregReply:
    """A decoded read-back: what ``GetVreg``/``SetVreg`` return on D-Bus."""

    status: int
    data: bytes = b""


def decode_get(vreg: int, registers: list[int]) -> VregReply:
    """Decode the read-back of a get.

    The size field is honoured: data beyond it is padding and dropped. If the device
    reports more bytes than the block carried, the value is truncated to what arrived
    (the device told us the real size; the prefix is still useful, e.g. for text) and a
    warning is logged. A reply for another VREG is an error, never data.
    """
    if len(registers) < READ_HEADER or registers[0] != vreg:
        log.warning("VregLink: reply %s does not answer VREG %#06x", registers[:READ_HEADER], vreg)
        return VregReply(VregStatus.READ_ERROR)
    status, size = registers[1], registers[2]
    data = unpack_registers(registers[READ_HEADER:])
    if size > len(data):
        log.warning("VregLink: VREG %#06x has %d bytes, the block carried only %d", vreg, size, len(data))
        size = len(data)
    return VregReply(status, data[:size])


def decode_set(vreg: int, registers: list[int]) -> VregReply:
    """Decode the read-back of a set: the VREG id echoed and the status (no data)."""
    if len(registers) < SET_REPLY or registers[0] != vreg:
        log.warning("VregLink: reply %s does not answer VREG %#06x", registers[:SET_REPLY], vreg)
        return VregReply(VregStatus.WRITE_ERROR)
    return VregReply(registers[1])


def _check_id(vreg: int) -> None:
    if not 0 <= vreg <= 0xFFFF:
        raise ValueError(f"VREG id {vreg} does not fit 16 bits")


# -- the capability ------------------------------------------------------------------------------


class VregLink:
    """VREG access to one device through its VregLink block.

    ``base`` is the first holding register of the block, ``size`` the number of data
    registers it carries (Victron energy meters: 0x4000 and 32). Calls go through the
    priority lane: they are user-initiated (VictronConnect) and must answer well within
    the D-Bus call timeout even when the device is polled fast.
    """

    def __init__(
        self, client: UnitClient, base: int, size: int = DEFAULT_SIZE, *, timeout: float = 1.0, attempts: int = 2
    ) -> None:
        if not 1 <= size <= MAX_SIZE:
            raise ValueError(f"VregLink block size {size} outside 1..{MAX_SIZE} data registers")
        if not 0 <= base <= 0x10000 - READ_HEADER - size:
            raise ValueError(f"VregLink base {base:#x} leaves no room for the block")
        self.client = client
        self.base = base
        self.size = size
        self.timeout = timeout
        self.attempts = max(1, attempts)

    @property
    def max_data(self) -> int:
        """Longest value a set can carry, in bytes (the block, and fc 23's write limit)."""
        return 2 * min(self.size, MAX_RW_WRITE - WRITE_HEADER)

    async def get(self, vreg: int) -> VregReply:
        """Read ``vreg``. Never raises for device trouble (see the module docstring)."""
        request = get_request(self.base, vreg, self.size)
        registers = await self._transact(request, vreg, VregStatus.READ_ERROR)
        return VregReply(VregStatus.READ_ERROR) if registers is None else decode_get(vreg, registers)

    async def set(self, vreg: int, data: bytes) -> VregReply:
        """Write ``data`` to ``vreg``. Data longer than the block is refused here with
        WRITE_INVALID (the device could not receive it), without touching the bus."""
        data = bytes(data)
        if len(data) > self.max_data:
            log.warning("VregLink: %d bytes for VREG %#06x exceed the block (%d)", len(data), vreg, self.max_data)
            return VregReply(VregStatus.WRITE_INVALID)
        request = set_request(self.base, vreg, data)
        registers = await self._transact(request, vreg, VregStatus.WRITE_ERROR)
        return VregReply(VregStatus.WRITE_ERROR) if registers is None else decode_set(vreg, registers)

    async def _transact(self, request: Request, vreg: int, error: int) -> list[int] | None:
        """One fc 23 transaction; a lost datagram (timeout) is tried again, since selecting
        and setting a VREG twice has the same effect as once. None on any Modbus error."""
        for attempt in range(1, self.attempts + 1):
            try:
                return await self.client.read_write(
                    request.address, request.count, request.write_address, list(request.values),
                    timeout=self.timeout, priority=True,
                )
            except ModbusTimeout as exc:
                if attempt == self.attempts:
                    log.warning("VregLink: VREG %#06x: %s (status %#06x)", vreg, exc or "timeout", error)
            except ModbusError as exc:
                log.warning("VregLink: VREG %#06x: %s (status %#06x)", vreg, exc, error)
                return None
        return None


# -- the companion paths -------------------------------------------------------------------------

#: The object VictronConnect talks to, and the device description it reads next to it
#: (dbus-modbus-client publishes these for every VregLink device). Each companion mirrors
#: a generic path of the service; ServiceName is the service's own bus name.
VREGLINK_PATH = "/Devices/0/VregLink"
COMPANIONS: dict[str, str | None] = {
    "/Devices/0/DeviceInstance": "/DeviceInstance",
    "/Devices/0/ProductId": "/ProductId",
    "/Devices/0/ProductName": "/ProductName",
    "/Devices/0/ServiceName": None,
    "/Devices/0/CustomName": "/CustomName",
    "/Devices/0/FirmwareVersion": "/FirmwareVersion",
}


def _hex(value: object) -> str:
    return f"0x{value:X}" if isinstance(value, int) else str(value)


def add_vreglink_items(store: ItemStore) -> None:
    """Define ``/Devices/0/VregLink`` (a BusItem without value, as upstream) and the
    companion paths. The D-Bus layer adds the VregLink methods on the first one."""
    store.add(VREGLINK_PATH, None)
    for path in COMPANIONS:
        store.add(path, None, formatter=_hex if path.endswith("ProductId") else None)


def mirror_vreglink_items(store: ItemStore, service_name: str | None = None) -> None:
    """Copy the generic paths into their companions (cheap: unchanged values are not
    re-sent). Call after anything that may change them (a poll, a rename)."""
    for path, source in COMPANIONS.items():
        if path not in store:
            continue
        if source is None:
            if service_name is not None:
                store.set(path, service_name)
        elif source in store:
            store.set(path, store[source])
