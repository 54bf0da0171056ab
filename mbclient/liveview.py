"""A terminal view of Victron device services, read over D-Bus the way a GX GUI reads them.

Why over D-Bus and not from mbclient's own objects: what the demo must convince anyone of
is that the *published* services are right. So this is an independent consumer, like
gui-v2 or dbus-spy: it lists ``com.victronenergy.*`` names, calls ``GetItems`` once per
service when it appears, then follows ``ItemsChanged`` (and ``PropertiesChanged``) signals,
and forgets a service when its name goes away (``NameOwnerChanged``).

On a terminal the view redraws in place with plain ANSI sequences (no curses: nothing to
install); when stdout is not a terminal it prints one compact line per service every
``interval`` seconds, which is what logs and tests read.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

BUSITEM = "com.victronenergy.BusItem"
PREFIX = "com.victronenergy."
# Not devices: the settings store and the network client's scan service.
SKIP = ("com.victronenergy.settings", "com.victronenergy.modbusclient.")

# The paths that tell the story of each kind of service, in display order.
KEY_PATHS: dict[str, tuple[str, ...]] = {
    "pvinverter": (
        "/Ac/Power", "/Ac/L1/Power", "/Ac/L1/Voltage", "/Ac/L1/Current", "/Ac/Energy/Forward",
        "/Ac/PowerLimit", "/Ac/MaxPower", "/StatusCode", "/ErrorCode",
    ),
    "grid": (
        "/Ac/Power", "/Ac/L1/Power", "/Ac/L1/Voltage", "/Ac/L1/Current", "/Ac/Frequency",
        "/Ac/Energy/Forward", "/Ac/Energy/Reverse",
    ),
}
KEY_PATHS["acload"] = KEY_PATHS["genset"] = KEY_PATHS["grid"]
PLAIN_PATHS = ("/Ac/Power", "/Ac/L1/Voltage", "/Ac/Energy/Forward", "/Ac/Energy/Reverse", "/StatusCode")
HEALTH = (
    ("/Mgmt/Stats/State", "state"),
    ("/Mgmt/Stats/RefreshInterval", "refresh"),
    ("/Mgmt/Stats/Timeouts", "timeouts"),
    ("/Mgmt/Stats/Transactions", "transactions"),
    ("/Mgmt/Stats/Latency", "latency"),
)
HIGHLIGHT_SECONDS = 1.0


def unwrap(value: Any) -> Any:
    """D-Bus variant -> Python value; Victron's invalid (an empty array) -> None."""
    while isinstance(value, Variant):
        value = value.value
    if isinstance(value, (list, bytes)) and len(value) == 0:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class ServiceMirror:
    """What a consumer knows about one service: every path's value and text."""

    name: str
    owner: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    changed_at: dict[str, float] = field(default_factory=dict)
    present: bool = True
    scanned: bool = False

    @property
    def kind(self) -> str:
        """'pvinverter', 'grid', ... (the third element of the name)."""
        parts = self.name.split(".")
        return parts[2] if len(parts) > 2 else ""

    def apply(self, items: dict[str, Any], now: float) -> None:
        for path, props in items.items():
            if not isinstance(props, dict):
                continue
            if "Value" in props:
                value = unwrap(props["Value"])
                if self.values.get(path, object()) != value:
                    self.changed_at[path] = now
                self.values[path] = value
            if "Text" in props:
                text = unwrap(props["Text"])
                self.texts[path] = text if isinstance(text, str) else ""

    def text(self, path: str) -> str:
        """The service's own text for a path, or the value, or '--' when invalid."""
        value = self.values.get(path)
        if value is None:
            return "--"
        text = self.texts.get(path) or ""
        return text if text else str(value)


