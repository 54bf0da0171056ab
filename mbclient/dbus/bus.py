"""Which bus to use, connecting to it, and keeping a connection alive through bursts.

Bus choice follows every Victron Python service: an explicit address wins, else the
session bus when ``DBUS_SESSION_BUS_ADDRESS`` is set (a laptop, the tests), else the
system bus (a GX device).

Why the socket wrapper: dbus-fast's asyncio writer (``aio/message_bus.py``,
``_MessageWriter``) writes straight to the non-blocking socket whenever its queue of
*whole* messages is empty -- even while the tail of a partially written message is still
pending because the socket was full. That ``send()`` then fails with EAGAIN
(``BlockingIOError``), which the writer treats like any other error: it finalizes the bus
and the connection is gone. Measured with dbus-fast 5.2.0 against a local dbus-daemon
(``scripts/bench_dbus.py``): ItemsChanged signals of 50 paths sent one per event-loop
turn killed the connection after 49 to ~1500 signals in most trials, depending on how
busy the daemon was. A full socket is not an error, it just means "later", so
:func:`tolerate_full_socket` makes such a send report 0 bytes written; the writer then
keeps the message and waits for the socket to become writable, exactly as it already
does after a partial write. The service layer additionally coalesces signals (see
``service.py``) so a burst cannot grow the queue without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from ..errors import ConfigError

log = logging.getLogger(__name__)

DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"


def describe_bus(address: str | None) -> str:
    """Human words for the bus ``connect_bus(address)`` would use (for error messages)."""
    if address:
        return f"D-Bus at {address}"
    if os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return "the D-Bus session bus"
    return "the D-Bus system bus"


async def connect_bus(address: str | None = None) -> MessageBus:
    """Open a new connection: explicit address, else session bus if announced, else system.

    Every published device service needs a connection of its own (object paths belong
    to a connection and consumers key services by the sender's unique name), so this
    always opens a fresh one. Raises ConfigError with one line if the bus is unreachable.
    """
    try:
        # (dbus-fast < 5 opens the socket in the constructor, >= 5 in connect())
        if address:
            bus = MessageBus(bus_address=address)
        elif os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            bus = MessageBus(bus_type=BusType.SESSION)
        else:
            bus = MessageBus(bus_type=BusType.SYSTEM)
        await bus.connect()
    except Exception as exc:  # invalid address, refused, no socket, auth failure
        raise ConfigError(f"cannot connect to {describe_bus(address)}: {exc}") from None
    tolerate_full_socket(bus)
    quiet_after_disconnect(bus)
    return bus


def quiet_after_disconnect(bus: MessageBus) -> None:
    """Once ``bus.disconnect()`` is called, take in what still arrives without answering it.

    dbus-fast 5.2 keeps processing the messages already read after ``disconnect()`` has shut
    the socket down, and answers method calls among them. The first answer fails on the
    shut-down socket, which closes it; every later answer in the same batch then fails in
    ``add_writer`` on a closed descriptor (EBADF) and is logged with a traceback -- seen as a
    Ctrl-C that prints tracebacks while a peer (or our own settings client) is calling us.
    A caller of a service that is going away gets no reply either way (its call fails when
    our name goes), so this handler, registered first, claims every method call from then on.
    """

    def claim_when_leaving(msg: Message) -> bool:
        # Calls only: a reply or error claimed here would never reach its waiting caller.
        return msg.message_type is MessageType.METHOD_CALL and not bus.connected

    bus.add_message_handler(claim_when_leaving)


class _FullSocketTolerant:
    """A socket proxy whose send reports 0 bytes instead of raising on a full buffer."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: Any, *flags: int) -> int:
        try:
            return self._sock.send(data, *flags)
        except (BlockingIOError, InterruptedError):
            return 0

    def sendmsg(self, *args: Any) -> int:
        try:
            return self._sock.sendmsg(*args)
        except (BlockingIOError, InterruptedError):
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def tolerate_full_socket(bus: MessageBus) -> bool:
    """Make a connected bus survive EAGAIN on its socket (see the module docstring).

    Returns False (and logs once) if this dbus-fast version is laid out differently; the
    coalescing in the service layer still limits the damage then.
    """
    writer = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    if sock is None or not hasattr(sock, "send"):
        log.warning("dbus-fast internals changed: cannot guard the socket against EAGAIN")
        return False
    if not isinstance(sock, _FullSocketTolerant):
        writer.sock = _FullSocketTolerant(sock)
    return True


async def wait_closed(bus: MessageBus, timeout: float | None = None) -> None:
    """Wait until ``bus`` is disconnected, for whatever reason; never raises.

    Shielded: cancelling the caller (or a timeout) must not cancel dbus-fast's own
    disconnect future, which every other waiter shares. (``asyncio.timeout`` rather than
    ``wait_for`` throughout this package: on Python 3.11 ``wait_for`` can swallow a
    cancellation that races with the result, and a task then never stops.)
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await asyncio.shield(bus.wait_for_disconnect())


async def call_dbus(bus: MessageBus, member: str, signature: str = "", body: list | None = None) -> list:
    """Call a method of the bus daemon itself and return the reply body."""
    reply = await bus.call(
        Message(
            destination=DBUS_NAME,
            path=DBUS_PATH,
            interface=DBUS_NAME,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    if reply.message_type is MessageType.ERROR:
        raise RuntimeError(f"{member}: {reply.error_name}: {reply.body[0] if reply.body else ''}")
    return reply.body


async def name_owner(bus: MessageBus, name: str) -> str | None:
    """The unique name owning ``name``, or None."""
    reply = await bus.call(
        Message(
            destination=DBUS_NAME,
            path=DBUS_PATH,
            interface=DBUS_NAME,
            member="GetNameOwner",
            signature="s",
            body=[name],
        )
    )
    if reply.message_type is MessageType.ERROR:
        return None
    return reply.body[0]


async def wait_for_name(bus: MessageBus, name: str, timeout: float) -> str | None:
    """Wait up to ``timeout`` s for ``name`` to get an owner; return the owner or None.

    Uses one NameOwnerChanged match rule (arg0 = name) instead of polling, and checks
    the current owner after subscribing so an appearance in between is not missed.
    """
    appeared: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_message(msg: Message) -> None:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.sender == DBUS_NAME
            and msg.body[0] == name
            and msg.body[2]
            and not appeared.done()
        ):
            appeared.set_result(msg.body[2])

    rule = f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',member='NameOwnerChanged',arg0='{name}'"
    bus.add_message_handler(on_message)
    try:
        await call_dbus(bus, "AddMatch", "s", [rule])
        try:
            owner = await name_owner(bus, name)
            if owner:
                return owner
            if timeout <= 0:
                return None
            try:
                async with asyncio.timeout(timeout):
                    return await appeared
            except TimeoutError:
                return None
        finally:
            if bus.connected:
                await call_dbus(bus, "RemoveMatch", "s", [rule])
    finally:
        bus.remove_message_handler(on_message)
