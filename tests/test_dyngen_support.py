"""Helpers for the dynamic-generation tests (no tests here).

* ``Publisher``: a minimal but real Victron BusItem service — GetItems/GetValue/SetValue
  on its own connection, ItemsChanged (batched) or PropertiesChanged (per path) — with a
  ``freeze()`` that makes it neither signal nor answer, which is what a hung process
  looks like from the outside and what no exporter in the package can be told to do.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag, RequestNameReply

BUSITEM = "com.victronenergy.BusItem"

async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def wrap(value: Any) -> Variant:
    if value is None:
        return Variant("ai", [])
    if isinstance(value, bool):
        return Variant("i", int(value))
    if isinstance(value, int):
        return Variant("i", value)
    if isinstance(value, float):
        return Variant("d", value)
    return Variant("s", str(value))


def props(value: Any) -> dict[str, Variant]:
    return {"Value": wrap(value), "Text": Variant("s", "" if value is None else str(value))}


class Publisher:
    """A Victron-style service on its own connection (see module docstring)."""

    def __init__(self, bus: MessageBus, name: str, values: dict[str, Any]) -> None:
        self.bus = bus
        self.name = name
        self.values = dict(values)
        self.frozen = False
        self.calls: Counter[str] = Counter()
        self.writes: list[tuple[str, Any]] = []

    @classmethod
    async def start(cls, address: str, name: str, values: dict[str, Any]) -> Publisher:
        bus = await MessageBus(bus_address=address).connect()
        pub = cls(bus, name, values)
        bus.add_message_handler(pub._handle)
        reply = await bus.request_name(name, NameFlag.DO_NOT_QUEUE)
        assert reply == RequestNameReply.PRIMARY_OWNER
        return pub

    def _handle(self, msg: Message) -> Message | bool | None:
        if msg.message_type is not MessageType.METHOD_CALL or msg.interface not in (BUSITEM, None):
            return None
        self.calls[msg.member] += 1
        if self.frozen:
            return True  # swallowed: the caller waits for an answer that never comes
        if msg.member == "GetItems" and msg.path == "/":
            return Message.new_method_return(
                msg, "a{sa{sv}}", [{p: props(v) for p, v in self.values.items()}])
        if msg.member == "GetValue" and msg.path in self.values:
            return Message.new_method_return(msg, "v", [wrap(self.values[msg.path])])
        if msg.member == "SetValue" and msg.path in self.values:
            value = msg.body[0].value
            self.writes.append((msg.path, value))
            self.update({msg.path: value})
            return Message.new_method_return(msg, "i", [0])
        return None

    def update(self, values: dict[str, Any], *, per_path: bool = False) -> None:
        self.values.update(values)
        if self.frozen:
            return
        if per_path:
            for path, value in values.items():
                self.bus.send(Message.new_signal(path, BUSITEM, "PropertiesChanged", "a{sv}", [props(value)]))
        else:
            self.bus.send(Message.new_signal(
                "/", BUSITEM, "ItemsChanged", "a{sa{sv}}", [{p: props(v) for p, v in values.items()}]))

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    async def close(self) -> None:
        self.bus.disconnect()
        await self.bus.wait_for_disconnect()
