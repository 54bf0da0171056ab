"""Client of ``com.victronenergy.settings`` (Victron's localsettings or our embedded one).

The same calls run on a GX and on a laptop: :meth:`SettingsClient.connect` waits a few
seconds for the settings service and, if none appears (or when asked), starts the
embedded one (``localsettings.py``) on the same bus and then talks to it over D-Bus like
to the real thing.

* ``add`` declares settings with one ``AddSettings`` call (the default's D-Bus type
  decides the setting type: int -> ``i``, float -> ``d``, str -> ``s``; a bool default is
  sent as int, never ``b``, which localsettings would refuse with -3).
* ``watch`` follows changes through the ``PropertiesChanged`` signals localsettings sends
  per setting, using ONE match rule on the settings service for every watcher (the bus
  allows 1024 rules per connection; a rule per path would not scale).
* Device instances: ``/Settings/Devices/<ident>/ClassAndVrmInstance`` = ``"<role>:<n>"``;
  localsettings hands out the next free ``n`` of that class and keeps the record of a
  known ident, so the stored role (the user's choice) wins over the driver's default.
* :func:`mirror_setting` keeps a writable device path (``/CustomName``, ``/Position``) and
  its setting in step in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from ..errors import ConfigError, MbclientError
from ..items import ItemStore
from . import variants
from .bus import call_dbus, connect_bus, describe_bus, name_owner, wait_for_name
from .busitem import BUSITEM
from .localsettings import SERVICE, SETTINGS_IFACE, AddError, LocalSettings, parse_class_instance
from .service import ServiceError

log = logging.getLogger(__name__)

_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")
_CLASS = re.compile(r"[a-z][a-z0-9]*")
SettingValue = int | float | str
Watcher = Callable[[str, Any], None]


class SettingsError(MbclientError):
    """The settings service refused a request."""


@dataclass(frozen=True)
class Setting:
    """A setting to declare: absolute path under /Settings, default (its type), limits."""

    path: str
    default: SettingValue
    min: int | float | None = None
    max: int | float | None = None
    silent: bool = False

    def to_dbus(self) -> dict[str, Variant]:
        default = self.default
        if isinstance(default, bool):
            default = int(default)
        if isinstance(default, float):
            wrap: Callable[[Any], Variant] = lambda v: Variant("d", float(v))  # noqa: E731
        elif isinstance(default, int):
            wrap = lambda v: variants.wrap(int(v))  # noqa: E731
        elif isinstance(default, str):
            wrap = lambda v: Variant("s", str(v))  # noqa: E731
        else:
            raise TypeError(f"{self.path}: a setting default must be int, float or str")
        entry = {"path": Variant("s", self.path), "default": wrap(default)}
        if not isinstance(default, str):
            if self.min is not None:
                entry["min"] = wrap(self.min)
            if self.max is not None:
                entry["max"] = wrap(self.max)
        if self.silent:
            entry["silent"] = Variant("i", 1)
        return entry


@dataclass(frozen=True)
class ClassAndInstance:
    """A parsed ClassAndVrmInstance: the device's role (service type) and VRM instance."""

    role: str
    instance: int

    @classmethod
    def parse(cls, value: Any) -> ClassAndInstance | None:
        """``"grid:40"`` -> ClassAndInstance; None for anything that is not a service class
        (lower-case letters and digits) and a non-negative instance (``grid:-5``, ``:3``)."""
        parsed = parse_class_instance(value)
        if parsed is None or parsed[1] < 0 or not _CLASS.fullmatch(parsed[0]):
            return None
        return cls(*parsed)

    def __str__(self) -> str:
        return f"{self.role}:{self.instance}"


def device_setting(ident: str, name: str) -> str:
    """``/Settings/Devices/<ident>/<name>``; ``ident`` must be a valid path element."""
    if not _IDENT.fullmatch(ident):
        raise ValueError(f"device ident {ident!r} must be letters, digits and '_' (not leading)")
    return f"/Settings/Devices/{ident}/{name}"


