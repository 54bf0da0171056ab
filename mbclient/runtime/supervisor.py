"""The supervisor: one task per configured device, and the process-wide watchdogs.

Structured concurrency (anyio task group) gives every device its own task and cancel
scope. A device's failure is caught, logged and retried inside that device's task, so it
can never disturb another device; only with ``-x/--exit`` does an error end the process
(runit then restarts it, the upstream behaviour some installations rely on).

The device list is the union of ``-F/--force-devices`` and the setting
``/Settings/ModbusClient/<port-name>/Devices``; a change of that setting at runtime starts
and stops device tasks without touching the others.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.abc

from .. import devices
from ..dbus.settings import Setting, SettingsClient
from ..errors import ConfigError, MbclientError
from ..spec import DeviceSpec, parse_spec
from ..transports import LinkPool
from .backoff import Backoff
from .config import RuntimeConfig
from .device_task import DeviceTask, DuplicateDevice, RuntimeContext
from .identity import setting_element
from .watchdog import EXIT_RSS, LoopStallWatchdog, RssCeilingExceeded, RssWatchdog

log = logging.getLogger("mbclient.supervisor")

EXIT_OK = 0
EXIT_ERROR = 1


class FatalDeviceError(Exception):
    """A device error with ``-x``: the whole process stops (exit status 1)."""


def devices_setting(port_name: str) -> str:
    return f"/Settings/ModbusClient/{setting_element(port_name)}/Devices"


def parse_device_list(text: Any) -> tuple[list[DeviceSpec], list[str]]:
    """Parse the comma list stored in settings, tolerating junk: (specs, problems).

    The setting is edited by people and by the GUI; one bad entry must not stop the rest.
    """
    specs: list[DeviceSpec] = []
    problems: list[str] = []
    if not isinstance(text, str):
        return specs, problems
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            spec = parse_spec(item)
            if spec.model:
                devices.check_index(devices.get_model(spec.model), spec.index)
            specs.append(spec)
        except ConfigError as exc:
            problems.append(str(exc))
    return specs, problems


def unit_key(spec: DeviceSpec) -> tuple[Any, ...]:
    """One task per device: the same port (whatever baud or framing is written) or the
    same host and port (any letter case), the same unit address and device index."""
    if spec.is_serial:
        return ("serial", spec.device_path, spec.unit, spec.index)
    return (spec.method, spec.target.lower(), spec.rate, spec.unit, spec.index)


def _refines(general: DeviceSpec, specific: DeviceSpec) -> bool:
    """``specific`` is ``general`` (for the same unit key), perhaps with a model named."""
    return general.model in (None, specific.model) and replace(general, model=specific.model,
                                                                target=specific.target) == specific


def same_address(a: DeviceSpec, b: DeviceSpec) -> str:
    """One line for two specs that name the same unit differently."""
    where = f"unit {a.unit} on {a.device_path}" if a.is_serial else f"unit {a.unit} at {a.target}:{a.rate}"
    return f"{a} and {b} name the same address ({where}); give it once"


def merge_specs(
    *lists: Iterable[DeviceSpec], on_conflict: Callable[[DeviceSpec, DeviceSpec], None] | None = None,
) -> dict[tuple[Any, ...], DeviceSpec]:
    """Union by unit; a spec naming its model wins over the same spec without one. Two
    different specs for one address (another model, baud or framing) are a conflict:
    the first stays, ``on_conflict(kept, dropped)`` is told."""
    out: dict[tuple[Any, ...], DeviceSpec] = {}
    for specs in lists:
        for spec in specs:
            key = unit_key(spec)
            have = out.get(key)
            if have is None or (have.model is None and spec.model is not None and _refines(have, spec)):
                out[key] = spec
            elif not _refines(spec, have) and not _refines(have, spec) and on_conflict is not None:
                on_conflict(have, spec)
    return out


def check_no_conflicts(specs: Iterable[DeviceSpec]) -> None:
    """ConfigError (one line naming both) if two specs name the same address."""
    def conflict(kept: DeviceSpec, dropped: DeviceSpec) -> None:
        raise ConfigError(same_address(kept, dropped))

    merge_specs(specs, on_conflict=conflict)


@dataclass
class _Running:
    spec: DeviceSpec
    scope: anyio.CancelScope
    task: DeviceTask | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    after: _Running | None = None  # a predecessor for the same unit, still unpublishing


class Supervisor:
    """Owns the settings connection, the link pool and one task per device."""

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        links: Any = None,
        options_factory: Callable[[DeviceSpec], Any] | None = None,
    ) -> None:
        self.config = config
        self._links = links
        self._options_factory = options_factory
        self.running: dict[tuple[Any, ...], _Running] = {}
        self.saved: list[DeviceSpec] = []
        #: further device lists by source (mDNS-discovered devices the user enabled)
        self.sources: dict[str, list[DeviceSpec]] = {}
        self.discovery: Any = None  # mbclient.discovery.manager.Discovery while running
        self.ctx: RuntimeContext | None = None
        self.settings: SettingsClient | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.rss: RssWatchdog | None = None
        self.ready = anyio.Event()
        self._conflicts_told: set[str] = set()

    # ------------------------------------------------------------------------ public view
    def device(self, spec: DeviceSpec | str) -> DeviceTask | None:
        """The current DeviceTask of a configured spec (tests, probes)."""
        if isinstance(spec, str):
            spec = parse_spec(spec)
        r = self.running.get(unit_key(spec))
        return r.task if r else None

    # ------------------------------------------------------------------------------- run
    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        links = self._links if self._links is not None else LinkPool()
        settings = self.settings = await SettingsClient.connect(
            cfg.bus_address, wait=cfg.settings_wait, embedded_path=cfg.settings_file,
            force_embedded=cfg.settings_file is not None, wait_log_interval=cfg.settings_wait_log,
        )
        self.ctx = RuntimeContext(config=cfg, links=links, settings=settings, options_factory=self._options_factory)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if cfg.stall_timeout:
                    tg.start_soon(LoopStallWatchdog(cfg.stall_timeout).run, name="stall-watchdog")
                if cfg.max_rss:
                    self.rss = RssWatchdog(cfg.max_rss, cfg.rss_check_interval, cfg.rss_log_interval)
                    tg.start_soon(self.rss.run, name="rss-watchdog")
                if cfg.metrics_port:
                    from ..metrics import serve_supervisor_metrics  # optional feature, loaded on demand

                    await tg.start(serve_supervisor_metrics, self, cfg.metrics_port)
                if cfg.discovery.enabled:  # the GUI's management service, early (before devices)
                    from ..discovery.manager import Discovery

                    self.discovery = await tg.start(Discovery(self).run)
                path = devices_setting(cfg.port_name)
                values = await settings.add([Setting(path, "")])
                self._saved_changed(path, values.get(path, ""))
                unwatch = settings.watch(path, self._saved_changed)
                log.info("%d device(s) configured (%d from -F, %d from %s)", len(self.running),
                         len(cfg.force_devices), len(self.saved), path)
                self.ready.set()
                task_status.started(self)
                try:
                    await anyio.sleep_forever()
                finally:
                    if callable(unwatch):
                        unwatch()
        finally:
            with anyio.CancelScope(shield=True):
                if hasattr(links, "aclose"):
                    try:
                        await links.aclose()
                    except Exception as exc:  # noqa: BLE001 - shutting down anyway
                        log.debug("closing links: %s", exc)
                await settings.close()

    # -------------------------------------------------------------------------- device list
    def _saved_changed(self, _path: str, value: Any) -> None:
        specs, problems = parse_device_list(value)
        for p in problems:
            log.warning("ignoring saved device: %s", p)
        self.saved = specs
        self.reconcile()

    def set_source(self, name: str, specs: list[DeviceSpec]) -> None:
        """Replace the device list of one source (discovery) and start/stop accordingly."""
        self.sources[name] = list(specs)
        if self._tg is not None:
            self.reconcile()

    def reconcile(self) -> None:
        """Start tasks for new devices, stop those no longer configured."""
        wanted = merge_specs(self.config.force_devices, self.saved, *self.sources.values(),
                             on_conflict=self._conflict)
        stopping: dict[tuple[Any, ...], _Running] = {}
        for key, r in list(self.running.items()):
            if wanted.get(key) != r.spec:
                log.info("[%s] removed from the configuration: stopping", r.spec)
                r.scope.cancel()
                stopping[key] = self.running.pop(key)
        for key, spec in wanted.items():
            if key not in self.running:
                self._start(key, spec, after=stopping.get(key))

    def _conflict(self, kept: DeviceSpec, dropped: DeviceSpec) -> None:
        line = same_address(kept, dropped)
        if line not in self._conflicts_told:  # once, not at every change of the setting
            self._conflicts_told.add(line)
            log.error("%s: %s is ignored", line, dropped)

    def _start(self, key: tuple[Any, ...], spec: DeviceSpec, after: _Running | None = None) -> None:
        assert self._tg is not None
        r = _Running(spec, anyio.CancelScope(), after=after)
        self.running[key] = r
        self._tg.start_soon(self._run_device, r, name=f"device {spec}")

    async def _run_device(self, r: _Running) -> None:
        """Run one device forever; a crash is logged and the device restarted after a pause."""
        assert self.ctx is not None
        restart = Backoff(base=5.0, cap=300.0)
        try:
            with r.scope:
                if r.after is not None:  # same unit, new spec: let the old service go first
                    await r.after.done.wait()
                    r.after = None
                while True:
                    r.task = DeviceTask(r.spec, self.ctx)
                    try:
                        await r.task.run()
                        return
                    except DuplicateDevice as exc:
                        if self.config.exit_on_error:
                            log.error("[%s] %s: exiting (-x)", r.spec, exc)
                            raise FatalDeviceError(f"{r.spec}: {exc}") from exc
                        # Not a failure to retry: it waits until the configuration changes.
                        log.error("[%s] %s", r.spec, exc)
                        await anyio.sleep_forever()
                    except Exception as exc:
                        if self.config.exit_on_error:
                            log.error("[%s] %s: exiting (-x)", r.spec, exc)
                            raise FatalDeviceError(f"{r.spec}: {exc}") from exc
                        delay = restart.next()
                        if isinstance(exc, MbclientError):  # a known condition: one line
                            log.error("[%s] device task failed: %s; restarting it in %.0f s", r.spec, exc, delay)
                        else:  # a bug: the traceback is worth its lines
                            log.exception("[%s] device task failed (%s); restarting it in %.0f s",
                                          r.spec, exc, delay)
                    await anyio.sleep(delay)
        finally:
            r.done.set()


def _flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for e in exc.exceptions:
            out.extend(_flatten(e))
        return out
    return [exc]


def _one_line_loop_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Errors that libraries report to the loop (e.g. the serial transport's "Fatal write
    error" when an adapter is pulled mid-write) become one log line: the link already
    handles the loss, and a traceback in multilog's 25 kB files would push out real events."""
    exc = context.get("exception")
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    log.warning("%s%s", context.get("message", "event loop error"), detail)


async def _serve(config: RuntimeConfig) -> None:
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # -d keeps asyncio's full report
        asyncio.get_running_loop().set_exception_handler(_one_line_loop_errors)
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await Supervisor(config).run()


def run_supervisor(config: RuntimeConfig) -> int:
    """Run until SIGTERM/SIGINT; map the outcome to the process exit status."""
    from .. import __version__

    log.info("mbclient %s starting", __version__)
    try:
        anyio.run(_serve, config, backend="asyncio")
    except BaseException as exc:  # noqa: BLE001 - mapped to an exit status below
        errors = _flatten(exc)
        if any(isinstance(e, RssCeilingExceeded) for e in errors):
            return EXIT_RSS
        if any(isinstance(e, KeyboardInterrupt) for e in errors):
            return EXIT_OK
        if any(isinstance(e, FatalDeviceError) for e in errors):
            return EXIT_ERROR  # already logged by the device's task
        config_errors = [e for e in errors if isinstance(e, ConfigError)]
        if config_errors:  # e.g. the bus is unreachable, settings already served elsewhere
            log.error("%s", config_errors[0])
            return 2
        log.critical("unexpected error", exc_info=exc)
        return EXIT_ERROR
    return EXIT_OK
