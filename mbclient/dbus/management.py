"""``com.victronenergy.modbusclient.<port>``: the management service the GUI talks to.

The stock client publishes ``com.victronenergy.modbusclient.tcp`` and the GUI's
"Modbus devices" pages read and write it (Settings -> Integrations):

* ``/Scan`` - written by the "Scan for devices" button with a boolean (``!value``); any
  truthy value starts a scan, a falsy one stops it; it reads back as the running state,
  published as a D-Bus boolean as the stock client does (the GUI only tests truthiness).
* ``/ScanProgress`` - 0..100 (double) while a scan runs, invalid otherwise; its text is
  ``"37%"`` (the classic GUI shows the text), ``"---"`` while invalid.
* ``/Devices/<ident>/{Enabled,Name,Serial}`` - one subtree per device found by mDNS;
  ``Enabled`` is an int 0/1 (gui-v2's switch compares with ``=== 1``), writable. A subtree
  appears and disappears in one ItemsChanged.

No ``/DeviceInstance``: the MQTT bridge then files the service as instance 0, which is
where gui-v2 looks for it. mbclient also publishes one per serial port it owns
(``modbusclient.ttyUSB0``), with the same ``/Scan`` and ``/ScanProgress``, so a serial scan
can be watched and started over D-Bus and MQTT too (the stock client offers none).
"""

from __future__ import annotations

from collections.abc import Callable

from ..items import ItemStore
from ..runtime.identity import setting_element
from .service import ServiceExport

SCAN = "/Scan"
SCAN_PROGRESS = "/ScanProgress"


def management_name(port_name: str) -> str:
    return f"com.victronenergy.modbusclient.{setting_element(port_name)}"


def _percent(value: object) -> str:
    return f"{int(value)}%" if isinstance(value, (int, float)) else ""


class ManagementService:
    """The store and export of one management service.

    ``on_scan(start: bool)`` is called for a remote ``/Scan`` write (it must not block);
    ``on_enable(ident, enabled)`` for a remote ``/Devices/<ident>/Enabled`` write.
    """

    def __init__(
        self,
        port_name: str,
        bus_address: str | None,
        *,
        on_scan: Callable[[bool], None],
        on_enable: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.name = management_name(port_name)
        self.store = ItemStore()
        self._on_scan = on_scan
        self._on_enable = on_enable
        self.store.add(SCAN, False, writable=True, kind=int, boolean=True, notify_unchanged=True,
                       on_write=self._scan_written)
        self.store.add(SCAN_PROGRESS, None, kind=float, formatter=_percent, invalid_text="---")
        self.export = ServiceExport(self.store, bus_address)

    async def start(self) -> None:
        await self.export.start(self.name)

    async def stop(self) -> None:
        await self.export.stop()

    # -- scan state --------------------------------------------------------------------------------
    def _scan_written(self, value: object) -> bool:
        self._on_scan(bool(value))
        return True

    def set_scan(self, running: bool, progress: float | None) -> None:
        """Publish the scanner's state (one ItemsChanged for both paths)."""
        self.store.set(SCAN, bool(running))
        self.store.set(SCAN_PROGRESS, None if progress is None else float(max(0.0, min(100.0, progress))))
        self.store.flush()

    @property
    def scanning(self) -> bool:
        return bool(self.store.get(SCAN))

    # -- discovered devices ----------------------------------------------------------------------------
    def add_device(self, ident: str, name: str, serial: str, enabled: bool) -> None:
        """Publish ``/Devices/<ident>`` (all three paths in one ItemsChanged)."""
        base = f"/Devices/{setting_element(ident)}"
        self.store.add(f"{base}/Enabled", int(enabled), writable=True, kind=int, min=0, max=1,
                       on_write=lambda v, ident=ident: self._enable_written(ident, v))
        self.store.add(f"{base}/Name", name, kind=str)
        self.store.add(f"{base}/Serial", serial, kind=str)
        self.store.flush()

    def set_enabled(self, ident: str, enabled: bool) -> None:
        path = f"/Devices/{setting_element(ident)}/Enabled"
        if path in self.store and self.store.set(path, int(enabled)):
            self.store.flush()

    def remove_device(self, ident: str) -> None:
        """Drop the whole ``/Devices/<ident>`` subtree (one ItemsChanged)."""
        self.store.remove_tree(f"/Devices/{setting_element(ident)}")

    def devices(self) -> list[str]:
        return sorted({p.split("/")[2] for p in self.store.items if p.startswith("/Devices/")})

    def _enable_written(self, ident: str, value: object) -> bool:
        if self._on_enable is None:
            return False
        self._on_enable(ident, bool(value))
        return True