class BusMirror:
    """Follows every Victron device service on one bus connection."""

    def __init__(self, bus: MessageBus, *, skip: tuple[str, ...] = SKIP) -> None:
        self.bus = bus
        self.skip = skip
        self.services: dict[str, ServiceMirror] = {}
        self._by_owner: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.signals = 0  # ItemsChanged + PropertiesChanged seen (a liveness hint)

    def wanted(self, name: str) -> bool:
        return name.startswith(PREFIX) and not any(name == s or name.startswith(s) for s in self.skip)

    async def start(self) -> None:
        self.bus.add_message_handler(self._on_message)
        for rule in (
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            "member='NameOwnerChanged',arg0namespace='com.victronenergy'",
            f"type='signal',interface='{BUSITEM}',member='ItemsChanged',path='/'",
            f"type='signal',interface='{BUSITEM}',member='PropertiesChanged'",
        ):
            await self._dbus("AddMatch", "s", [rule])
        names = await self._dbus("ListNames")
        for name in sorted(names[0] if names else []):
            if self.wanted(name):
                owner = await self._dbus("GetNameOwner", "s", [name])
                if owner:
                    self._appeared(name, owner[0])

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.bus.remove_message_handler(self._on_message)

    async def _dbus(self, member: str, signature: str = "", body: list[Any] | None = None) -> list[Any] | None:
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
            member=member, signature=signature, body=body or [],
        ))
        if reply is None or reply.message_type == MessageType.ERROR:
            return None
        return reply.body

    def _appeared(self, name: str, owner: str) -> None:
        mirror = ServiceMirror(name, owner)
        old = self.services.get(name)
        if old is not None:
            self._by_owner.pop(old.owner, None)
        self.services[name] = mirror
        self._by_owner[owner] = name
        task = asyncio.get_running_loop().create_task(self._scan(mirror))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _scan(self, mirror: ServiceMirror) -> None:
        reply = await self.bus.call(Message(
            destination=mirror.owner, path="/", interface=BUSITEM, member="GetItems",
        ))
        if reply is not None and reply.message_type == MessageType.METHOD_RETURN and reply.body:
            mirror.apply(reply.body[0], time.monotonic())
            mirror.scanned = True

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return None
        if msg.member == "NameOwnerChanged" and msg.interface == "org.freedesktop.DBus":
            name, _old, new = msg.body
            if not self.wanted(name):
                return None
            if new:
                self._appeared(name, new)
            elif name in self.services:
                gone = self.services[name]
                gone.present = False
                self._by_owner.pop(gone.owner, None)
            return None
        if msg.interface != BUSITEM:
            return None
        service = self._by_owner.get(msg.sender or "")
        if service is None:
            return None
        mirror = self.services[service]
        now = time.monotonic()
        if msg.member == "ItemsChanged" and msg.path == "/" and msg.body:
            mirror.apply(msg.body[0], now)
            self.signals += 1
        elif msg.member == "PropertiesChanged" and msg.body:
            mirror.apply({msg.path: msg.body[0]}, now)
            self.signals += 1
        return None


# -- rendering -------------------------------------------------------------------------------

BOLD, DIM, RED, GREEN, RESET = "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[0m"


