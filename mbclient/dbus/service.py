"""Export an :class:`~mbclient.items.ItemStore` as a Victron BusItem service.

One D-Bus connection per service: object paths belong to a connection, and consumers
map signals to services by the sender's unique name (reference §1.2). The whole tree
answers before the well-known name is requested (DO_NOT_QUEUE, primary owner or error),
because consumers scan a service once, when its name appears, and skip it for good if
``/DeviceInstance`` is missing then (§4.1).

Calls are served by one raw message handler (see ``busitem.py`` for why): leaves answer
GetValue/GetText/SetValue/GetMin/GetMax, intermediate nodes GetValue/GetText with their
subtree keyed relative to the node, and ``/`` GetItems (absolute keys) plus
GetValue/GetText (keys relative to ``/``), with or without an interface header.

Signals: each ``store.flush()`` batch becomes one ``ItemsChanged(a{sa{sv}})`` on ``/``.
Per-path ``PropertiesChanged`` is NOT emitted by default: ItemsChanged is what aiovelib
and every veutil/C++ service emit, and all consumers (gui-v2, systemcalc's dbusmonitor,
dbus-flashmq, dbus-spy) handle it; sending both would double the bus traffic and make
velib consumers process each change twice. ``emit_properties_changed=True`` adds them
for an exotic consumer that only knows the old signal.

Back-pressure: a signal is handed to the connection only when the previous one has been
written to the socket. Batches flushed meanwhile are merged (latest value per path wins)
and go out as one ItemsChanged once the socket drains, so a burst of flushes costs at
most one queued signal per service, never the connection (see ``bus.py`` for the EAGAIN
half of the story). Consumers therefore see every final value, possibly in fewer signals
than there were flushes -- never more, and never a stale value after a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from dbus_fast import Message, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError, InvalidBusNameError
from dbus_fast.introspection import Interface as IntrospectedInterface
from dbus_fast.service import ServiceInterface

from ..errors import MbclientError
from ..items import NOT_WRITABLE, REJECTED, Item, ItemStore
from . import variants
from .bus import connect_bus, wait_closed
from .busitem import BUSITEM, BusItemTree, Method, method_table, signal

log = logging.getLogger(__name__)

#: service types that are not devices and so need no /DeviceInstance (reference §4.2)
NON_DEVICE_TYPES = frozenset({"settings", "system", "modbusclient", "hub4", "platform", "logger", "fronius"})


class ServiceError(MbclientError):
    """A service could not be published (name taken, invalid name, tree incomplete)."""


class _StoreTree(BusItemTree):
    """The BusItem tree of one ItemStore (plus any extra interfaces of its export)."""

    def __init__(self, export: ServiceExport) -> None:
        super().__init__()
        self.export = export
        self.store = export.store
        self.leaf_methods = method_table(
            Method(BUSITEM, "GetValue", "", "v", self._get_value),
            Method(BUSITEM, "GetText", "", "s", self._get_text),
            Method(BUSITEM, "SetValue", "v", "i", self._set_value, ("value",)),
            Method(BUSITEM, "GetMin", "", "v", lambda p: variants.wrap(self.store.items[p].min)),
            Method(BUSITEM, "GetMax", "", "v", lambda p: variants.wrap(self.store.items[p].max)),
        )
        self.node_methods = method_table(
            Method(BUSITEM, "GetValue", "", "v", self._subtree_values),
            Method(BUSITEM, "GetText", "", "v", self._subtree_texts),
        )
        self.root_methods = method_table(
            Method(BUSITEM, "GetItems", "", "a{sa{sv}}", self._get_items),
            Method(BUSITEM, "GetValue", "", "v", self._subtree_values),
            Method(BUSITEM, "GetText", "", "v", self._subtree_texts),
            Method(BUSITEM, "SetValue", "v", "i", lambda p, v: NOT_WRITABLE, ("value",)),
        )
        self.signals = {
            "root": [signal("ItemsChanged", "a{sa{sv}}")],
            "leaf": [signal("PropertiesChanged", "a{sv}")],
        }

    def leaf_paths(self) -> dict[str, Item]:
        return self.store.items

    def foreign_paths(self) -> dict[str, list[ServiceInterface]]:
        return self.export._extras

    def foreign_interfaces(self, path: str) -> list[IntrospectedInterface]:
        return [iface.introspect() for iface in self.export._extras.get(path, [])]

    def _get_value(self, path: str) -> Variant:
        return variants.wrap_item(self.store.items[path])

    def _get_text(self, path: str) -> str:
        return self.store.items[path].text

    def _set_value(self, path: str, value: Any) -> int:
        try:
            return self.store.write(path, variants.unwrap(value))
        except Exception:  # a buggy on_write must not turn into a D-Bus error storm
            log.exception("SetValue %s: write handler failed", path)
            return REJECTED

    def _get_items(self, path: str) -> dict[str, dict[str, Variant]]:
        return {p: variants.item_properties(it) for p, it in self.store.items.items()}

    def _subtree_values(self, path: str) -> Variant:
        sub = self.store.subtree(path)
        return Variant("a{sv}", {k: variants.wrap_item(it) for k, it in sub.items()})

    def _subtree_texts(self, path: str) -> Variant:
        sub = self.store.subtree(path)
        return Variant("a{ss}", {k: it.text for k, it in sub.items()})


class ServiceExport:
    """Publishes one ItemStore under one well-known name, on a connection of its own.

    ``await start(name)``, ``await rename(new_name)`` (role change: same store, the old
    name disappears once the new one is owned), ``await stop()``. ``export_extra(path,
    interface)`` attaches another dbus-fast ServiceInterface (e.g. VregLink); it follows
    the service through renames.
    """

    def __init__(
        self, store: ItemStore, bus_address: str | None = None, *, emit_properties_changed: bool = False
    ) -> None:
        self.store = store
        self.bus_address = bus_address
        self.emit_properties_changed = emit_properties_changed
        self._tree = _StoreTree(self)
        self._bus: MessageBus | None = None
        self._name: str | None = None
        self._extras: dict[str, list[ServiceInterface]] = {}
        self._pending: dict[str, Item | None] = {}
        self._inflight: asyncio.Future | None = None
        self._published: set[str] = set()
        self._unsubscribe: list[Callable[[], None]] = []
        self.signals_sent = 0  # ItemsChanged messages handed to the connection

    # -- public state --------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return self._name

    @property
    def bus(self) -> MessageBus | None:
        return self._bus

    @property
    def unique_name(self) -> str | None:
        return self._bus.unique_name if self._bus is not None else None

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, name: str) -> None:
        """Export everything on a new connection, then claim ``name`` (DO_NOT_QUEUE)."""
        if self._bus is not None:
            raise RuntimeError(f"already published as {self._name}")
        self._check_complete(name)
        bus = await self._open()
        try:
            await self._claim(bus, name)
        except BaseException:
            bus.disconnect()
            raise
        self._bus, self._name = bus, name
        self._published = set(self.store.items)
        self._unsubscribe = [
            self.store.subscribe(self._on_flush),
            self.store.on_structure_change(self._on_structure_change),
        ]

    async def rename(self, new_name: str) -> None:
        """Move the service to ``new_name`` (a role change).

        The new name is claimed on a fresh connection with the full tree in place; only
        then is the old connection closed, which makes the old name disappear. If the
        new name cannot be claimed the service stays where it was and ServiceError is
        raised.
        """
        if self._bus is None:
            raise RuntimeError("rename() before start()")
        if new_name == self._name:
            return
        self._check_complete(new_name)
        new_bus = await self._open()
        try:
            await self._claim(new_bus, new_name)
        except BaseException:
            new_bus.disconnect()
            raise
        old_bus, old_name = self._bus, self._name
        self._bus, self._name = new_bus, new_name
        self._pending.clear()  # the new connection's consumers scan the full state
        self._inflight = None
        await self._close(old_bus)
        log.info("service %s renamed to %s", old_name, new_name)

    async def stop(self) -> None:
        """Unpublish: closing the connection releases the name (consumers drop the device)."""
        for unsubscribe in self._unsubscribe:
            with contextlib.suppress(ValueError):
                unsubscribe()
        self._unsubscribe = []
        bus, self._bus, self._name = self._bus, None, None
        self._pending.clear()
        self._inflight = None
        if bus is not None:
            await self._close(bus)

    async def wait_disconnected(self) -> None:
        """Return when the connection is lost (or the service is stopped)."""
        while (bus := self._bus) is not None:
            await wait_closed(bus)
            if self._bus is bus:
                return

    # -- extra interfaces (VregLink) ------------------------------------------------------------------
    def export_extra(self, path: str, interface: ServiceInterface) -> None:
        """Serve another interface on ``path`` (may coincide with a store leaf)."""
        self._extras.setdefault(path, []).append(interface)
        self._tree.structure_changed()
        if self._bus is not None:
            self._bus.export(path, interface)

    def unexport_extra(self, path: str, interface: ServiceInterface) -> None:
        ifaces = self._extras.get(path, [])
        if interface in ifaces:
            ifaces.remove(interface)
            if not ifaces:
                del self._extras[path]
            self._tree.structure_changed()
            if self._bus is not None:
                self._bus.unexport(path, interface)

    # -- internals ------------------------------------------------------------------------------------
    def _check_complete(self, name: str) -> None:
        parts = name.split(".")
        is_device = len(parts) >= 4 and name.startswith("com.victronenergy.") and parts[2] not in NON_DEVICE_TYPES
        if is_device and "/DeviceInstance" not in self.store:
            raise ServiceError(f"{name}: /DeviceInstance missing; consumers would skip this service for good")

    async def _open(self) -> MessageBus:
        bus = await connect_bus(self.bus_address)
        bus.add_message_handler(self._tree)
        for path, ifaces in self._extras.items():
            for iface in ifaces:
                bus.export(path, iface)
        return bus

    @staticmethod
    async def _claim(bus: MessageBus, name: str) -> None:
        try:
            reply = await bus.request_name(name, NameFlag.DO_NOT_QUEUE)
        except InvalidBusNameError:
            raise ServiceError(f"invalid D-Bus service name {name!r}") from None
        except DBusError as exc:
            raise ServiceError(f"cannot own {name}: {exc.text}") from None
        if reply is not RequestNameReply.PRIMARY_OWNER:
            raise ServiceError(f"{name} is already published by another connection ({reply.name})")

    @staticmethod
    async def _close(bus: MessageBus) -> None:
        bus.disconnect()
        await wait_closed(bus, 5)

    def _on_structure_change(self) -> None:
        self._tree.structure_changed()
        current = set(self.store.items)
        for path in self._published - current:
            self._pending[path] = None  # announce the removal as invalid, like velib's del_tree
        self._published = current
        if self._pending and self._inflight is None:
            self._send_pending()

    def _on_flush(self, batch: dict[str, Item]) -> None:
        self._pending.update(batch)
        self._published.update(batch)
        if self._inflight is None:
            self._send_pending()

    def _send_pending(self) -> None:
        bus = self._bus
        if bus is None or not bus.connected or not self._pending:
            self._pending.clear()
            return
        batch, self._pending = self._pending, {}
        changes = {
            path: variants.properties(None, "") if item is None else variants.item_properties(item)
            for path, item in batch.items()
        }
        messages = [Message.new_signal("/", BUSITEM, "ItemsChanged", "a{sa{sv}}", [changes])]
        if self.emit_properties_changed:
            messages += [Message.new_signal(p, BUSITEM, "PropertiesChanged", "a{sv}", [c]) for p, c in changes.items()]
        try:
            for msg in messages:
                future = bus.send(msg)
        except Exception as exc:  # the connection is going away; consumers will rescan
            log.warning("%s: signal not sent: %s", self._name, exc)
            return
        self.signals_sent += 1
        self._inflight = future
        future.add_done_callback(self._on_sent)

    def _on_sent(self, future: asyncio.Future) -> None:
        if future is not self._inflight:
            return  # a signal of a connection we already left
        self._inflight = None
        if future.cancelled() or future.exception() is not None:
            self._pending.clear()
            return
        if self._pending:
            self._send_pending()
