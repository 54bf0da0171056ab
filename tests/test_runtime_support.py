"""Shared harness for the runtime tests (no tests here).

``Harness`` runs the real supervisor (embedded settings on the private dbus-daemon of
``fixtures_dbus``, the real RTU link) against the seed site served on a pseudo-terminal,
and watches the bus from a separate dbus-fast connection the way Victron's consumers do:
NameOwnerChanged for appearances/disappearances, GetValue for values.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mbclient.dbus import variants
from mbclient.dbus.bus import connect_bus
from mbclient.devices import DeviceOptions
from mbclient.runtime.config import RuntimeConfig
from mbclient.runtime.supervisor import Supervisor
from mbclient.sim import Site, seed_site, serve_rtu
from mbclient.spec import DeviceSpec, parse_spec

BUSITEM = "com.victronenergy.BusItem"
BAUD = 115200  # the seed runs at 9600; a faster line keeps the test short


#: Test-sized timers for production logic (RuntimeConfig fields).
TEST_TIMERS: dict[str, Any] = dict(
    settings_wait=0.2,
    identify_timeout=0.2,
    grace=0.2,
    backoff_base=0.05,
    backoff_cap=0.1,
    link_down_cap=0.2,
    stats_interval=0.5,
    stall_timeout=0,
    max_rss=0,
)


def fast_config(dbus_address: str, settings_file: Path, specs: list[DeviceSpec], **kw: Any) -> RuntimeConfig:
    """Production logic with test-sized timers."""
    values: dict[str, Any] = dict(TEST_TIMERS, bus_address=dbus_address, settings_file=str(settings_file),
                                  force_devices=specs)
    values.update(kw)
    return RuntimeConfig(**values)


def fast_options(_spec: DeviceSpec) -> DeviceOptions:
    return DeviceOptions(min_timeout=0.05, initial_timeout=0.2)


@dataclass
class Observer:
    """A consumer's view of the bus: name owner changes and GetValue."""

    bus: MessageBus
    owner_changes: list[tuple[str, str, str]] = field(default_factory=list)

    @classmethod
    async def connect(cls, address: str) -> Observer:
        bus = await connect_bus(address)
        obs = cls(bus)

        def on_message(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged":
                name, old, new = msg.body
                if name.startswith("com.victronenergy."):
                    obs.owner_changes.append((name, old, new))

        bus.add_message_handler(on_message)
        await bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
            member="AddMatch", signature="s",
            body=["type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"],
        ))
        return obs

    def disappeared(self, name: str) -> int:
        return sum(1 for n, old, new in self.owner_changes if n == name and old and not new)

    async def names(self) -> list[str]:
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
            member="ListNames",
        ))
        return [n for n in reply.body[0] if n.startswith("com.victronenergy.")]

    async def get(self, name: str, path: str) -> Any:
        """GetValue as published; an invalid value (empty array) is None."""
        reply = await self.bus.call(Message(destination=name, path=path, interface=BUSITEM, member="GetValue"))
        if reply.message_type is MessageType.ERROR:
            raise LookupError(f"{name} {path}: {reply.error_name} {reply.body}")
        return variants.unwrap_published(reply.body[0])

    async def set(self, name: str, path: str, value: Any) -> int:
        reply = await self.bus.call(Message(destination=name, path=path, interface=BUSITEM, member="SetValue",
                                            signature="v", body=[variants.wrap(value)]))
        if reply.message_type is MessageType.ERROR:
            raise LookupError(f"{name} {path}: {reply.error_name} {reply.body}")
        return reply.body[0]

    async def wait_for(self, name: str, path: str, check: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """Poll GetValue every 20 ms until ``check(value)``; return the value."""
        last: Any = "<never read>"
        with anyio.move_on_after(timeout):
            while True:
                with contextlib.suppress(LookupError):
                    last = await self.get(name, path)
                    if check(last):
                        return last
                await anyio.sleep(0.02)
        raise AssertionError(f"{name} {path}: still {last!r} after {timeout} s")

    async def wait_name(self, name: str, present: bool = True, timeout: float = 10.0) -> None:
        with anyio.move_on_after(timeout):
            while (name in await self.names()) != present:
                await anyio.sleep(0.02)
            return
        raise AssertionError(f"{name} {'never appeared' if present else 'still there'} after {timeout} s")

    def close(self) -> None:
        self.bus.disconnect()


@dataclass
class Harness:
    site: Site
    port: Any  # SimSerialPort
    supervisor: Supervisor
    observer: Observer
    config: RuntimeConfig

    def spec(self, unit: int, model: str | None = None) -> DeviceSpec:
        return spec_for(self.port.path, unit, model)

    async def published(self, spec: DeviceSpec, timeout: float = 15.0) -> str:
        """Wait until the device of ``spec`` is on the bus; return its service name."""
        with anyio.fail_after(timeout):
            while True:
                task = self.supervisor.device(spec)
                if task is not None and task.published.is_set():
                    return task.service_name
                await anyio.sleep(0.02)


def spec_for(path: str, unit: int, model: str | None = None) -> DeviceSpec:
    return parse_spec(f"rtu:{path}:{BAUD}:{unit}" + (f":{model}" if model else ""))


@contextlib.asynccontextmanager
async def running_supervisor(config: RuntimeConfig, **kw: Any) -> AsyncIterator[Supervisor]:
    sup = Supervisor(config, options_factory=fast_options, **kw)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        try:
            yield sup
        finally:
            tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def site_on_pty(tmp_path: Path, site: Site | None = None) -> AsyncIterator[tuple[Site, Any]]:
    site = site or seed_site(BAUD)
    async with site.running(0.05), serve_rtu(site.bus, directory=tmp_path) as port:
        yield site, port


async def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await anyio.sleep(0.02)
