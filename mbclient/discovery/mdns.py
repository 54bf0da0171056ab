"""mDNS discovery (network instance): Victron network meters announce themselves.

Victron's energy meters (VM-3P75CT, ...) advertise ``_victron-energy-meter._udp``; the
stock client browses for it and lists what answers under "Discovered devices". The same
here, with the ``zeroconf`` library (pure Python, vendored into the Venus bundle):

* each announced endpoint (SRV port, A address) is probed once (the registry's
  ``identify``, read-only) to learn its model and serial, i.e. its ``<ident>``;
* ``/Devices/<ident>/{Enabled,Name,Serial}`` appears on the management service;
  ``Enabled`` comes from ``/Settings/Devices/<ident>/Enabled``, created with default 1
  when the device's settings group already exists (a device this GX knew), else 0;
* an enabled device runs like a configured one (its own service), but it is never
  written to the ``Devices`` list; the GUI's switch (``Enabled`` 1/0) starts and stops it;
* an endpoint that leaves (goodbye or expiry) takes its ``/Devices/<ident>`` subtree and
  its service with it; an endpoint the user also typed into the Devices list is left to
  that entry.

The browser is an object with ``async run(on_change)`` calling ``on_change(method, host,
port, present)``; tests may inject one, the default is ``ZeroconfBrowser``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ..dbus.settings import Setting, device_setting
from ..errors import LinkDown
from ..spec import DeviceSpec
from ..transports.tcp import TcpLink
from ..transports.udp import UdpLink
from .netscan import units_for
from .probe import Found, probe_unit

if TYPE_CHECKING:
    from .manager import Discovery

log = logging.getLogger("mbclient.discovery")

#: Service types browsed (the P1Link and EV-charger types join once those models exist).
SERVICE_TYPES = ("_victron-energy-meter._udp.local.",)
PROBE_TIMEOUT = 1.0

OnChange = Callable[[str, str, int, bool], None]


class ZeroconfBrowser:
    """Browse ``SERVICE_TYPES`` with zeroconf; ``interfaces`` limits the sockets (tests:
    ``("127.0.0.1",)``), empty means every interface. IPv4 only, as the stock client."""

    def __init__(self, interfaces: tuple[str, ...] = (), service_types: tuple[str, ...] = SERVICE_TYPES) -> None:
        self.interfaces = interfaces
        self.service_types = service_types

    async def run(self, on_change: OnChange) -> None:
        from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        aiozc = AsyncZeroconf(interfaces=list(self.interfaces) or InterfaceChoice.All, ip_version=IPVersion.V4Only)
        known: dict[str, tuple[str, str, int]] = {}
        send, receive = anyio.create_memory_object_stream[tuple[str, str, Any]](64)

        def handler(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            try:
                send.send_nowait((service_type, name, state_change))
            except anyio.WouldBlock:
                log.warning("mDNS: too many announcements at once; %s dropped", name)

        browser = AsyncServiceBrowser(aiozc.zeroconf, list(self.service_types), handlers=[handler])
        try:
            async with receive:
                async for service_type, name, change in receive:
                    if change is ServiceStateChange.Removed:
                        gone = known.pop(name, None)
                        if gone is not None:
                            on_change(*gone, False)
                        continue
                    info = AsyncServiceInfo(service_type, name)
                    if not await info.async_request(aiozc.zeroconf, 3000):
                        log.info("mDNS: %s did not resolve", name)
                        continue
                    addresses = info.parsed_addresses(IPVersion.V4Only)
                    if not addresses or not info.port:
                        continue
                    method = "udp" if "._udp." in service_type else "tcp"
                    endpoint = (method, addresses[0], int(info.port))
                    old = known.get(name)
                    if old == endpoint:
                        continue
                    if old is not None:
                        on_change(*old, False)
                    known[name] = endpoint
                    on_change(*endpoint, True)
        finally:
            with anyio.CancelScope(shield=True):
                await browser.async_cancel()
                await aiozc.async_close()


@dataclass
class _Device:
    found: Found
    enabled: bool
    unwatch: list[Callable[[], None]]


class MdnsDevices:
    """The "Discovered devices" of one Discovery (see the module docstring)."""

    def __init__(self, discovery: Discovery, browser: Any = None) -> None:
        self.discovery = discovery
        cfg = discovery.cfg
        self.browser = browser or cfg.mdns_browser or ZeroconfBrowser(tuple(cfg.mdns_interfaces))
        self.devices: dict[str, _Device] = {}  # by ident
        self._endpoints: dict[tuple[str, str, int], str | None] = {}  # -> ident (None: being probed)
        self._tg: Any = None

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                await self.browser.run(self._on_change)
            except Exception as exc:  # noqa: BLE001 - no multicast, no network: the rest works
                log.warning("mDNS discovery stopped: %s", exc)
            await anyio.sleep_forever()

    # -- announcements ----------------------------------------------------------------------------
    def _on_change(self, method: str, host: str, port: int, present: bool) -> None:
        endpoint = (method, host, port)
        if present:
            if endpoint not in self._endpoints and self._tg is not None:
                self._endpoints[endpoint] = None
                self._tg.start_soon(self._add, endpoint)
            return
        ident = self._endpoints.pop(endpoint, None)
        if ident is not None:
            self._remove(ident)

    def _typed_by_user(self, endpoint: tuple[str, str, int]) -> bool:
        sup = self.discovery.sup
        configured = list(sup.config.force_devices) + list(sup.saved)
        return any((s.method, s.target, s.rate) == endpoint for s in configured)

    async def _add(self, endpoint: tuple[str, str, int]) -> None:
        method, host, port = endpoint
        if self._typed_by_user(endpoint):
            log.info("mDNS: %s:%s:%d is in the device list already", method, host, port)
            return
        found = await self._probe(method, host, port)
        if endpoint not in self._endpoints:  # gone while probing
            return
        if found is None or not found.known or not found.ident:
            log.warning("mDNS: %s:%s:%d announced itself but %s", method, host, port,
                        "does not answer" if found is None else (found.problem or "has no serial"))
            self._endpoints.pop(endpoint, None)
            return
        if found.ident in self.devices:  # the same device under another address
            self._endpoints[endpoint] = None
            return
        self._endpoints[endpoint] = found.ident
        settings = self.discovery.settings
        group = f"/Settings/Devices/{found.ident}"
        known_before = isinstance(await settings.get(group), dict)
        path = device_setting(found.ident, "Enabled")
        value = (await settings.add([Setting(path, 1 if known_before else 0, 0, 1)])).get(path, 0)
        custom = await settings.get(device_setting(found.ident, "CustomName"))
        name = custom if isinstance(custom, str) and custom else found.product
        dev = _Device(found, bool(value), [])
        self.devices[found.ident] = dev
        dev.unwatch.append(settings.watch(path, lambda _p, v, ident=found.ident: self._setting_changed(ident, v)))
        log.info("mDNS: discovered %s serial %s at %s (%s)", found.model, found.serial, found.spec,
                 "enabled" if dev.enabled else "disabled: enable it under Discovered devices")
        mgmt = self.discovery.management
        if mgmt is not None:
            mgmt.add_device(found.ident, name, found.serial, dev.enabled)
        self._apply()

    async def _probe(self, method: str, host: str, port: int) -> Found | None:
        link = UdpLink(host, port) if method == "udp" else TcpLink(host, port, connect_timeout=PROBE_TIMEOUT)
        try:
            for unit in units_for(method):
                try:
                    found = await probe_unit(link, DeviceSpec(method, host, port, unit), timeout=PROBE_TIMEOUT)
                except LinkDown:
                    return None
                if found is not None:
                    return found
            return None
        finally:
            with anyio.CancelScope(shield=True):
                await link.aclose()

    def _remove(self, ident: str) -> None:
        dev = self.devices.pop(ident, None)
        if dev is None:
            return
        for undo in dev.unwatch:
            undo()
        log.info("mDNS: %s at %s left the network", ident, dev.found.spec)
        if self.discovery.management is not None:
            self.discovery.management.remove_device(ident)
        self._apply()

    # -- the Enabled switch -----------------------------------------------------------------------
    def set_enabled(self, ident: str, enabled: bool) -> None:
        """The GUI's switch (``/Devices/<ident>/Enabled``): store it, start or stop the device."""
        dev = self.devices.get(ident)
        if dev is None:
            return
        self._setting_changed(ident, int(enabled))
        if self._tg is not None:
            self._tg.start_soon(self._store_enabled, ident, enabled)

    async def _store_enabled(self, ident: str, enabled: bool) -> None:
        code = await self.discovery.settings.set(device_setting(ident, "Enabled"), int(enabled))
        if code != 0:
            log.warning("cannot store %s Enabled=%d (settings answered %s)", ident, enabled, code)

    def _setting_changed(self, ident: str, value: Any) -> None:
        dev = self.devices.get(ident)
        if dev is None or value is None:
            return
        enabled = bool(self.discovery._flag(value))
        if enabled == dev.enabled:
            return
        dev.enabled = enabled
        log.info("mDNS: %s %s", ident, "enabled" if enabled else "disabled")
        if self.discovery.management is not None:
            self.discovery.management.set_enabled(ident, enabled)
        self._apply()

    def specs(self) -> list[DeviceSpec]:
        return [d.found.spec for d in self.devices.values() if d.enabled]

    def _apply(self) -> None:
        self.discovery.sup.set_source("mdns", self.specs())
        self.discovery.enable_due()  # which devices are mDNS ones (left alone) changed
