"""An embedded ``com.victronenergy.settings``, compatible with Victron's localsettings.

Why: on a laptop or a non-Venus box there is no localsettings, yet device instances,
roles, custom names and positions must persist. Rather than a second code path, mbclient
then serves the same D-Bus API itself, so the device code talks to settings exactly as
on a GX (reference §8; behaviour checked against localsettings.py 1.76):

* ``com.victronenergy.Settings`` on ``/`` and on every group: ``AddSetting``,
  ``AddSilentSetting`` (``ssvsvv -> i``), ``AddSettings`` (``aa{sv} -> aa{sv}``; the D-Bus
  type of ``default`` decides the setting type), ``RemoveSettings`` (``as -> ai``); error
  codes 0, -2 underscore, -3 type, -4 path, -5 type differs, -6 default, -7 range,
  -8 group, -9 not under /Settings. Adding an existing setting never changes its value.
* ``com.victronenergy.BusItem`` per setting: ``GetValue``, ``GetText``, ``SetValue``
  (0 or -1: unconvertible or outside min/max), ``GetMin``/``GetMax`` (int 0 if unset),
  ``GetDefault``, ``SetDefault``; plus ``GetAttributes``/``GetSilent``. Groups answer
  ``GetValue``/``GetText`` with their subtree keyed relative to the group; ``/`` also
  ``GetItems``. Every change is signalled with ``PropertiesChanged`` on the setting
  (localsettings never sends ItemsChanged); a removal sends an invalid value.
* ``/Settings/Devices/<ident>/ClassAndVrmInstance`` (``"<class>:<n>"``) is unique per
  class: a requested number that is taken is bumped to the next free one; the record of
  an existing ident is kept as is; a class change is checked against the new class.

Served by one raw handler (``busitem.py``), persisted through ``settingsfile.py``: the
first change starts a short timer (``save_delay``), later changes ride along, ``stop()``
writes what is pending. Standalone: ``python -m mbclient.dbus.localsettings --file F
[--dbus ADDRESS] [--delay S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import signal
import sys
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from dbus_fast import Message, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus

from ..errors import ConfigError, MbclientError
from . import variants
from .bus import connect_bus, describe_bus, wait_closed
from .busitem import BUSITEM, BusItemTree, Method, method_table, signal as signal_spec
from .service import ServiceError
from .settingsfile import SettingsFile, default_settings_path

log = logging.getLogger(__name__)

SERVICE = "com.victronenergy.settings"
SETTINGS_IFACE = "com.victronenergy.Settings"
OK, ERROR = 0, -1
_ELEMENT = re.compile(r"[A-Za-z0-9_]+")


class AddError(IntEnum):
    """AddSetting/AddSettings result codes (localsettings ``AddSettingError``)."""

    OK = 0
    UNDERSCORE_PREFIX = -2
    UNKNOWN_TYPE = -3
    INVALID_PATH = -4
    TYPE_DIFFERS = -5
    INVALID_DEFAULT = -6
    DEFAULT_OUT_OF_RANGE = -7
    IS_GROUP = -8
    NOT_IN_SETTINGS = -9


@dataclass
class Record:
    """One setting: type ``'i'``, ``'f'`` or ``'s'`` and its attributes."""

    type: str
    value: Any
    default: Any
    min: Any = None
    max: Any = None
    silent: bool = False

    @property
    def text(self) -> str:
        return str(self.value)


def convert(kind: str, raw: Any) -> int | float | str | None:
    """Convert a written value to a setting type the way localsettings does; None if not."""
    raw = variants.unwrap(raw)
    if isinstance(raw, (list, dict, tuple, bytes, bytearray)) or raw is None:
        return None
    try:
        if kind == "i":
            if isinstance(raw, float) and not math.isfinite(raw):
                return None
            return int(raw)
        if kind == "f":
            value = float(raw)
            return value if math.isfinite(value) else None
        if kind == "s":
            return raw if isinstance(raw, str) else str(raw)
    except (TypeError, ValueError):
        return None
    return None


def typed(kind: str, value: Any) -> Variant:
    """A setting value on the wire: int32 (int64 if large), double or string."""
    if kind == "i":
        return variants.wrap(int(value))
    if kind == "f":
        return Variant("d", float(value))
    return Variant("s", str(value))


def parse_class_instance(value: Any) -> tuple[str, int] | None:
    """``"grid:40"`` -> ``("grid", 40)``; anything else -> None."""
    if not isinstance(value, str):
        return None
    parts = value.split(":")
    if len(parts) != 2 or not parts[0]:
        return None
    try:
        return parts[0], int(parts[1])
    except ValueError:
        return None


def is_class_and_instance(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 5 and parts[1:3] == ["Settings", "Devices"] and parts[4] == "ClassAndVrmInstance"


class _SettingsTree(BusItemTree):
    def __init__(self, owner: LocalSettings) -> None:
        super().__init__()
        self.owner = owner
        o = owner
        leaf = [
            Method(BUSITEM, "GetValue", "", "v", lambda p: typed(o.records[p].type, o.records[p].value)),
            Method(BUSITEM, "GetText", "", "s", lambda p: o.records[p].text),
            Method(BUSITEM, "SetValue", "v", "i", o.set_value, ("value",)),
            Method(BUSITEM, "GetMin", "", "v", lambda p: o.limit(p, "min")),
            Method(BUSITEM, "GetMax", "", "v", lambda p: o.limit(p, "max")),
            Method(BUSITEM, "GetDefault", "", "v", o.get_default),
            Method(BUSITEM, "SetDefault", "", "i", o.set_default),
            Method(SETTINGS_IFACE, "GetAttributes", "", "vvvi", o.get_attributes),
            Method(SETTINGS_IFACE, "GetSilent", "", "b", lambda p: o.records[p].silent),
        ]
        group = [
            Method(BUSITEM, "GetValue", "", "v", o.group_values),
            Method(BUSITEM, "GetText", "", "v", o.group_texts),
            Method(BUSITEM, "SetDefault", "", "i", o.group_set_default),
            Method(SETTINGS_IFACE, "AddSetting", "ssvsvv", "i", o.add_setting_call,
                   ("group", "name", "default", "type", "min", "max")),
            Method(SETTINGS_IFACE, "AddSilentSetting", "ssvsvv", "i", o.add_silent_setting_call,
                   ("group", "name", "default", "type", "min", "max")),
            Method(SETTINGS_IFACE, "AddSettings", "aa{sv}", "aa{sv}", o.add_settings_call, ("settings",)),
            Method(SETTINGS_IFACE, "RemoveSettings", "as", "ai", o.remove_settings_call, ("paths",)),
        ]
        self.leaf_methods = method_table(*leaf)
        self.node_methods = method_table(*group)
        self.root_methods = method_table(*group, Method(BUSITEM, "GetItems", "", "a{sa{sv}}", o.get_items))
        self.signals = {"leaf": [signal_spec("PropertiesChanged", "a{sv}")]}

    def leaf_paths(self) -> dict[str, Record]:
        return self.owner.records

    def fixed_nodes(self) -> tuple[str, ...]:
        return ("/Settings", "/Settings/Devices")


class LocalSettings:
    """The embedded settings service. ``await start()`` ... ``await stop()``."""

    def __init__(self, path: Path | str | None = None, bus_address: str | None = None, *, save_delay: float = 1.0):
        self.file = SettingsFile(path if path is not None else default_settings_path())
        self.bus_address = bus_address
        self.save_delay = save_delay
        self.records: dict[str, Record] = {}
        self._tree = _SettingsTree(self)
        self._bus: MessageBus | None = None
        self._save_timer: asyncio.TimerHandle | None = None
        self._dirty = False

    @property
    def bus(self) -> MessageBus | None:
        return self._bus

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the file, export everything, then claim the name (DO_NOT_QUEUE)."""
        try:
            self.file.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the settings directory {self.file.path.parent}: {exc.strerror}") from None
        self.file.check_writable()
        self.records = {p: Record(**r) for p, r in self.file.load().items()}
        self._tree.structure_changed()
        bus = await connect_bus(self.bus_address)
        bus.add_message_handler(self._tree)
        try:
            reply = await bus.request_name(SERVICE, NameFlag.DO_NOT_QUEUE)
        except BaseException:
            bus.disconnect()
            raise
        if reply is not RequestNameReply.PRIMARY_OWNER:
            bus.disconnect()
            raise ServiceError(f"{SERVICE} already runs on {describe_bus(self.bus_address)}")
        self._bus = bus
        log.info("serving %s from %s (%d settings)", SERVICE, self.file.path, len(self.records))

    async def stop(self) -> None:
        """Write pending changes, then leave the bus."""
        self.flush()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            await wait_closed(bus, 5)

    def flush(self) -> None:
        """Save now if anything changed since the last save."""
        if self._save_timer is not None:
            self._save_timer.cancel()
            self._save_timer = None
        if self._dirty:
            try:
                self.file.save({p: asdict(r) for p, r in self.records.items()})
                self._dirty = False
            except OSError as exc:  # keep the changes; the next change retries
                log.error("cannot save settings to %s: %s", self.file.path, exc)

    def _changed(self) -> None:
        self._dirty = True
        if self._save_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._save_timer = loop.call_later(self.save_delay, self.flush)

    # -- signals ------------------------------------------------------------------------------------
    def _emit(self, path: str, changes: dict[str, Variant]) -> None:
        if self._bus is None or not self._bus.connected:
            return
        try:
            self._bus.send(Message.new_signal(path, BUSITEM, "PropertiesChanged", "a{sv}", [changes]))
        except Exception as exc:
            log.warning("PropertiesChanged %s not sent: %s", path, exc)

    def _emit_record(self, path: str, rec: Record, attributes: bool = False) -> None:
        changes = {"Value": typed(rec.type, rec.value), "Text": Variant("s", rec.text)}
        if attributes:
            changes["Default"] = self.get_default(path)
            if rec.type != "s":
                changes["Min"] = self.limit(path, "min")
                changes["Max"] = self.limit(path, "max")
        self._emit(path, changes)

    # -- adding and removing ------------------------------------------------------------------------
    def add_setting(
        self, base: str, relative: str, default: Any, kind: str, minimum: Any, maximum: Any, silent: bool
    ) -> tuple[AddError, Record | None, str]:
        """Create (or re-declare) a setting below group ``base``; returns (code, record, path)."""
        full = (base.rstrip("/") + "/" + relative.strip("/")) if relative.strip("/") else base
        if "/_" in full:
            return AddError.UNDERSCORE_PREFIX, None, full
        if kind not in ("i", "f", "s"):
            return AddError.UNKNOWN_TYPE, None, full
        value = convert(kind, default)
        if value is None:
            return AddError.INVALID_DEFAULT, None, full
        lo = convert(kind, minimum) if kind != "s" else None
        hi = convert(kind, maximum) if kind != "s" else None
        if lo == 0 and hi == 0:
            lo = hi = None  # localsettings: min = max = 0 means "no limits"
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return AddError.DEFAULT_OUT_OF_RANGE, None, full
        if base == "/" and not full.startswith("/Settings/"):
            return AddError.NOT_IN_SETTINGS, None, full
        if not all(_ELEMENT.fullmatch(part) for part in full[1:].split("/")):
            return AddError.INVALID_PATH, None, full
        cavi = is_class_and_instance(full)
        if cavi and parse_class_instance(value) is None:
            return AddError.INVALID_DEFAULT, None, full
        rec = self.records.get(full)
        if rec is None:
            if full in self._tree.nodes():
                return AddError.IS_GROUP, None, full
            parts = full.split("/")
            if any("/".join(parts[:i]) in self.records for i in range(2, len(parts))):
                return AddError.INVALID_PATH, None, full
            rec = Record(kind, value, value, lo, hi, bool(silent))
            if cavi:
                rec.value = self._free_instance(full, value)
            self.records[full] = rec
            self._tree.structure_changed()
            log.info("added setting %s = %r", full, rec.value)
        else:
            if rec.type != kind:
                return AddError.TYPE_DIFFERS, rec, full
            if (rec.default, rec.min, rec.max, rec.silent) == (value, lo, hi, bool(silent)):
                return AddError.OK, rec, full
            rec.default, rec.min, rec.max, rec.silent = value, lo, hi, bool(silent)
            if cavi:
                rec.value = self._free_instance(full, rec.value)
        self._emit_record(full, rec, attributes=True)
        self._changed()
        return AddError.OK, rec, full

    def remove(self, path: str) -> int:
        rec = self.records.pop(path, None)
        if rec is None:
            return ERROR
        self._tree.structure_changed()
        self._emit(path, {"Value": variants.invalid(), "Text": Variant("s", "")})
        self._changed()
        log.info("removed setting %s", path)
        return OK

    def _free_instance(self, path: str, wanted: str) -> str:
        """The requested ``class:n``, or the next free ``n`` of that class."""
        parsed = parse_class_instance(wanted)
        assert parsed is not None
        cls, n = parsed
        taken = {
            other[1]
            for p, r in self.records.items()
            if p != path and is_class_and_instance(p) and (other := parse_class_instance(r.value)) and other[0] == cls
        }
        while n in taken:
            n += 1
        return f"{cls}:{n}"

    # -- values ----------------------------------------------------------------------------------------
    def set_value(self, path: str, raw: Any) -> int:
        rec = self.records[path]
        value = convert(rec.type, raw)
        if value is None:
            return ERROR
        if (rec.min is not None and value < rec.min) or (rec.max is not None and value > rec.max):
            return ERROR
        if value == rec.value:
            return OK
        if is_class_and_instance(path):
            if parse_class_instance(value) is None:
                return ERROR
            value = self._free_instance(path, value)
            if value == rec.value:
                return OK
        if not rec.silent:
            log.info("setting %s changed: %r -> %r", path, rec.value, value)
        rec.value = value
        self._emit_record(path, rec)
        self._changed()
        return OK

    def limit(self, path: str, which: str) -> Variant:
        rec = self.records[path]
        bound = getattr(rec, which)
        return Variant("i", 0) if bound is None else typed(rec.type, bound)

    def get_default(self, path: str) -> Variant:
        rec = self.records[path]
        return Variant("i", -1) if rec.default is None else typed(rec.type, rec.default)

    def set_default(self, path: str) -> int:
        rec = self.records[path]
        if rec.default is None or is_class_and_instance(path):
            return ERROR
        self.set_value(path, rec.default)
        return OK

    def get_attributes(self, path: str) -> tuple[Variant, Variant, Variant, int]:
        return self.get_default(path), self.limit(path, "min"), self.limit(path, "max"), int(self.records[path].silent)

    # -- groups and root ----------------------------------------------------------------------------------
    def _below(self, group: str) -> dict[str, tuple[str, Record]]:
        prefix = "/" if group == "/" else group + "/"
        return {p[len(prefix):]: (p, r) for p, r in self.records.items() if p.startswith(prefix)}

    def group_values(self, group: str) -> Variant:
        return Variant("a{sv}", {k: typed(r.type, r.value) for k, (_, r) in self._below(group).items()})

    def group_texts(self, group: str) -> Variant:
        return Variant("a{ss}", {k: r.text for k, (_, r) in self._below(group).items()})

    def group_set_default(self, group: str) -> int:
        for path, _ in self._below(group).values():
            self.set_default(path)
        return OK

    def get_items(self, _root: str) -> dict[str, dict[str, Variant]]:
        items = {}
        for path, rec in self.records.items():
            props = {"Value": typed(rec.type, rec.value), "Text": Variant("s", rec.text)}
            if rec.max is not None:
                props["Max"] = typed(rec.type, rec.max)
            if rec.min is not None:
                props["Min"] = typed(rec.type, rec.min)
            if rec.default is not None:
                props["Default"] = typed(rec.type, rec.default)
            items[path] = props
        return items

    def add_setting_call(self, base: str, group: str, name: str, default: Variant, kind: str, lo: Variant, hi: Variant):
        return self._legacy_add(base, group, name, default, kind, lo, hi, silent=False)

    def add_silent_setting_call(self, base, group, name, default, kind, lo, hi):  # noqa: ANN001 - same as above
        return self._legacy_add(base, group, name, default, kind, lo, hi, silent=True)

    def _legacy_add(self, base, group, name, default, kind, lo, hi, *, silent: bool) -> int:  # noqa: ANN001
        relative = "/".join(part.strip("/") for part in (group, name) if part.strip("/"))
        code, _, _ = self.add_setting(base, relative, default, kind, lo, hi, silent)
        return int(code)

    def add_settings_call(self, base: str, definitions: list[dict[str, Variant]]) -> list[dict[str, Variant]]:
        results = []
        for props in definitions:
            result: dict[str, Variant] = {}
            results.append(result)
            path = props.get("path")
            if path is None or path.signature != "s":
                if path is not None:
                    result["path"] = path
                result["error"] = Variant("i", int(AddError.INVALID_PATH))
                continue
            result["path"] = path
            default = props.get("default")
            kind = {"i": "i", "x": "i", "d": "f", "s": "s"}.get(default.signature if default is not None else "")
            if kind is None:
                result["error"] = Variant("i", int(AddError.UNKNOWN_TYPE))
                continue
            silent = bool(variants.unwrap(props["silent"])) if "silent" in props else False
            code, rec, _ = self.add_setting(
                base, path.value, default.value, kind, _opt(props.get("min")), _opt(props.get("max")), silent
            )
            result["error"] = Variant("i", int(code))
            if rec is not None:
                result["value"] = typed(rec.type, rec.value)
        return results

    def remove_settings_call(self, base: str, paths: list[str]) -> list[int]:
        prefix = "" if base == "/" else base
        return [self.remove(prefix + "/" + p.strip("/")) for p in paths]


def _opt(value: Variant | None) -> Any:
    return None if value is None else variants.unwrap(value)


# -- standalone ---------------------------------------------------------------------------------------------
async def serve(path: Path, bus_address: str | None, save_delay: float) -> None:
    """Run until SIGTERM/SIGINT or until the bus goes away; pending changes are saved."""
    service = LocalSettings(path, bus_address, save_delay=save_delay)
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    assert service.bus is not None
    lost = asyncio.ensure_future(wait_closed(service.bus))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        stopped.cancel()
        await service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mbclient.dbus.localsettings", description=f"embedded {SERVICE} (JSON file)"
    )
    parser.add_argument("--file", type=Path, default=default_settings_path(), help="settings file (JSON)")
    parser.add_argument("--dbus", metavar="ADDRESS", help="D-Bus address (default: session bus if set, else system)")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds to gather changes before saving")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args.file, args.dbus, args.delay))
    except MbclientError as exc:  # ConfigError, ServiceError: one line, exit 2
        print(f"localsettings: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
