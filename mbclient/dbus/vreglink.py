"""The ``com.victronenergy.VregLink`` interface on ``/Devices/0/VregLink``.

VictronConnect (through mqtt-rpc on a GX) reads and writes a device's VREGs with
``GetVreg(q) -> (q status, ay data)`` and ``SetVreg(q, ay) -> (q status, ay data)``. The
object is also a BusItem without value (exported from the ItemStore like every path),
exactly as dbus-modbus-client does; this module only adds the two methods on it.

A call must never end in a D-Bus error: device trouble already comes back from
``mbclient.vreglink.VregLink`` as a status, and anything unexpected here is logged and
answered with the generic error status (0x8000 read / 0x8100 write).

No ``from __future__ import annotations`` in this module: dbus-fast reads the D-Bus
signatures from the annotations, which must stay the literal strings below.
"""

import logging
from typing import Any, Protocol

from dbus_fast.service import ServiceInterface, method

from ..vreglink import VREGLINK_PATH, VregReply, VregStatus

log = logging.getLogger(__name__)

INTERFACE = "com.victronenergy.VregLink"


class VregAccess(Protocol):
    """What the interface needs: ``mbclient.vreglink.VregLink`` (or a test double)."""

    async def get(self, vreg: int) -> VregReply: ...

    async def set(self, vreg: int, data: bytes) -> VregReply: ...


class VregLinkInterface(ServiceInterface):
    """GetVreg/SetVreg forwarded to a ``VregAccess``."""

    def __init__(self, access: VregAccess) -> None:
        super().__init__(INTERFACE)
        self.access = access

    @method()
    async def GetVreg(self, vreg: "q") -> "qay":  # noqa: N802, F821 - D-Bus names and signatures
        try:
            reply = await self.access.get(vreg)
        except Exception:  # noqa: BLE001 - a bug must not become a D-Bus error for VictronConnect
            log.exception("GetVreg(%#06x) failed", vreg)
            reply = VregReply(VregStatus.READ_ERROR)
        return [int(reply.status), bytes(reply.data)]

    @method()
    async def SetVreg(self, vreg: "q", data: "ay") -> "qay":  # noqa: N802, F821
        try:
            reply = await self.access.set(vreg, bytes(data))
        except Exception:  # noqa: BLE001
            log.exception("SetVreg(%#06x) failed", vreg)
            reply = VregReply(VregStatus.WRITE_ERROR)
        return [int(reply.status), bytes(reply.data)]


def attach_vreglink(export: Any, access: VregAccess, path: str = VREGLINK_PATH) -> VregLinkInterface:
    """Serve the interface on a ``ServiceExport`` (before or after ``start``; it follows
    renames), next to the BusItem the store already has at ``path``."""
    interface = VregLinkInterface(access)
    export.export_extra(path, interface)
    return interface
