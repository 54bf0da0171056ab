"""One device's whole life: find it, publish it, poll it, survive its sleep.

States (logged once per transition, never once per timeout)::

    (start) --identified--> ONLINE --N failures--> FAILING --grace--> ASLEEP
                              ^                       |                  |
                              +------- answers -------+------------------+

* ONLINE: polled by refresh class on the driver's own schedule; one store flush per cycle.
* FAILING: consecutive failures; values kept; retried with exponential backoff (one probe
  per interval, so a silent unit costs the bus almost nothing).
* ASLEEP: ``/Connected`` = 0, live values invalid (``driver.go_offline()``), cumulative
  counters kept; still probed with backoff; the service stays on the bus. A lost serial
  port (LinkDown) goes straight here.

A device whose model and serial are known from an earlier run is published at start,
already ASLEEP, so a GX rebooted at night still shows its sleeping inverter.

Registration happens exactly once per identity: waking up never re-registers. Only a
different serial answering at the same address (the device was swapped) tears the
service down and starts over.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..errors import ConfigError, FrameError, LinkDown, ModbusError, ModbusExceptionResponse, ModbusTimeout
from ..items import ItemStore
from ..spec import DeviceSpec
from ..transports.base import UnitClient
from . import service_paths as sp
from .backoff import Backoff
from .config import POSITION_ROLES, RuntimeConfig
from .health import HealthPublisher
from .identity import KnownIdentity, ident_part, identity_from_settings, identity_to_settings, memory_settings

log = logging.getLogger("mbclient.device")


class DeviceState(enum.Enum):
    STARTING = "starting"  # not yet identified in this run, not published
    ONLINE = "online"
    FAILING = "failing"
    ASLEEP = "asleep"


class DeviceReplaced(Exception):
    """Another serial answers at this address: start the lifecycle over."""


class _Log(logging.LoggerAdapter):
    """Prefix every line with the device spec: one greppable line per event."""

    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        return f"[{self.extra['spec']}] {msg}", kwargs


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ModbusTimeout):
        return "timeout"
    if isinstance(exc, LinkDown):
        return f"port down ({exc})" if str(exc) else "port down"
    if isinstance(exc, FrameError):
        return f"bad reply ({exc})" if str(exc) else "bad reply"
    return str(exc) or type(exc).__name__


@dataclass
class RuntimeContext:
    """What every device task shares: configuration, links, settings, service factory."""

    config: RuntimeConfig
    links: Any  # LinkPool: .get(spec) -> Link
    settings: Any  # SettingsClient
    export_factory: Callable[[ItemStore], Any]  # store -> ServiceExport (start/rename/stop)
    registry: Any = None  # module with get_model/identify; default mbclient.devices
    options_factory: Callable[[DeviceSpec], Any] | None = None  # spec -> DeviceOptions
    clock: Callable[[], float] = field(default=time.monotonic)

    def devices(self) -> Any:
        if self.registry is None:
            from .. import devices

            self.registry = devices
        return self.registry


def _model_attr(model: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(model, n, None)
        if v is not None:
            return v
    return default


def service_ident(model: Any, serial: str) -> str:
    """``<prefix>_<serial>``: the bus-name suffix and the /Settings/Devices element."""
    custom = getattr(model, "ident", None)
    if callable(custom):
        return ident_part(custom(serial))
    prefix = _model_attr(model, "prefix", "vendor_prefix", "ident_prefix", default=model.name)
    return ident_part(f"{prefix}_{serial}")


def parse_class_instance(value: Any) -> tuple[str, int] | None:
    """``"pvinverter:20"`` -> ("pvinverter", 20); anything malformed -> None."""
    if not isinstance(value, str) or ":" not in value:
        return None
    role, _, num = value.partition(":")
    try:
        return role, int(num)
    except ValueError:
        return None


class DeviceTask:
    """Runs one configured device until cancelled. See the module docstring for states."""

    def __init__(self, spec: DeviceSpec, ctx: RuntimeContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.cfg = ctx.config
        self.log = _Log(log, {"spec": str(spec)})
        self.state = DeviceState.STARTING
        self.backoff = Backoff(self.cfg.backoff_base, self.cfg.backoff_cap, self.cfg.backoff_jitter)
        self.client: UnitClient | None = None
        self.link: Any = None
        self.model: Any = None
        self.driver: Any = None
        self.known: KnownIdentity | None = None
        self.store: ItemStore | None = None
        self.export: Any = None
        self.health: HealthPublisher | None = None
        self.ident = ""
        self.role = ""
        self.instance = -1
        self.never_answered = True  # in this run
        self.failures = 0  # consecutive
        self.last_ok = 0.0
        self.since = 0.0  # when the current state began
        self.next_probe = 0.0
        self._tg: anyio.abc.TaskGroup | None = None
        self._role_lock = anyio.Lock()
        self._unwatch: list[Callable[[], None]] = []
        self.published = anyio.Event()  # set once the service is on the bus (tests, supervisor)

    # ------------------------------------------------------------------------------ lifecycle
    @property
    def service_name(self) -> str:
        return f"com.victronenergy.{self.role}.{self.ident}"

    async def run(self) -> None:
        self.link = self.ctx.links.get(self.spec)
        self.client = UnitClient(self.link, self.spec.unit)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                while True:
                    try:
                        await self._lifecycle()
                    except DeviceReplaced as exc:
                        self.log.warning("%s: re-registering", exc)
                        await self._unpublish()
                        self.__reset_identity()
        finally:
            with anyio.CancelScope(shield=True):
                await self._unpublish()

    def __reset_identity(self) -> None:
        self.model = self.driver = self.known = self.store = self.health = None
        self.state = DeviceState.STARTING
        self.never_answered = True
        self.backoff.reset()

    async def _lifecycle(self) -> None:
        remembered = await self._recall()
        if remembered is not None:
            self.model = remembered[0]
            self.known = remembered[1]
            self.driver = self._create_driver()
            await self._publish(connected=False)
            self._enter(DeviceState.ASLEEP, self.ctx.clock(),
                        f"known from settings as {self.model.name} serial {self.known.serial}: "
                        "published with /Connected=0 until it answers")
            self.next_probe = self.ctx.clock()
        else:
            await self._discover()
            await self._publish(connected=True)
            self._enter(DeviceState.ONLINE, self.ctx.clock(),
                        f"online: {self.model.name} serial {self.known.serial} as {self.service_name} "
                        f"instance {self.instance}")
        await self._poll_loop()

    # ------------------------------------------------------------------------------- discovery
    async def _recall(self) -> tuple[Any, KnownIdentity] | None:
        """The remembered (model, identity), if it fits the spec and the model still exists."""
        values = await self.ctx.settings.add_settings(memory_settings(self.spec))
        known = identity_from_settings(self.spec, values)
        if known is None:
            return None
        if self.spec.model and self.spec.model != known.model:
            return None
        try:
            model = self.ctx.devices().get_model(known.model)
        except Exception:  # noqa: BLE001 - a model removed since: forget it
            return None
        return model, known

    def _create_driver(self) -> Any:
        self.store = ItemStore()
        options = self.ctx.options_factory(self.spec) if self.ctx.options_factory else None
        if options is None:
            options = self._default_options()
        return self.model.create(self.client, self.store, options)

    def _default_options(self) -> Any:
        try:
            return self.ctx.devices().DeviceOptions()
        except AttributeError:
            return None

    @property
    def _timeout(self) -> float:
        if self.cfg.probe_timeout is not None:
            return self.cfg.probe_timeout
        return float(getattr(self.driver, "timeout", None) or getattr(self.model, "timeout", None) or 1.0)

    async def _liveness_probe(self, timeout: float) -> None:
        """One transaction: any reply, even a Modbus exception, proves the unit is awake."""
        assert self.client is not None
        identity = getattr(self.model, "identity", None) if self.model is not None else None
        try:
            if identity:  # a register this model is known to have
                reg = identity[0]
                await self.client.read(int(reg.table), reg.address, reg.words, timeout=timeout)
            else:
                await self.client.read_holding(0, 1, timeout=timeout)
        except ModbusExceptionResponse:
            pass

    async def _discover(self) -> None:
        """Resolve the model and read the identity, backing off while the unit is silent."""
        devices = self.ctx.devices()
        fixed = devices.get_model(self.spec.model) if self.spec.model else None
        logged = False
        while True:
            now = self.ctx.clock()
            try:
                if fixed is not None:
                    self.model = fixed
                else:
                    # One cheap transaction first: while the unit sleeps, identify() (one
                    # read per known family) would cost the bus several timeouts per probe.
                    self.model = None
                    await self._liveness_probe(self.cfg.identify_timeout)
                    self.model = await devices.identify(self.client, timeout=self.cfg.identify_timeout)
                    if self.model is None:
                        raise LookupError("no supported model recognises this unit")
                self.driver = self._create_driver()
                identity = await self.driver.read_identity()
                self.known = KnownIdentity.from_driver(self.model.name, identity)
                if not self.known.serial:
                    raise LookupError("the unit reported no serial number")
                self.backoff.reset()
                return
            except (ModbusError, LookupError, ConfigError) as exc:
                delay = self.backoff.next()
                if isinstance(exc, LinkDown):
                    delay = min(delay, self.cfg.link_down_cap)
                if not logged:
                    self.log.info("not identified yet (%s); retrying with backoff up to %.0f s",
                                  _reason(exc), self.cfg.backoff_cap)
                    logged = True
                else:
                    self.log.debug("identify failed (%s); next try in %.1f s", _reason(exc), delay)
                await anyio.sleep(max(0.0, now + delay - self.ctx.clock()))

    # ------------------------------------------------------------------------------ publishing
    def _device_setting(self, name: str) -> str:
        return f"/Settings/Devices/{self.ident}/{name}"

    async def _publish(self, connected: bool) -> None:
        """Register settings, build the store, export it under its service name."""
        assert self.known is not None and self.store is not None
        settings = self.ctx.settings
        model = self.model
        self.ident = service_ident(model, self.known.serial)
        default_role = _model_attr(model, "default_role", "role", default="pvinverter")
        allowed = tuple(_model_attr(model, "allowed_roles", "roles", default=()) or (default_role,))
        preferred = int(_model_attr(model, "device_instance", "preferred_instance", default=20))
        self.role, self.instance = await settings.claim_instance(self.ident, default_role, preferred)
        if self.role not in allowed:  # the setting names a role this model cannot take
            self.log.warning("stored role %r not allowed for %s; using %s", self.role, model.name, default_role)
            self.role, self.instance = await settings.claim_instance(
                self.ident, default_role, self.instance, force=True)
        self._set_driver_role(self.role)
        defs: list[tuple] = [(self._device_setting("CustomName"), "")]
        if self._has_position_setting():
            defs.append((self._device_setting("Position"), 0, 0, 2))
        values = await settings.add_settings(defs)
        custom_name = values.get(self._device_setting("CustomName")) or ""
        position = values.get(self._device_setting("Position"), 0)

        store = self.store
        product_name = str(_model_attr(model, "product_name", "product", default=model.name))
        sp.add_generic_paths(
            store,
            process_name=self.cfg.process_name,
            connection=f"{getattr(self.link, 'name', self.spec.method)}:{self.spec.unit}",
            instance=self.instance,
            product_id=_model_attr(model, "product_id"),
            product_name=product_name,
            known=self.known,
            custom_name=str(custom_name),
            on_custom_name=self._on_custom_name,
        )
        if len(allowed) > 1:
            sp.add_role_paths(store, self.role, allowed, self._on_role)
        sp.set_position_path(store, self._position_choices(self.role), int(position or 0), self._on_position)
        self.driver.add_items()
        self.health = HealthPublisher(store, lambda: self.link.stats(self.spec.unit), self.cfg.stats_interval)
        self.health.add_items()
        store.set(sp.P_CONNECTED, 1 if connected else 0)
        if connected:
            await self._first_poll()
        self.health.update(self.ctx.clock(), force=True)
        store.flush()

        self.export = self.ctx.export_factory(store)
        vreglink = getattr(self.driver, "vreglink", None)  # VREG access for VictronConnect
        if vreglink is not None and hasattr(self.export, "export_extra"):
            from ..dbus.vreglink import attach_vreglink

            attach_vreglink(self.export, vreglink)
        await self.export.start(self.service_name)
        self._watch_settings()
        await self._remember()
        self.published.set()

    async def _first_poll(self) -> None:
        """One poll before the name appears, so consumers' single scan sees real values."""
        now = self.ctx.clock()
        try:
            await self.driver.poll(now)
            self._ok(now)
        except ModbusExceptionResponse:
            self._ok(now)
        except ModbusError as exc:
            self.log.debug("first poll failed (%s)", _reason(exc))

    async def _remember(self) -> None:
        assert self.known is not None
        try:
            await self.ctx.settings.set_many(identity_to_settings(self.spec, self.known))
        except Exception as exc:  # noqa: BLE001 - memory is a convenience, never fatal
            self.log.warning("could not remember identity in settings: %s", exc)

    async def _unpublish(self) -> None:
        for unwatch in self._unwatch:
            try:
                unwatch()
            except Exception:  # noqa: BLE001
                pass
        self._unwatch.clear()
        export, self.export = self.export, None
        if export is not None:
            try:
                await export.stop()
            except Exception as exc:  # noqa: BLE001 - the bus may already be gone at shutdown
                self.log.debug("stopping service: %s", exc)

    # ------------------------------------------------------------------------------- roles
    def _position_choices(self, role: str) -> tuple[int, ...] | None:
        fn = getattr(self.model, "position_choices", None)
        if callable(fn):
            return fn(role)
        return (0, 1, 2) if role in POSITION_ROLES else None

    def _has_position_setting(self) -> bool:
        allowed = _model_attr(self.model, "allowed_roles", "roles", default=()) or ()
        return any(self._position_choices(r) for r in allowed)

    def _set_driver_role(self, role: str) -> None:
        """Tell the driver its role; the one role-dependent device path is handled here.

        A meter in any role but grid is a "generic energy meter" (upstream convention).
        """
        setter = getattr(self.driver, "set_role", None)
        if callable(setter):
            setter(role)
            return
        if getattr(self.driver, "role", role) == role:
            return
        self.driver.role = role
        store = self.store
        if store is not None and getattr(self.model, "is_meter", False) and sp.P_CONNECTED in store:
            if role == "grid":
                store.remove("/IsGenericEnergyMeter")
            elif "/IsGenericEnergyMeter" not in store:
                store.add("/IsGenericEnergyMeter", 1, kind=int)

    # ------------------------------------------------------------------ settings <-> D-Bus paths
    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._tg is not None:
            self._tg.start_soon(fn, *args)

    async def _persist(self, path: str, value: Any) -> None:
        try:
            await self.ctx.settings.set(path, value)
        except Exception as exc:  # noqa: BLE001
            self.log.warning("could not store %s: %s", path, exc)

    def _on_custom_name(self, value: Any) -> bool:
        self._spawn(self._persist, self._device_setting("CustomName"), value)
        return True

    def _on_position(self, value: Any) -> bool:
        self._spawn(self._persist, self._device_setting("Position"), int(value))
        return True

    def _on_role(self, value: Any) -> bool:
        if value != self.role:
            self._spawn(self._change_role, str(value), None)
        return True

    def _watch_settings(self) -> None:
        s = self.ctx.settings
        self._unwatch = [
            s.watch(self._device_setting("CustomName"), self._custom_name_changed),
            s.watch(self._device_setting("ClassAndVrmInstance"), self._class_instance_changed),
        ]
        if self._has_position_setting():
            self._unwatch.append(s.watch(self._device_setting("Position"), self._position_changed))
        self._unwatch = [u for u in self._unwatch if callable(u)]

    def _custom_name_changed(self, value: Any) -> None:
        if self.store is not None and isinstance(value, str):
            self.store.set(sp.P_CUSTOM_NAME, value)
            self.store.flush()

    def _position_changed(self, value: Any) -> None:
        if self.store is not None and sp.P_POSITION in self.store and isinstance(value, int):
            self.store.set(sp.P_POSITION, value)
            self.store.flush()

    def _class_instance_changed(self, value: Any) -> None:
        parsed = parse_class_instance(value)
        if parsed is None or self.store is None:
            return
        role, instance = parsed
        if role != self.role:
            self._spawn(self._change_role, role, instance)
        elif instance != self.instance:
            self.instance = instance
            self.store.set(sp.P_INSTANCE, instance)
            self.store.flush()
            self.log.info("device instance now %d", instance)

    async def _change_role(self, role: str, instance: int | None) -> None:
        """Move the service to its new name (consumers rescan it) keeping the instance."""
        async with self._role_lock:
            if role == self.role or self.store is None or self.export is None:
                return
            allowed = tuple(_model_attr(self.model, "allowed_roles", "roles", default=()) or ())
            if role not in allowed:
                self.log.warning("role %r not allowed for %s; keeping %s", role, self.model.name, self.role)
                self.store.set(sp.P_ROLE, self.role) if sp.P_ROLE in self.store else None
                self.store.flush()
                return
            if instance is None:  # asked on /Role: write the class, let settings settle the number
                new_role, new_instance = await self.ctx.settings.claim_instance(
                    self.ident, role, self.instance, force=True)
            else:  # changed in settings already
                new_role, new_instance = role, instance
            old_name = self.service_name
            self.role, self.instance = new_role, new_instance
            store = self.store
            if sp.P_ROLE in store:
                store.set(sp.P_ROLE, new_role)
            store.set(sp.P_INSTANCE, new_instance)
            choices = self._position_choices(new_role)
            position = await self.ctx.settings.get(self._device_setting("Position")) if choices else 0
            sp.set_position_path(store, choices, int(position or 0), self._on_position)
            self._set_driver_role(new_role)
            store.flush()
            await self.export.rename(self.service_name)
            self.log.info("role changed: %s -> %s (instance %d)", old_name, self.service_name, new_instance)

    # ------------------------------------------------------------------------------- states
    def _enter(self, state: DeviceState, now: float, message: str) -> None:
        self.state = state
        self.since = now
        if self.health is not None:
            self.health.set_state(state.value)
        self.log.info("%s", message)

    def _ok(self, now: float) -> None:
        self.last_ok = now
        self.failures = 0
        if self.state in (DeviceState.ONLINE, DeviceState.STARTING) or self.store is None:
            return  # STARTING: the lifecycle announces the first ONLINE itself
        prev, since = self.state, self.since
        self.backoff.reset()
        self.store.set(sp.P_CONNECTED, 1)
        self._enter(DeviceState.ONLINE, now, f"online again ({prev.value} for {now - since:.1f} s)")

    def _failed(self, now: float, exc: ModbusError) -> None:
        self.failures += 1
        link_down = isinstance(exc, LinkDown)
        if self.state is DeviceState.ONLINE and self.failures < self.cfg.fail_threshold and not link_down:
            self.log.debug("%s (%d in a row)", _reason(exc), self.failures)
            return  # one lost reply on a noisy line is not a state change
        delay = self.backoff.next()
        if link_down:
            delay = min(delay, self.cfg.link_down_cap)
        self.next_probe = now + delay
        if self.state is DeviceState.ONLINE:
            self._enter(DeviceState.FAILING, now,
                        f"failing: {_reason(exc)} ({self.failures} in a row); probing with backoff")
        if link_down and self.state is not DeviceState.ASLEEP:
            self._go_asleep(now, _reason(exc))
        else:
            self._check_grace(now)
        self.log.debug("%s; next probe in %.2f s", _reason(exc), delay)

    def _check_grace(self, now: float) -> None:
        if self.state is DeviceState.FAILING and now - self.last_ok >= self.cfg.grace:
            self._go_asleep(now, f"no answer for {now - self.last_ok:.1f} s")

    def _go_asleep(self, now: float, why: str) -> None:
        assert self.store is not None and self.health is not None
        self.store.set(sp.P_CONNECTED, 0)
        self.driver.go_offline()
        self.health.refresh.gap()
        self._enter(DeviceState.ASLEEP, now, f"asleep: {why}; /Connected=0, live values invalid")

    # ---------------------------------------------------------------------------- polling
    def _wakeup_event(self) -> Any:
        return getattr(self.driver, "wakeup", None)

    async def _wait(self, until: float) -> None:
        """Sleep until ``until`` or until the driver has a write pending."""
        delay = max(0.0, until - self.ctx.clock())
        event = self._wakeup_event()
        if event is None or event.is_set() or delay == 0.0:
            if delay:
                await anyio.sleep(delay)
            return
        with anyio.move_on_after(delay):
            await event.wait()

    def _next_poll(self, now: float) -> float:
        nxt = getattr(self.driver, "next_deadline", None)
        if callable(nxt):
            return min(nxt(now), now + self.cfg.idle_tick)
        return now + self.cfg.poll_tick

    async def _poll_once(self, now: float) -> None:
        """An ONLINE/FAILING cycle: pending writes, then whatever refresh classes are due."""
        event = self._wakeup_event()
        if event is not None and event.is_set() and hasattr(event, "clear"):
            event.clear()
        await self.driver.service_writes(now)
        if self.driver.due(now):
            await self.driver.poll(now)
            self._ok(now)
            self.health.refresh.mark(now)

    async def _probe(self, now: float) -> None:
        """A FAILING/ASLEEP probe: one transaction; a full poll only once it answers."""
        if self.never_answered and self.state is DeviceState.ASLEEP and self.known is not None:
            await self._wake_remembered()
            return
        await self._liveness_probe(self._timeout)
        await self.driver.poll(now)
        self._ok(now)
        self.health.refresh.mark(now)

    async def _wake_remembered(self) -> None:
        """First answer of a device published from memory: check it is the same one."""
        assert self.known is not None
        await self._liveness_probe(self._timeout)
        identity = await self.driver.read_identity()
        fresh = KnownIdentity.from_driver(self.model.name, identity)
        if fresh.serial and fresh.serial != self.known.serial:
            raise DeviceReplaced(f"serial {fresh.serial} answers where {self.known.serial} was")
        self.never_answered = False
        if fresh != self.known:
            self.known = fresh
            sp.set_identity(self.store, fresh, self.store.get(sp.P_PRODUCT_NAME) or "")
            await self._remember()
        now = self.ctx.clock()
        await self.driver.poll(now)
        self._ok(now)
        self.health.refresh.mark(now)

    async def _poll_loop(self) -> None:
        assert self.store is not None and self.health is not None
        if self.state is DeviceState.ONLINE:
            self.never_answered = False
        exc_logged: set[tuple[int, int]] = set()
        while True:
            now = self.ctx.clock()
            try:
                if self.state is DeviceState.ONLINE:
                    await self._poll_once(now)
                elif now >= self.next_probe:
                    await self._probe(now)
            except ModbusExceptionResponse as exc:
                # The unit is awake but refuses a register: a model/firmware mismatch,
                # not a sleeping device. Warn once per kind, keep polling.
                self._ok(now)
                key = (exc.function, exc.code)
                if key not in exc_logged:
                    exc_logged.add(key)
                    self.log.warning("unit answers %s", exc)
            except (ModbusTimeout, FrameError, LinkDown) as exc:
                self._failed(now, exc)
            except ModbusError as exc:
                self._failed(now, exc)
            now = self.ctx.clock()
            self._check_grace(now)
            self.health.update(now)
            self.store.flush()
            if self.state is DeviceState.ONLINE:
                until = self._next_poll(now)
            else:
                until = self.next_probe
                if self.state is DeviceState.FAILING:
                    until = min(until, self.last_ok + self.cfg.grace)
                until = min(until, now + self.cfg.stats_interval)
            await self._wait(until)
