"""Discovery inside the running service: the GUI's contract, AutoScan, scans on request.

One ``Discovery`` per process, started by the supervisor right after the settings service
is reached (before any device is probed, as the stock client registers its service):

* settings ``/Settings/ModbusClient/<port>/{Devices, AutoScan}`` (AutoScan 0 for the
  network instance, 1 for a serial port, range 0..1); every change of ``Devices`` (the
  GUI's Add/Remove) is followed by the list's canonical rewrite (``devlist``) after the
  supervisor has started and stopped the devices it names;
* the management service ``com.victronenergy.modbusclient.<port>`` (``/Scan``,
  ``/ScanProgress``, ``/Devices/<ident>/...``);
* scans: a ``/Scan`` write starts one (on a serial port a full one, units 1..247); AutoScan
  runs a quick one when, ``start_delay`` after start, nothing or not everything saved is
  online, and again every ``rescan_interval`` while a saved device is missing; ``-f`` runs
  a full one at start. Devices a scan finds are appended to ``Devices`` and so started.
* with ``-x`` on a serial port (serial-starter's probe cycle): when nothing is online
  and the start-up scan found nothing, the process exits with status 1 so the next
  driver gets the port;
* ``/Settings/Devices/<ident>/Enabled`` is 1 for every configured device once it is
  published (the stock rule: forced to 1 for saved devices): looked at when a device's
  service goes on the bus (``RuntimeContext.on_published``), when the list of mDNS
  devices changes, and again a second later only while a settings call failed;
* mDNS (network instance): ``mdns.MdnsDevices`` keeps the discovered devices.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ..dbus.management import ManagementService
from ..dbus.service import ServiceError
from ..dbus.settings import Setting, device_setting
from ..errors import ConfigError, LinkDown
from ..runtime.identity import setting_element
from ..spec import DeviceSpec
from . import devlist
from .netscan import NetworkScan, automatic_networks, host_interfaces, parse_networks
from .probe import Found
from .serialscan import SerialScan

if TYPE_CHECKING:
    from ..runtime.supervisor import Supervisor

log = logging.getLogger("mbclient.discovery")


def autoscan_setting(port_name: str) -> str:
    return f"/Settings/ModbusClient/{setting_element(port_name)}/AutoScan"


class Discovery:
    """See the module docstring. ``await tg.start(discovery.run)``."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.cfg = supervisor.config.discovery
        self.port_name = supervisor.config.port_name
        self.serial = self.cfg.serial_port is not None
        assert supervisor.settings is not None and supervisor.ctx is not None
        self.settings = supervisor.settings
        self.links = supervisor.ctx.links
        from ..runtime.supervisor import devices_setting

        self.devices_path = devices_setting(self.port_name)
        self.autoscan_path = autoscan_setting(self.port_name)
        self.autoscan = 1 if self.serial else 0
        self.management: ManagementService | None = None
        self.scanner: SerialScan | NetworkScan | None = None
        self.busy = False  # a scan is being prepared or runs (set before the first await)
        self._stop_requested = False
        self.scans = 0  # completed
        self.last_found: list[Found] = []
        self.mdns: Any = None
        self.passive = False  # another process owns the management service
        self._tg: anyio.abc.TaskGroup | None = None
        self._save_lock = anyio.Lock()
        self._enabled_done: set[str] = set()
        self._last_progress = 0.0
        self._unwatch: list[Any] = []
        self._enable_due = anyio.Event()  # a device was published: its Enabled setting to be set

    # ------------------------------------------------------------------------------------ run
    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        values = await self.settings.add([
            Setting(self.devices_path, ""),
            Setting(self.autoscan_path, self.autoscan, 0, 1),
        ])
        self.autoscan = self._flag(values.get(self.autoscan_path, self.autoscan))
        mgmt = ManagementService(self.port_name, self.sup.config.bus_address, on_scan=self.request_scan,
                                 on_enable=self._enable_requested)
        try:
            await mgmt.start()
            self.management = mgmt
        except ServiceError as exc:
            # Another client (the stock dbus-modbus-client kept running) serves this port's
            # GUI contract: two clients must never scan, rewrite the list or run mDNS devices
            # twice over, so all of that stays with it.
            log.warning("%s; scans, AutoScan, mDNS and the Devices list's upkeep are left to that client", exc)
            self.passive = True
            task_status.started(self)
            await anyio.sleep_forever()
        self._unwatch.append(self.settings.watch(self.autoscan_path, self._autoscan_changed))
        self._unwatch.append(self.settings.watch(self.devices_path, self._devices_changed))
        hooks = self.sup.ctx.on_published if self.sup.ctx is not None else []
        hooks.append(self._published)
        self._unwatch.append(lambda: hooks.remove(self._published))
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._devices_changed(self.devices_path, values.get(self.devices_path, ""))
                if not self.serial and self.cfg.mdns:
                    self._start_mdns(tg)
                task_status.started(self)
                tg.start_soon(self._enable_loop)
                await self._autoscan_loop()
                await anyio.sleep_forever()
        finally:
            for undo in self._unwatch:
                undo()
            if self.management is not None:
                with anyio.CancelScope(shield=True):
                    await self.management.stop()

    def _start_mdns(self, tg: anyio.abc.TaskGroup) -> None:
        try:
            from .mdns import MdnsDevices
        except ImportError as exc:  # zeroconf missing: everything else works
            log.warning("mDNS discovery unavailable: %s", exc)
            return
        self.mdns = MdnsDevices(self)
        tg.start_soon(self.mdns.run)

    @staticmethod
    def _flag(value: Any) -> int:
        try:
            return 1 if int(value) else 0
        except (TypeError, ValueError):
            return 0

    # ------------------------------------------------------------------------------ settings
    def _autoscan_changed(self, _path: str, value: Any) -> None:
        if value is not None:
            self.autoscan = self._flag(value)
            log.info("AutoScan %s", "on" if self.autoscan else "off")

    def _devices_changed(self, _path: str, value: Any) -> None:
        """After every change the list is rewritten canonically. The rewrite runs as a task:
        by then the supervisor's own watcher has started and stopped the devices."""
        if value is None or self._tg is None:
            return
        self._enable_due.set()
        text, _specs, _problems = devlist.canonical(value)
        if text != value:
            self._tg.start_soon(self._rewrite)

    async def _rewrite(self) -> None:
        async with self._save_lock:
            current = await self.settings.get(self.devices_path)
            if current is None:
                return
            text, _specs, _problems = devlist.canonical(current)
            if text != current:
                log.info("%s rewritten as %r", self.devices_path, text)
                await self.settings.set(self.devices_path, text)

    async def save(self, specs: list[DeviceSpec]) -> None:
        """Append ``specs`` to the saved list (the supervisor then starts them)."""
        async with self._save_lock:
            current = await self.settings.get(self.devices_path)
            text = devlist.with_added(current or "", specs)
            if text != current:
                await self.settings.set(self.devices_path, text)

    # ------------------------------------------------------------------------------- scanning
    def request_scan(self, start: bool) -> None:
        """A ``/Scan`` write (must not block). A serial port gets a full scan."""
        if not start:
            if self.busy:
                log.info("scan stopped on request")
                self._stop_requested = True
                if self.scanner is not None:
                    self.scanner.stop()
            return
        if self.busy:
            done = f" ({self._percent(self.scanner):.0f}%)" if self.scanner is not None else ""
            log.info("a scan is already running%s: request ignored", done)
            self._publish_scan(force=True)  # /Scan reads back the running state
            return
        if self._tg is not None:
            self.busy = True
            self._tg.start_soon(self.scan, self.serial)

    @staticmethod
    def _percent(scanner: SerialScan | NetworkScan) -> float:
        return 100.0 * scanner.done / scanner.total if scanner.total else 0.0

    def _publish_scan(self, force: bool = False) -> None:
        if self.management is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < self.cfg.progress_interval:
            return
        self._last_progress = now
        sc = self.scanner
        self.management.set_scan(self.busy, None if sc is None else self._percent(sc))

    async def scan(self, full: bool = False) -> list[Found]:
        """One scan (nothing if one runs already); returns what answered."""
        if self.scanner is not None:
            return []
        self.busy = True
        self._stop_requested = False
        self._publish_scan(force=True)
        try:
            scanner = await self._make_scanner(full)
        except ConfigError as exc:
            log.warning("cannot scan: %s", exc)
            scanner = None
        if scanner is None or self._stop_requested:
            self.busy = False
            self._publish_scan(force=True)
            return []
        self.scanner = scanner
        t0 = time.monotonic()
        what = self.cfg.serial_port if self.serial else "the network"
        try:
            found = await scanner.run()
        except LinkDown as exc:
            log.warning("scan of %s stopped: %s", what, exc)
            found = list(scanner.found)
        finally:
            self.scanner = None
            self.busy = False
            self._publish_scan(force=True)
        self.scans += 1
        self.last_found = found
        log.info("scan of %s %s after %.1f s: %d device(s) found", what,
                 "stopped" if scanner.stopped else "completed", time.monotonic() - t0, len(found))
        return found

    async def _make_scanner(self, full: bool) -> SerialScan | NetworkScan | None:
        cfg = self.cfg
        if self.serial:
            assert cfg.serial_port is not None
            port = cfg.serial_port
            if port.startswith("/dev/") and "/" not in port[5:]:
                port = port[5:]  # saved as the stock client writes it: rtu:ttyUSB0:9600:1
            path = DeviceSpec(cfg.mode, port, 9600, 1).device_path
            skip = [s.unit for s in self._configured() if s.is_serial and s.device_path == path]
            return SerialScan(self.links, port, mode=cfg.mode, rates=cfg.rates or None, full=full,
                              skip_units=skip, quick_timeout=cfg.quick_timeout, full_timeout=cfg.full_timeout,
                              on_found=self._found, on_progress=self._progress)
        ifaces = await host_interfaces()
        nets = parse_networks(cfg.networks) if cfg.networks else automatic_networks(ifaces)
        if not nets:
            log.warning("no network to scan")
            return None
        taken = {(s.method, s.target, s.rate) for s in self._configured() if not s.is_serial}
        return NetworkScan(nets, port=cfg.port, own={i.ip for _n, i in ifaces},
                           skip=lambda s: (s.method, s.target, s.rate) in taken,
                           timeout=cfg.net_timeout, concurrency=cfg.net_concurrency,
                           on_found=self._found, on_progress=self._progress)

    def _configured(self) -> list[DeviceSpec]:
        return [r.spec for r in self.sup.running.values()]

    def _progress(self, _done: int, _total: int) -> None:
        self._publish_scan()

    def _found(self, found: Found) -> None:
        if not found.known:
            log.warning("[%s] %s; add it with its model named (spec:<model>, see --models)", found.spec,
                        found.problem)
            return
        log.info("[%s] found %s serial %s", found.spec, found.model, found.serial)
        if self._tg is not None:
            self._tg.start_soon(self.save, [found.spec])

    # ------------------------------------------------------------------------------- AutoScan
    def _online(self) -> tuple[int, int]:
        """(configured, online) devices of this process."""
        from ..runtime.device_task import DeviceState

        tasks = [r.task for r in self.sup.running.values()]
        return len(tasks), sum(1 for t in tasks if t is not None and t.state is DeviceState.ONLINE)

    async def _wait_start(self) -> None:
        """Until every configured device is online, or ``start_delay`` passed."""
        await self.sup.ready.wait()  # the saved list has been read and its devices started
        deadline = time.monotonic() + self.cfg.start_delay
        while time.monotonic() < deadline:
            configured, online = self._online()
            if configured == online:
                return
            await anyio.sleep(min(0.1, self.cfg.start_delay))

    async def _autoscan_loop(self) -> None:
        cfg = self.cfg
        found: list[Found] = []
        if self.serial and cfg.force_scan:
            found = await self.scan(full=True)
        else:
            await self._wait_start()
            configured, online = self._online()
            if self.autoscan and (configured == 0 or online < configured):
                found = await self.scan(full=False)
        # units that answer but match no model do not make the port ours
        if self.serial and self.sup.config.exit_on_error and not any(f.known for f in found) \
                and self._online()[1] == 0:
            from ..runtime.supervisor import FatalDeviceError

            log.error("nothing answers on %s: exiting (-x) so that the next driver can try the port",
                      cfg.serial_port)
            raise FatalDeviceError(f"nothing found on {cfg.serial_port}")
        while True:
            await anyio.sleep(cfg.rescan_interval)
            configured, online = self._online()
            if self.autoscan and online < configured and not self.busy:
                log.info("%d of %d device(s) not online: AutoScan", configured - online, configured)
                await self.scan(full=False)

    # --------------------------------------------------------------------- per-device Enabled
    def _published(self, _task: Any) -> None:
        self._enable_due.set()

    def enable_due(self) -> None:
        """Look at the Enabled settings again (the mDNS device list changed)."""
        self._enable_due.set()

    async def _enable_loop(self) -> None:
        """Sets the Enabled settings whenever a device was published; sleeps otherwise
        (a settings call that failed is retried a second later)."""
        while True:
            self._enable_due = anyio.Event()
            if not await self._enable_configured():
                await anyio.sleep(1.0)
                continue
            await self._enable_due.wait()

    async def _enable_configured(self) -> bool:
        """``/Settings/Devices/<ident>/Enabled`` = 1 for configured, published devices.
        False if a settings call failed (to be tried again)."""
        done = True
        mdns_specs = set(self.sup.sources.get("mdns", ())) if hasattr(self.sup, "sources") else set()
        for r in list(self.sup.running.values()):
            task = r.task
            if task is None or not task.published.is_set() or not task.ident or r.spec in mdns_specs:
                continue
            if task.ident in self._enabled_done:
                continue
            path = device_setting(task.ident, "Enabled")
            try:
                value = (await self.settings.add([Setting(path, 1, 0, 1)])).get(path)
                if value != 1:
                    await self.settings.set(path, 1)
            except Exception as exc:  # noqa: BLE001 - retried a second later
                log.debug("%s: %s", path, exc)
                done = False
                continue
            self._enabled_done.add(task.ident)
        return done

    def _enable_requested(self, ident: str, enabled: bool) -> None:
        if self.mdns is not None:
            self.mdns.set_enabled(ident, enabled)
