"""Follow the services the controller reads (grid meter, vebus, battery) and judge their age.

Which service: for every role the one systemcalc would use — the lowest ``/DeviceInstance``
among ``com.victronenergy.<type>.*`` (ties: the name; batteries: connected ones first, as
systemcalc does), unless a service name is configured for the role. The choice is made
again whenever a ``com.victronenergy.`` name comes or goes (``NameOwnerChanged`` with
``arg0namespace``) or the followed service's ``/DeviceInstance`` changes.

How: one connection of our own (a client). Per followed service *one* match rule (``sender=<name>, interface=com.victronenergy.BusItem``) brings
both ``ItemsChanged`` on ``/`` and per-path ``PropertiesChanged``; the initial values come
from ``GetItems`` on ``/``. The ``GetItems`` reply is applied from the same message
handler that applies signals, so a signal sent after the reply can never be overwritten by
the older reply.

A followed service published by this very process (``local_store`` names its item store)
is chosen like any other, but its values are taken from the store as each read is
decoded: no match rule, no signal travelling out to the bus daemon and back (ten per
second from a grid meter polled fast while the controller steers). Every flush counts as
a signal, and a probe of it is answered at once while the store is still the service's.

Staleness rule (signals carry changes only; an unchanged value sends nothing):

* an input's *age* is the time since its service last showed life — any signal from it,
  or an answer to a liveness probe. A service quiet for half the stale timeout gets one
  probe (``GetValue`` of its key path); a service that answers is alive and its values
  merely unchanged, so the age restarts;
* the tracker wakes only when something can change: a message, or the next deadline of a
  followed service (half the stale timeout after it was last heard: the probe; the stale
  timeout: the silence), on the shared tick grid (``next_tick``) - never on a fixed tick.
  A signal that moves the earliest deadline later moves the tracker's timer with it, so a
  service that signals every second never wakes the tracker for a probe it does not need;
* while the controller has nothing to control (``active`` false: Not Configured, G100)
  no service is followed at all - no match rule, no probe, no deadline -, only the choice
  is kept up to date (``NameOwnerChanged``); its roles show the fault ``idle``. Made
  active again, every role is followed afresh (``GetItems``) before ``set_active`` returns,
  so the first evaluation sees current values and ages, as at start;
* a role is *faulty* when its service vanished (``gone``, noticed in the message handler,
  no waiting), its ``/Connected`` is not 1 (``disconnected``; our own meters publish 0 and
  invalidate their values when asleep), its key value is invalid (``invalid``), it neither
  signalled nor answered a probe for the stale timeout (``silent``), or no service of its
  type exists (``none``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

log = logging.getLogger(__name__)

PREFIX = "com.victronenergy."
BUSITEM = "com.victronenergy.BusItem"
DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
NO_INSTANCE = 1 << 31  # sorts services without a readable /DeviceInstance last


@dataclass(frozen=True, slots=True)
class Role:
    """One kind of input service."""

    name: str  # 'grid'
    service_type: str  # third component of the service name
    paths: tuple[str, ...]  # paths kept (everything else in a signal is ignored)
    key_path: str  # invalid here = the role is faulty; probed for liveness
    prefer_connected: bool = False  # systemcalc skips unconnected batteries

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.service_type}."


GRID = Role(
    "grid", "grid",
    ("/Ac/Power", "/Ac/Energy/Consumption", "/Ac/Energy/Forward", "/Ac/Energy/Reverse",
     "/Connected", "/DeviceInstance"),
    "/Ac/Power",
)
VEBUS = Role(
    "vebus", "vebus",
    ("/Ac/ActiveIn/P", "/State", "/Leds/Bulk", "/Leds/Absorption", "/Connected", "/DeviceInstance"),
    "/State",
)
BATTERY = Role(
    "battery", "battery",
    ("/Dc/0/Power", "/Dc/0/Voltage", "/Soc", "/Connected", "/DeviceInstance"),
    "/Dc/0/Power", prefer_connected=True,
)
DEFAULT_ROLES = (GRID, VEBUS, BATTERY)


def unwrap(value: Any) -> Any:
    """D-Bus variant → Python value; an empty array (Victron's invalid) → None."""
    while isinstance(value, Variant):
        value = value.value
    if isinstance(value, (list, tuple, bytes)) and len(value) == 0:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(slots=True)
class RoleView:
    """What the controller sees of one role at one instant."""

    service: str | None
    values: dict[str, Any]
    age: float | None  # seconds since the service last showed life (None: never)
    fault: str | None  # None = fresh, else 'none', 'waiting', 'gone', 'disconnected', 'silent', 'invalid', 'idle'

    def get(self, path: str) -> Any:
        """The value if the role is fresh, else None (stale values are never used)."""
        return None if self.fault else self.values.get(path)


def next_tick(now: float, period: float) -> float:
    """The next multiple of ``period`` on the loop clock after ``now``. Periodic checks wait
    for it rather than for ``now + period``: every task ticking with the same period then
    wakes in the same event-loop turn (one wakeup of the process instead of one per task)."""
    return (math.floor(now / period) + 1.0) * period


@dataclass(slots=True, eq=False)
class _Followed:
    role: Role
    name: str
    rule: str
    owner: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    heard: float | None = None  # last sign of life
    initialised: bool = False  # GetItems answered
    gone: bool = False
    items_serial: int = 0  # serial of the pending GetItems call
    local: Any = None  # the ItemStore of a service of this process (values taken in process)
    unsubscribe: Callable[[], None] | None = None
    probing: bool = False
    signals: int = 0  # count of signals seen (a probe's answer is older than any later signal)


@dataclass(slots=True)
class _Candidate:
    instance: int = NO_INSTANCE
    connected: bool = True


class InputTracker:
    """Keeps the values and ages of the grid meter, vebus and battery inputs.

    ``await tracker.run()`` connects and follows until cancelled; ``await tracker.ready()``
    waits for the first discovery. ``changed`` is set whenever a followed value or a
    role's fault changes (the controller clears it after evaluating).
    """

    def __init__(
        self,
        bus_address: str | None = None,
        roles: Iterable[Role] = DEFAULT_ROLES,
        *,
        stale_after: float = 5.0,
        call_timeout: float = 1.0,
        tick: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        changed: asyncio.Event | None = None,
    ) -> None:
        self.bus_address = bus_address
        self.roles = {r.name: r for r in roles}
        self.stale_after = stale_after
        self.call_timeout = call_timeout
        self.tick = tick
        self.clock = clock
        self.changed = changed if changed is not None else asyncio.Event()
        self._last_faults: dict[str, str | None] = {}
        self._ready = asyncio.Event()
        self._bus: MessageBus | None = None
        self._preferred: dict[str, str | None] = {r: None for r in self.roles}
        self._candidates: dict[str, dict[str, _Candidate]] = {r: {} for r in self.roles}
        self._followed: dict[str, _Followed | None] = {r: None for r in self.roles}
        self._by_owner: dict[str, _Followed] = {}
        self._by_serial: dict[int, _Followed] = {}
        self._locks = {r: asyncio.Lock() for r in self.roles}
        # NameOwnerChanged events, and None: "a deadline may have moved earlier, look again"
        self._events: asyncio.Queue[tuple[str, str, str] | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        #: The item store behind a service name if that service is published by this
        #: process (``None``: not ours, follow it over D-Bus). Set by the runtime.
        self.local_store: Callable[[str], Any] | None = None
        #: False: follow nothing (see the module docstring); set before ``run`` or by ``set_active``
        self.active = True
        self._timeout: asyncio.Timeout | None = None  # the loop's wait for its next deadline

    # -- public --------------------------------------------------------------------------------
    async def ready(self) -> None:
        await self._ready.wait()

    def view(self, role: str, now: float | None = None) -> RoleView:
        now = self.clock() if now is None else now
        f = self._followed[role]
        if f is None:
            if not self.active:
                choice = self._choose(role)
                return RoleView(choice, {}, None, "none" if choice is None else "idle")
            return RoleView(None, {}, None, "none")
        age = None if f.heard is None else max(0.0, now - f.heard)
        return RoleView(f.name, dict(f.values), age, self._fault(f, age))

    def prefer(self, role: str, service: str | None) -> None:
        """Follow exactly ``service`` for ``role`` (``None``/'' = automatic choice)."""
        service = service or None
        if self._preferred[role] != service:
            self._preferred[role] = service
            if self._bus is not None:
                self._spawn(self._reselect(role))

    async def set_active(self, active: bool) -> None:
        """Follow the chosen services (``True``: returns once each is followed, its values
        read) or nothing at all (``False``)."""
        if active == self.active:
            return
        self.active = active
        if self._bus is None:  # not running yet: ``run`` follows (or not) from the start
            return
        if active:
            await asyncio.gather(*(self._reselect(r) for r in self.roles))
        else:
            for role in self.roles:
                async with self._locks[role]:
                    f = self._followed[role]
                    self._followed[role] = None
                    if f is not None:
                        await self._unfollow(f)
        self.changed.set()
        self._rearm()

    def set_stale_after(self, seconds: float) -> None:
        self.stale_after = seconds
        self.changed.set()
        self._rearm()

    async def run(self) -> None:
        """Connect, discover, follow; returns only by cancellation (then disconnects)."""
        self._bus = bus = await _connect(self.bus_address)
        try:
            bus.add_message_handler(self._on_message)
            await self._dbus_call(
                "AddMatch", "s",
                [f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',"
                 f"arg0namespace='{PREFIX[:-1]}'"],
            )
            names = (await self._dbus_call("ListNames")).body[0]
            await asyncio.gather(*(self._learn(n) for n in names if self._role_of(n)))
            await asyncio.gather(*(self._reselect(r) for r in self.roles))
            self._ready.set()
            self.changed.set()
            loop = asyncio.get_running_loop()
            while True:
                event = None
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                # that coincides with the queue delivering, and the task would never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(self._next_check(loop.time())) as self._timeout:
                        event = await self._events.get()
                self._timeout = None
                if event is not None:
                    self._on_owner_change(*event)
                self._probe_quiet()
                self._notice_staleness()
        finally:
            for task in list(self._tasks):
                task.cancel()
            bus.disconnect()
            with contextlib.suppress(Exception):
                await _within(bus.wait_for_disconnect(), 1.0)
            self._bus = None

    def _next_check(self, loop_now: float) -> float | None:
        """Loop time of the next probe or silence of a followed service, on the tick grid
        (``None``: nothing to wait for but messages). A deadline already acted on (a probe
        under way, a silence already noticed) is left out, so this never names the past;
        a probe that failed is retried at the next tick, as before."""
        now = self.clock()
        half, stale = self.stale_after / 2, self.stale_after
        due = math.inf
        for f in self._followed.values():
            if f is None or f.gone or not f.initialised or f.heard is None:
                continue
            if not f.probing and f.heard + half < due:
                due = f.heard + half
            if now <= f.heard + stale < due:
                due = f.heard + stale
        if due == math.inf:
            return None
        return next_tick(loop_now + max(0.0, due - now), self.tick)

    def _postpone(self) -> None:
        """A sign of life moved a deadline later: move the loop's timer along rather than
        wake it for nothing (an earlier deadline goes through ``_rearm``)."""
        timeout = self._timeout
        if timeout is None or timeout.expired():
            return
        when = timeout.when()
        if when is None:
            return
        later = self._next_check(asyncio.get_running_loop().time())
        if later is None or later > when:
            timeout.reschedule(later)

    def _rearm(self) -> None:
        """A deadline may lie earlier than the one the loop waits for: let it look again."""
        self._events.put_nowait(None)

    # -- faults ----------------------------------------------------------------------------------
    def _fault(self, f: _Followed, age: float | None) -> str | None:
        if f.gone:
            return "gone"
        if not f.initialised:
            return "waiting"
        connected = f.values.get("/Connected")
        if connected is not None and connected != 1:
            return "disconnected"
        if age is None or age > self.stale_after:
            return "silent"
        if f.values.get(f.role.key_path) is None:
            return "invalid"
        return None

    def _notice_staleness(self) -> None:
        """Wake the controller when a role's fault changes without any message (silence)."""
        now = self.clock()
        faults = {r: self.view(r, now).fault for r in self.roles}
        if faults != self._last_faults:
            self._last_faults = faults
            self.changed.set()

    # -- message handler (runs for every message, in arrival order) ------------------------------
    def _on_message(self, msg: Message) -> None:
        mtype = msg.message_type
        if mtype is MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == DBUS:
                name, old, new = msg.body
                if name.startswith(PREFIX):
                    self._mark_gone_now(name, new)
                    self._events.put_nowait((name, old, new))
                return
            f = self._by_owner.get(msg.sender)
            if f is None or msg.interface != BUSITEM:
                return
            if msg.member == "ItemsChanged" and msg.path == "/":
                self._apply(f, msg.body[0], signal=True)
            elif msg.member == "PropertiesChanged":
                self._apply(f, {msg.path: msg.body[0]}, signal=True)
        elif mtype is MessageType.METHOD_RETURN:
            f = self._by_serial.pop(msg.reply_serial, None)
            if f is not None and f.items_serial == msg.reply_serial:
                self._apply(f, msg.body[0], signal=False)
                f.initialised = True
                self.changed.set()

    def _apply(self, f: _Followed, items: dict[str, Any], *, signal: bool) -> None:
        wanted = f.role.paths
        self._take(f, [(path, unwrap(props["Value"])) for path, props in items.items()
                       if path in wanted and isinstance(props, dict) and "Value" in props], signal=signal)

    def _apply_local(self, f: _Followed, batch: dict[str, Any]) -> None:
        """A flush of our own service's item store (``Item`` objects, values as published)."""
        if f.gone:
            return
        wanted = f.role.paths
        self._take(f, [(path, item.value) for path, item in batch.items() if path in wanted], signal=True)

    def _take(self, f: _Followed, values: list[tuple[str, Any]], *, signal: bool) -> None:
        first = f.heard is None
        f.heard = self.clock()
        if first:
            self._rearm()
        else:
            self._postpone()
        if signal:
            f.signals += 1
        changed = False
        for path, value in values:
            if f.values.get(path, ...) != value:
                f.values[path] = value
                changed = True
        if changed:
            self.changed.set()
            self._candidate_changed(f)
        if self._last_faults.get(f.role.name) is not None:
            self._notice_staleness()  # e.g. silent -> fresh although no value changed

    def _candidate_changed(self, f: _Followed) -> None:
        """The followed service's instance (or, for batteries, connection) changed: the
        choice may be another service now."""
        cand = self._candidates[f.role.name].get(f.name)
        if cand is None or self._preferred[f.role.name] is not None:
            return
        inst = f.values.get("/DeviceInstance")
        connected = f.values.get("/Connected") in (1, None)
        if (isinstance(inst, int) and cand.instance != inst) or (
            f.role.prefer_connected and cand.connected != connected
        ):
            cand.instance = inst if isinstance(inst, int) else cand.instance
            cand.connected = connected
            self._spawn(self._reselect(f.role.name))

    def _mark_gone_now(self, name: str, new_owner: str) -> None:
        """The fast path of the fail-safe: a vanished service is faulty at once."""
        for f in self._followed.values():
            if f is not None and f.name == name and not new_owner and not f.gone:
                f.gone = True
                self._by_owner.pop(f.owner or "", None)
                self.changed.set()

    # -- discovery and selection -------------------------------------------------------------------
    def _role_of(self, name: str) -> str | None:
        for role in self.roles.values():
            if name.startswith(role.prefix) or self._preferred[role.name] == name:
                return role.name
        return None

    def _on_owner_change(self, name: str, old: str, new: str) -> None:
        role = self._role_of(name)
        if role is None:
            return
        if new:
            self._spawn(self._learn_then_reselect(name, role))
        else:
            self._candidates[role].pop(name, None)
            self._spawn(self._reselect(role))

    async def _learn_then_reselect(self, name: str, role: str) -> None:
        await self._learn(name)
        await self._reselect(role, renewed=name)

    async def _learn(self, name: str) -> None:
        """Record a candidate with its device instance (and connection state)."""
        role = self._role_of(name)
        if role is None:
            return
        cand = _Candidate()
        inst = await self._get_value(name, "/DeviceInstance")
        if isinstance(inst, int):
            cand.instance = inst
        if self.roles[role].prefer_connected:
            cand.connected = await self._get_value(name, "/Connected") in (1, None)
        self._candidates[role][name] = cand

    def _choose(self, role: str) -> str | None:
        preferred = self._preferred[role]
        if preferred:
            return preferred
        cands = self._candidates[role]
        if not cands:
            return None
        return min(cands, key=lambda n: (not cands[n].connected, cands[n].instance, n))

    async def _reselect(self, role: str, renewed: str | None = None) -> None:
        async with self._locks[role]:
            if not self.active:
                self.changed.set()  # the idle view names the choice
                return
            choice = self._choose(role)
            current = self._followed[role]
            if current is not None and current.name == choice and not current.gone and renewed != choice:
                return
            if current is not None:
                await self._unfollow(current)
            if choice is None:
                self._followed[role] = None if current is None else current
                self.changed.set()
                return
            await self._follow(self.roles[role], choice)

    async def _follow(self, role: Role, name: str) -> None:
        rule = f"type='signal',sender='{name}',interface='{BUSITEM}'"
        f = _Followed(role, name, rule)
        self._followed[role.name] = f
        self.changed.set()
        store = self.local_store(name) if self.local_store is not None else None
        if store is not None:
            f.local = store
            f.unsubscribe = store.subscribe(lambda batch: self._apply_local(f, batch))
            self._apply_local(f, store.items)
            f.initialised = True
            self.changed.set()
            log.info("%s input: following %s (in process)", role.name, name)
            return
        try:
            await self._dbus_call("AddMatch", "s", [rule])
            f.owner = (await self._dbus_call("GetNameOwner", "s", [name])).body[0]
        except Exception as exc:  # absent (a configured name that does not exist yet)
            log.debug("cannot follow %s: %s", name, exc)
            f.gone = True
            self.changed.set()
            return
        self._by_owner[f.owner] = f
        bus = self._bus
        assert bus is not None
        serial = bus.next_serial()
        f.items_serial = serial
        self._by_serial[serial] = f
        msg = Message(destination=name, path="/", interface=BUSITEM, member="GetItems", serial=serial)
        try:
            reply = await _within(bus.call(msg), self.call_timeout * 3)
            if reply.message_type is MessageType.ERROR:
                raise RuntimeError(reply.body[0] if reply.body else reply.error_name)
        except Exception as exc:
            log.warning("GetItems on %s failed: %s", name, exc)
            self._by_serial.pop(serial, None)
            # keep following: signals will fill the values; the age says whether it lives
            f.initialised = True
            self.changed.set()
        log.info("%s input: following %s", role.name, name)

    async def _unfollow(self, f: _Followed) -> None:
        self._by_owner.pop(f.owner or "", None)
        self._by_serial.pop(f.items_serial, None)
        f.gone = True
        if f.unsubscribe is not None:
            with contextlib.suppress(ValueError):
                f.unsubscribe()
            f.unsubscribe = None
            return
        with contextlib.suppress(Exception):
            await self._dbus_call("RemoveMatch", "s", [f.rule])

    # -- liveness probes ---------------------------------------------------------------------------
    def _probe_quiet(self) -> None:
        now = self.clock()
        for f in self._followed.values():
            if (
                f is not None and not f.gone and f.initialised and not f.probing
                and f.heard is not None and now - f.heard > self.stale_after / 2
            ):
                if f.local is not None:  # ours: alive while the store is still the service's
                    if self.local_store is not None and self.local_store(f.name) is f.local:
                        f.heard = now
                    elif not f.probing:  # republished with another store: follow it afresh
                        f.probing = True
                        self._spawn(self._reselect(f.role.name, renewed=f.name))
                    continue
                f.probing = True
                self._spawn(self._probe(f))

    async def _probe(self, f: _Followed) -> None:
        try:
            signals = f.signals
            timeout = max(0.05, min(self.call_timeout, self.stale_after / 2))
            reply = await self._call(f.name, f.role.key_path, "GetValue", timeout)
            if reply is not None and not f.gone:
                f.heard = self.clock()
                if f.signals == signals:  # no newer signal: the answer is the latest value
                    value = unwrap(reply.body[0])
                    if f.values.get(f.role.key_path, ...) != value:
                        f.values[f.role.key_path] = value
                        self.changed.set()
                self._notice_staleness()
        finally:
            f.probing = False
            self._rearm()  # the next probe's deadline (or a retry of this one)

    # -- D-Bus helpers -----------------------------------------------------------------------------
    async def _dbus_call(self, member: str, signature: str = "", body: list | None = None) -> Message:
        assert self._bus is not None
        reply = await _within(
            self._bus.call(Message(destination=DBUS, path=DBUS_PATH, interface=DBUS, member=member,
                                   signature=signature, body=body or [])),
            self.call_timeout * 3,
        )
        if reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name}")
        return reply

    async def _call(self, name: str, path: str, member: str, timeout: float) -> Message | None:
        assert self._bus is not None
        try:
            reply = await _within(
                self._bus.call(Message(destination=name, path=path, interface=BUSITEM, member=member)),
                timeout,
            )
        except Exception:  # timeout, disconnected, no such service: no answer
            return None
        return None if reply.message_type is MessageType.ERROR else reply

    async def _get_value(self, name: str, path: str) -> Any:
        reply = await self._call(name, path, "GetValue", self.call_timeout)
        return None if reply is None else unwrap(reply.body[0])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("input tracker task failed", exc_info=task.exception())


async def _within(awaitable: Any, seconds: float) -> Any:
    """``await`` with a deadline (TimeoutError). ``asyncio.timeout`` rather than ``wait_for``,
    whose 3.11 version can lose a cancellation that races with completion."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def _connect(address: str | None) -> MessageBus:
    """A connection of our own (a client); ``connect_bus`` decides which bus."""
    from ..dbus.bus import connect_bus

    return await connect_bus(address)