def _short(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def _key_paths(m: ServiceMirror) -> list[str]:
    wanted = KEY_PATHS.get(m.kind)
    if wanted:
        return [p for p in wanted if p in m.values]
    numeric = [p for p, v in sorted(m.values.items()) if isinstance(v, (int, float)) and not p.startswith("/Mgmt/")]
    return numeric[:8]


def _health(m: ServiceMirror) -> str:
    parts = []
    for path, label in HEALTH:
        if path in m.values and m.values[path] is not None:
            parts.append(f"{label} {m.text(path)}")
    return "  ".join(parts)


def render_screen(services: Iterable[ServiceMirror], *, now: float, width: int = 100,
                  header: Iterable[str] = (), color: bool = True) -> list[str]:
    """The full-screen frame: a block per service (identity, key paths, bus health)."""

    def c(code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if color else text

    lines = list(header)
    mirrors = sorted(services, key=lambda m: m.name)
    if not mirrors:
        lines += ["", "waiting for com.victronenergy.* services on the bus ..."]
    for m in mirrors:
        lines.append("")
        ident = [str(m.values[p]) for p in ("/ProductName", "/CustomName") if m.values.get(p)]
        if "/DeviceInstance" in m.values:
            ident.append(f"instance {m.values['/DeviceInstance']}")
        connected = m.values.get("/Connected")
        if not m.present:
            state = c(RED, "gone from the bus")
        elif connected == 1:
            state = c(GREEN, "Connected 1")
        else:
            state = c(RED, f"Connected {'--' if connected is None else connected}")
        lines.append(f"{c(BOLD, m.name)}  {' · '.join(ident)}  [{state}]")
        for path in _key_paths(m):
            text = m.text(path)
            fresh = now - m.changed_at.get(path, -math.inf) < HIGHLIGHT_SECONDS
            shown = c(BOLD, text) if fresh else (c(DIM, text) if text == "--" else text)
            lines.append(f"    {path:<22} {shown}")
        health = _health(m)
        if health:
            lines.append(f"    {c(DIM, 'bus')}  {health}")
    return [_clip(line, width) for line in lines]


def render_plain(services: Iterable[ServiceMirror], *, elapsed: float) -> list[str]:
    """One line per service: ``[  3.0s] grid.x Connected=1 /Ac/Power=-2200 W ... | refresh ...``."""
    out = []
    for m in sorted(services, key=lambda m: m.name):
        connected = m.values.get("/Connected")
        fields = [f"Connected={'--' if connected is None else connected}" if m.present else "gone"]
        fields += [f"{p}={m.text(p)}" for p in PLAIN_PATHS if p in m.values]
        health = _health(m)
        out.append(f"[{elapsed:6.1f}s] {_short(m.name)} {'  '.join(fields)}" + (f"  | {health}" if health else ""))
    return out


def _clip(line: str, width: int) -> str:
    """Clip to ``width`` visible characters, leaving escape sequences intact."""
    visible = 0
    out = []
    i = 0
    while i < len(line):
        if line[i] == "\x1b":
            j = line.find("m", i)
            j = len(line) - 1 if j < 0 else j
            out.append(line[i:j + 1])
            i = j + 1
            continue
        if visible < width:
            out.append(line[i])
        visible += 1
        i += 1
    return "".join(out)


class LiveView:
    """Redraws ``render_screen`` in place on a terminal, or prints ``render_plain`` lines."""

    def __init__(self, mirror: BusMirror, *, out: TextIO | None = None, interval: float | None = None,
                 header: Callable[[], list[str]] | None = None, tty: bool | None = None) -> None:
        self.mirror = mirror
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.interval = interval if interval is not None else (0.25 if self.tty else 1.0)
        self.header = header or (lambda: [])
        self.started = time.monotonic()
        self.frames = 0

    def draw(self) -> None:
        now = time.monotonic()
        if self.tty:
            width = shutil.get_terminal_size((100, 40)).columns
            lines = render_screen(self.mirror.services.values(), now=now, width=width, header=self.header())
            # Home, each line cleared to its end, then everything below cleared: no flicker.
            self.out.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
        else:
            for line in render_plain(self.mirror.services.values(), elapsed=now - self.started):
                self.out.write(line + "\n")
        self.out.flush()
        self.frames += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Draw every ``interval`` seconds until ``stop`` is set (then once more)."""
        if self.tty:
            self.out.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear once
        try:
            while not stop.is_set():
                self.draw()
                try:
                    await asyncio.wait_for(stop.wait(), self.interval)
                except asyncio.TimeoutError:
                    pass
            self.draw()
        finally:
            if self.tty:
                self.out.write("\x1b[?25h")  # the cursor comes back whatever happened
                self.out.flush()


# -- python -m mbclient.liveview ---------------------------------------------------------------------
class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        from .errors import ConfigError

        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="python -m mbclient.liveview",
        description="Watch the com.victronenergy.* device services on D-Bus, read the way the GX GUI reads them.",
    )
    p.add_argument("--dbus", metavar="ADDRESS", help="D-Bus address (default: session bus if "
                   "DBUS_SESSION_BUS_ADDRESS is set, else the system bus)")
    p.add_argument("--plain", action="store_true", help="print lines instead of redrawing the terminal")
    p.add_argument("--interval", type=float, default=None, metavar="S",
                   help="seconds between redraws (default 0.25 on a terminal, else 1)")
    p.add_argument("--seconds", type=float, default=0.0, metavar="N", help="stop after N seconds (default: Ctrl-C)")
    return p


async def _watch(args: argparse.Namespace) -> None:
    from .dbus.bus import connect_bus  # late: --help needs no D-Bus

    bus = await connect_bus(args.dbus)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.seconds:
        loop.call_later(args.seconds, stop.set)
    mirror = BusMirror(bus)
    try:
        await mirror.start()
        tty = sys.stdout.isatty() and not args.plain
        await LiveView(mirror, interval=args.interval, tty=tty).run(stop)
    finally:
        await mirror.stop()
        bus.disconnect()


def main(argv: list[str] | None = None) -> int:
    from .errors import ConfigError

    try:
        args = build_parser().parse_args(argv)
        if args.interval is not None and not (math.isfinite(args.interval) and args.interval > 0):
            raise ConfigError(f"--interval {args.interval:g}: must be a positive number of seconds")
        if not (math.isfinite(args.seconds) and args.seconds >= 0):
            raise ConfigError(f"--seconds {args.seconds:g}: must not be negative")
        asyncio.run(_watch(args))
    except ConfigError as exc:  # the bus is unreachable: one line
        print(f"liveview: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