async def _wait_for_settings(bus: MessageBus, bus_address: str | None, log_interval: float) -> None:
    """Block until somebody else serves the settings; one log line now and every interval."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    log.info("waiting for %s (Victron's localsettings) on %s", SERVICE, describe_bus(bus_address))
    while await wait_for_name(bus, SERVICE, log_interval) is None:
        log.warning("still waiting for %s after %.0f s (mbclient never serves it on a GX; "
                    "--settings FILE to use a file instead)", SERVICE, loop.time() - start)
    log.info("%s is there: using it", SERVICE)


class SettingsClient:
    """Talks to com.victronenergy.settings over its own connection. Use :meth:`connect`."""

    def __init__(self, bus: MessageBus, embedded: LocalSettings | None = None, *, timeout: float = 30.0) -> None:
        self.bus = bus
        self.embedded = embedded
        self.timeout = timeout
        self._watchers: list[tuple[str, Watcher]] = []
        self._rule: str | None = None

    @property
    def is_embedded(self) -> bool:
        """True when this process serves the settings itself."""
        return self.embedded is not None

    @classmethod
    async def connect(
        cls,
        bus_address: str | None = None,
        *,
        wait: float | None = 3.0,
        embedded_path: Path | str | None = None,
        force_embedded: bool = False,
        save_delay: float = 1.0,
        wait_log_interval: float = 60.0,
    ) -> SettingsClient:
        """Find the settings service (up to ``wait`` s) or serve the embedded one.

        ``wait=None`` (a GX): wait for the settings service as long as it takes, with a log
        line every ``wait_log_interval`` s, and never serve the name: on a slow boot runit
        starts services in parallel, and a process that took ``com.victronenergy.settings``
        before Victron's localsettings would leave every Venus service without settings.
        ``force_embedded`` (``--settings FILE``) serves the embedded store at once and is a
        ConfigError if another settings service already owns the name.
        """
        bus = await connect_bus(bus_address)
        embedded: LocalSettings | None = None
        try:
            if wait is None and not force_embedded:
                await _wait_for_settings(bus, bus_address, wait_log_interval)
            elif force_embedded:
                if await name_owner(bus, SERVICE):
                    raise ConfigError(f"{SERVICE} already runs on {describe_bus(bus_address)}; cannot serve a settings file")
                embedded = LocalSettings(embedded_path, bus_address, save_delay=save_delay)
                await embedded.start()
            elif await wait_for_name(bus, SERVICE, wait) is None:
                embedded = LocalSettings(embedded_path, bus_address, save_delay=save_delay)
                try:
                    await embedded.start()
                    log.info("no %s on the bus: serving settings from %s", SERVICE, embedded.file.path)
                except ServiceError:  # another process got there first: use theirs
                    embedded = None
            client = cls(bus, embedded)
            await client._subscribe()
            return client
        except BaseException:
            bus.disconnect()
            if embedded is not None:
                await embedded.stop()
            raise

    async def close(self) -> None:
        """Leave the bus; an embedded settings service saves what is pending and stops."""
        self._watchers.clear()
        with contextlib.suppress(Exception):
            self.bus.remove_message_handler(self._on_message)
        self.bus.disconnect()
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None

    # -- calls -----------------------------------------------------------------------------------------
    async def _call(self, path: str, member: str, signature: str = "", body: list | None = None,
                    interface: str = BUSITEM) -> Message:
        msg = Message(destination=SERVICE, path=path, interface=interface, member=member,
                      signature=signature, body=body or [])
        try:
            async with asyncio.timeout(self.timeout):
                return await self.bus.call(msg)
        except TimeoutError:
            raise SettingsError(f"{SERVICE} did not answer {member} on {path} within {self.timeout:g} s") from None

    async def add(self, settings: list[Setting]) -> dict[str, SettingValue]:
        """Declare settings (existing values are kept); returns path -> current value."""
        if not settings:
            return {}
        reply = await self._call("/", "AddSettings", "aa{sv}", [[s.to_dbus() for s in settings]], SETTINGS_IFACE)
        if reply.message_type is MessageType.ERROR:
            raise SettingsError(f"AddSettings failed: {reply.error_name}: {reply.body[0] if reply.body else ''}")
        values: dict[str, SettingValue] = {}
        errors = []
        for setting, result in zip(settings, reply.body[0], strict=False):
            code = variants.unwrap(result.get("error", Variant("i", 0)))
            if code != 0:
                meaning = AddError(code).name.lower().replace("_", " ") if code in AddError._value2member_map_ else "error"
                errors.append(f"{setting.path}: {code} ({meaning})")
            elif "value" in result:
                values[setting.path] = variants.unwrap(result["value"])
        if errors:
            raise SettingsError("settings refused: " + "; ".join(errors))
        return values

    async def get(self, path: str) -> Any:
        """Current value (a dict for a group); None if there is no such setting."""
        reply = await self._call(path, "GetValue")
        if reply.message_type is MessageType.ERROR:
            return None
        return variants.unwrap_published(reply.body[0])

    async def set(self, path: str, value: SettingValue) -> int:
        """SetValue: 0 accepted, non-zero refused (wrong type, outside min/max, no such path)."""
        reply = await self._call(path, "SetValue", "v", [variants.wrap(value)])
        if reply.message_type is MessageType.ERROR:
            return -1
        return reply.body[0]

    async def remove(self, paths: list[str]) -> list[int]:
        """RemoveSettings: 0 removed, -1 not found, per path."""
        reply = await self._call("/", "RemoveSettings", "as", [list(paths)], SETTINGS_IFACE)
        if reply.message_type is MessageType.ERROR:
            raise SettingsError(f"RemoveSettings failed: {reply.error_name}")
        return list(reply.body[0])

    # -- watching ----------------------------------------------------------------------------------------
    async def _subscribe(self) -> None:
        self.bus.add_message_handler(self._on_message)
        self._rule = f"type='signal',sender='{SERVICE}',interface='{BUSITEM}',member='PropertiesChanged'"
        await call_dbus(self.bus, "AddMatch", "s", [self._rule])

    def watch(self, path_or_prefix: str, callback: Watcher) -> Callable[[], None]:
        """Call ``callback(path, value)`` when that setting (or any below that group) changes.

        ``value`` is None when the setting was removed. Returns an unsubscribe function.
        """
        key = path_or_prefix.rstrip("/") or "/"
        entry = (key, callback)
        self._watchers.append(entry)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._watchers.remove(entry)

        return unsubscribe

    def _on_message(self, msg: Message) -> None:
        if (
            msg.message_type is not MessageType.SIGNAL
            or msg.member != "PropertiesChanged"
            or msg.interface != BUSITEM
            or msg.signature != "a{sv}"
        ):
            return
        changes = msg.body[0]
        if "Value" not in changes:
            return
        path, value = msg.path, variants.unwrap_published(changes["Value"])
        for key, callback in list(self._watchers):
            if key == "/" or path == key or path.startswith(key + "/"):
                try:
                    callback(path, value)
                except Exception:
                    log.exception("settings watcher for %s failed", key)

    # -- device instances ---------------------------------------------------------------------------------
    async def claim_device(self, ident: str, role: str, preferred: int) -> ClassAndInstance:
        """Declare ClassAndVrmInstance with default ``role:preferred``; return what is stored.

        For a known ident that is the stored record (the role may differ from ``role``:
        the user changed it); for a new one the preferred number or the next free one.
        """
        path = device_setting(ident, "ClassAndVrmInstance")
        value = (await self.add([Setting(path, f"{role}:{preferred}")]))[path]
        parsed = ClassAndInstance.parse(value)
        if parsed is None:  # edited by hand or by a tool: repaired, so service and setting agree
            log.warning("%s holds %r, not '<class>:<instance>' with an instance >= 0: set to %s:%d",
                        path, value, role, preferred)
            return await self.set_class_and_instance(ident, role, preferred)
        return parsed

    async def claim_instance(self, ident: str, role: str, preferred: int) -> int:
        """The device instance localsettings settled on (see :meth:`claim_device`)."""
        return (await self.claim_device(ident, role, preferred)).instance

    async def set_class_and_instance(self, ident: str, role: str, instance: int) -> ClassAndInstance:
        """Write ``role:instance`` (a role change keeps the number if it is free in the new
        class) and return what localsettings settled on."""
        path = device_setting(ident, "ClassAndVrmInstance")
        if await self.set(path, f"{role}:{instance}") != 0:
            raise SettingsError(f"{SERVICE} refused {role}:{instance} for {path}")
        parsed = ClassAndInstance.parse(await self.get(path))
        if parsed is None:
            raise SettingsError(f"{path} does not hold '<class>:<instance>'")
        return parsed

    def watch_device(
        self, ident: str, callback: Callable[[ClassAndInstance], None],
        on_invalid: Callable[[Any], None] | None = None,
    ) -> Callable[[], None]:
        """Follow later changes of the device's class and instance (GUI VRM-instance page);
        ``on_invalid(value)`` hears a value that is no class and instance."""
        path = device_setting(ident, "ClassAndVrmInstance")

        def on_change(_path: str, value: Any) -> None:
            parsed = ClassAndInstance.parse(value)
            if parsed is not None:
                callback(parsed)
            elif on_invalid is not None and value is not None:
                on_invalid(value)

        return self.watch(path, on_change)


def mirror_setting(settings: SettingsClient, store: ItemStore, item_path: str, setting_path: str) -> Callable[[], None]:
    """Keep writable item ``item_path`` and setting ``setting_path`` in step.

    A remote SetValue on the item is validated by the item (kind, min/max, choices),
    accepted at once (SetValue must answer fast) and written to the setting in the
    background; if the settings service refuses it, the item returns to the stored value.
    A change of the setting from elsewhere (GUI, MQTT) updates the item and flushes.
    The item must already exist (with the value ``add`` returned). Returns an undo.
    """
    item = store.item(item_path)
    previous_hook = item.on_write
    tasks: set[asyncio.Task] = set()

    async def write_through(value: Any) -> None:
        try:
            code = await settings.set(setting_path, value)
        except Exception as exc:
            log.warning("cannot store %s in %s: %s", item_path, setting_path, exc)
            code = -1
        if code != 0:
            stored = await settings.get(setting_path)
            if stored is not None and store.set(item_path, stored):
                store.flush()

    def on_write(value: Any) -> bool:
        if previous_hook is not None and not previous_hook(value):
            return False
        task = asyncio.get_running_loop().create_task(write_through(value))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    def on_setting(_path: str, value: Any) -> None:
        if value is None or item_path not in store:
            return
        clean = store.item(item_path).clean
        tidy = clean(value) if clean is not None else value
        if tidy != value:  # written elsewhere untidied: the setting follows what is published
            task = asyncio.get_running_loop().create_task(write_through(tidy))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if store.set(item_path, tidy):
            store.flush()

    item.on_write = on_write
    unwatch = settings.watch(setting_path, on_setting)

    def undo() -> None:
        unwatch()
        if item_path in store:
            store.item(item_path).on_write = previous_hook
        for task in tasks:
            task.cancel()

    return undo
