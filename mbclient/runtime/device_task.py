"""One device's whole life: find it, publish it, poll it, survive its sleep.

States (logged once per transition, never once per timeout)::

    (start) --identified--> ONLINE --N failures--> FAILING --grace--> ASLEEP
                              ^                       |                  |
                              +------- answers -------+------------------+

* ONLINE: polled by refresh class on the driver's own schedule; the store is flushed after
  every block read (and once per cycle for state); pending writes serviced as soon as the
  driver's ``wakeup`` event fires. While a zero-export controller follows this device
  (``demand.PollDemand``) its FAST class is polled every ``control_poll`` seconds.
* FAILING: consecutive failures; values kept; retried with exponential backoff, one
  probe (one transaction) per interval, so a silent unit costs the bus almost nothing.
* ASLEEP: ``/Connected`` = 0, live values invalid (``driver.go_offline()``), cumulative
  counters kept; still probed with backoff; the service stays on the bus. A lost serial
  port (LinkDown) goes straight here.

A device whose model and serial are known from an earlier run is published at start,
already ASLEEP, so a GX rebooted at night still shows its sleeping inverter.

Registration happens once per identity: waking up never re-registers. Only a different
serial answering at the same address (the device was swapped) tears the service down and
starts over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from .. import devices
from ..dbus.service import ServiceExport
from ..dbus.settings import ClassAndInstance, Setting, SettingsClient, device_setting, mirror_setting
from ..control.dyngen import DynamicGeneration
from ..dbus.vreglink import attach_vreglink
from ..errors import (
    ConfigError,
    FrameError,
    LinkDown,
    MbclientError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusTimeout,
)
from ..items import ItemStore
from ..spec import DeviceSpec
from ..transports.base import UnitClient
from . import service_paths as sp
from .backoff import Backoff
from .config import RuntimeConfig
from .demand import PollDemand
from .health import HealthPublisher
from .identity import KnownIdentity, identity_from_settings, identity_to_settings, memory_settings

log = logging.getLogger("mbclient.device")


#: Pause between two cycles that are due at once yet send nothing (see ``_poll_loop``).
SPIN_PAUSE = 0.05


class DeviceState(enum.Enum):
    STARTING = "starting"  # not yet identified in this run, not published
    ONLINE = "online"
    FAILING = "failing"
    ASLEEP = "asleep"


class DeviceReplaced(Exception):
    """Another device answers at this address: start the lifecycle over."""


class DeviceFailed(MbclientError):
    """With ``-x``: a device that was online stopped answering (or lost its port); the
    process exits so that runit, or serial-starter's probe cycle, starts over."""


class DuplicateDevice(MbclientError):
    """Two configured specs reach the same device (a host alias, an RTU gateway): it runs
    once, through the spec that published it first; the other waits for a change."""


class _Log(logging.LoggerAdapter):
    """Prefix every line with the device spec: one greppable line per event."""

    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        return f"[{self.extra['spec']}] {msg}", kwargs


def reason(exc: BaseException) -> str:
    """A few words for the log: why a transaction or an identification failed."""
    if isinstance(exc, ModbusTimeout):
        return "timeout"
    if isinstance(exc, LinkDown):
        return str(exc) or "port down"
    if isinstance(exc, FrameError):
        return f"bad reply ({exc})" if str(exc) else "bad reply"
    return str(exc) or type(exc).__name__


@dataclass
class RuntimeContext:
    """What every device task shares: configuration, links and the settings client."""

    config: RuntimeConfig
    links: Any  # LinkPool: .get(spec) -> Link
    settings: SettingsClient
    options_factory: Callable[[DeviceSpec], devices.DeviceOptions] | None = None
    demand: PollDemand = field(default_factory=PollDemand)
    claims: dict[str, DeviceSpec] = field(default_factory=dict)  # device ident -> spec publishing it
    #: called with the task each time a device's service goes on the bus (discovery's
    #: per-device Enabled setting): a change to react to, not a state to poll for
    on_published: list[Callable[[DeviceTask], None]] = field(default_factory=list)

    def claim(self, ident: str, spec: DeviceSpec) -> DeviceSpec | None:
        """Reserve ``ident`` for ``spec``; the spec that holds it already, if another."""
        holder = self.claims.setdefault(ident, spec)
        return None if holder is spec else holder

    def release(self, ident: str, spec: DeviceSpec) -> None:
        if self.claims.get(ident) is spec:
            del self.claims[ident]

    def options(self, spec: DeviceSpec) -> devices.DeviceOptions:
        opts = self.options_factory(spec) if self.options_factory else None
        return opts if opts is not None else devices.DeviceOptions()


class DeviceTask:
    """Runs one configured device until cancelled. See the module docstring for states."""

    def __init__(self, spec: DeviceSpec, ctx: RuntimeContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.cfg = ctx.config
        self.settings = ctx.settings
        self.log = _Log(log, {"spec": str(spec)})
        self.state = DeviceState.STARTING
        self.backoff = Backoff(self.cfg.backoff_base, self.cfg.backoff_cap, self.cfg.backoff_jitter)
        self.link: Any = None
        self.client: UnitClient | None = None
        self.model: devices.Model | None = None
        self.driver: devices.Driver | None = None
        self.known: KnownIdentity | None = None
        self.store: ItemStore | None = None
        self.export: ServiceExport | None = None
        self.health: HealthPublisher | None = None
        self.ident = ""  # /Settings/Devices/<ident>; one device, one ident (per serial)
        self.bus_ident = ""  # fourth element of the service name (usually the ident)
        self.role = ""
        self.instance = -1
        self.never_answered = True  # in this run (a device published from memory)
        self.was_online = False  # in this run: with -x, its failure ends the process
        self.failures = 0  # consecutive
        self.last_ok = 0.0
        self.since = 0.0  # when the current state began
        self.next_probe = 0.0
        self.published = anyio.Event()  # set once the service is on the bus
        self._tg: anyio.abc.TaskGroup | None = None
        self._role_lock = anyio.Lock()
        self._undo: list[Callable[[], None]] = []
        self._undo_position: Callable[[], None] | None = None
        self._memory: dict[str, Any] = {}
        self._skip_memory = False
        self._exceptions_seen: set[tuple[int, int]] = set()
        self.dyngen: DynamicGeneration | None = None
        self._detach_demand: Callable[[], None] | None = None
        self._spin_warned = False
        self._poll_at = 0.0  # the poll deadline the link woke us early for (``_wait``)

    @property
    def service_name(self) -> str:
        return f"com.victronenergy.{self.role}.{self.bus_ident or self.ident}"

    # ------------------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Until cancelled; the service is unpublished on the way out (also on errors)."""
        self.link = self.ctx.links.get(self.spec)
        self.client = UnitClient(self.link, self.spec.unit)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                while True:
                    try:
                        await self._lifecycle()
                    except DeviceReplaced as exc:
                        self.log.warning("%s: registering it afresh", exc)
                        await self._unpublish()
                        self._forget_identity()
        except BaseExceptionGroup as group:
            # The helper task group wraps our own errors; hand the supervisor the error
            # itself so its one log line names the problem.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._release()
                await self._unpublish()

    async def _release(self) -> None:
        """On stop, a driver that limits its inverter through a self-reverting limit gives
        the full power back (``driver.release()``), bounded in time; errors are logged."""
        release = getattr(self.driver, "release", None)
        if release is None or self.state is not DeviceState.ONLINE:
            return
        with anyio.move_on_after(2.0):
            try:
                await release()
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                self.log.warning("could not release the power limit on stop: %s", reason(exc))

    def _forget_identity(self) -> None:
        self.model = self.driver = self.known = self.store = self.health = self.dyngen = None
        self.state = DeviceState.STARTING
        self.never_answered = True
        self._skip_memory = True  # the memory describes the device that left
        self.backoff.reset()
        self.published = anyio.Event()

    async def _lifecycle(self) -> None:
        remembered = await self._recall()
        if remembered is not None:
            self.model, self.known = remembered
            self._create_driver()
            await self._publish(connected=False)
            self._enter(DeviceState.ASLEEP, time.monotonic(),
                        f"not answering yet; known from an earlier run as {self.model.name} serial "
                        f"{self.known.serial}: published as {self.service_name} with /Connected=0")
            self.next_probe = time.monotonic()
        else:
            await self._discover()
            await self._publish(connected=True)
            self.never_answered = False
            self._enter(DeviceState.ONLINE, time.monotonic(),
                        f"online: {self.model.name} serial {self.known.serial} as {self.service_name} "
                        f"instance {self.instance}")
        await self._poll_loop()

    # ------------------------------------------------------------------------------- discovery
    async def _recall(self) -> tuple[devices.Model, KnownIdentity] | None:
        """The remembered (model, identity), if it fits the spec and the model still exists."""
        defs = [Setting(path, default) for path, default in memory_settings(self.spec)]
        self._memory = dict(await self.settings.add(defs))
        if self._skip_memory:
            return None
        known = identity_from_settings(self.spec, self._memory)
        if known is None:
            return None
        try:
            model = devices.get_model(known.model)
        except ConfigError:  # a model removed since: forget it
            return None
        if self.spec.model and self.spec.model not in (model.name, model.family):
            return None
        return model, known

    async def _remember(self) -> None:
        """Store model and identity for the next start (only what changed)."""
        assert self.known is not None
        for path, value in identity_to_settings(self.spec, self.known).items():
            if self._memory.get(path) != value:
                if await self.settings.set(path, value) == 0:
                    self._memory[path] = value
                else:
                    self.log.warning("settings refused %s = %r", path, value)

    def _create_driver(self) -> None:
        assert self.model is not None and self.client is not None
        self.store = ItemStore()
        options = self.ctx.options(self.spec)
        if self.spec.index != options.index:
            options = dataclasses.replace(options, index=self.spec.index)
        self.driver = self.model.create(self.client, self.store, options)

    @property
    def probe_timeout(self) -> float:
        if self.cfg.probe_timeout is not None:
            return self.cfg.probe_timeout
        return self.driver.timeout if self.driver is not None else self.cfg.identify_timeout

    async def _liveness_probe(self, timeout: float) -> None:
        """One transaction: any reply, even a Modbus exception, proves the unit is awake.

        With a known model it reads the model's first identity register (one it is known
        to have); otherwise holding register 0.
        """
        assert self.client is not None
        try:
            if self.model is not None and self.model.identity:
                reg = self.model.identity[0]
                await self.client.read(int(reg.table), reg.address, reg.words, timeout=timeout)
            else:
                await self.client.read_holding(0, 1, timeout=timeout)
        except ModbusExceptionResponse:
            pass

    async def _discover(self) -> None:
        """Resolve the model and read the identity, backing off while the unit is silent."""
        fixed = devices.get_model(self.spec.model) if self.spec.model else None
        logged = False
        while True:
            started = time.monotonic()
            try:
                if fixed is not None:
                    self.model = fixed
                else:
                    # One cheap transaction first: while the unit sleeps, identify() (one
                    # read per known family) would cost the bus several timeouts per probe.
                    self.model = None
                    await self._liveness_probe(self.cfg.identify_timeout)
                    self.model = await devices.identify(self.client, timeout=self.cfg.identify_timeout)
                self._create_driver()
                identity = await self.driver.read_identity()
                # A model family that describes what it found (a SunSpec chain's inverter or
                # meter) hands back the model it resolved to.
                self.model = self.driver.model
                self.known = KnownIdentity.from_driver(self.model.name, identity)
                self.backoff.reset()
                self.last_ok = time.monotonic()
                return
            except (ModbusError, ConfigError) as exc:
                delay = self.backoff.next()
                if isinstance(exc, LinkDown):
                    delay = min(delay, self.cfg.link_down_cap)
                if not logged:
                    self.log.info("not identified yet (%s); retrying with backoff up to %.0f s",
                                  reason(exc), self.cfg.backoff_cap)
                    logged = True
                else:
                    self.log.debug("identification failed (%s); next try in %.1f s", reason(exc), delay)
                await anyio.sleep(max(0.0, started + delay - time.monotonic()))

    # ------------------------------------------------------------------------------ publishing
    def _setting(self, name: str) -> str:
        return device_setting(self.ident, name)

    def _position_choices(self, role: str) -> tuple[int, ...] | None:
        return self.model.position_choices(role)

    def _has_position_setting(self) -> bool:
        return any(self._position_choices(r) for r in self.model.allowed_roles)

    async def _publish(self, connected: bool) -> None:
        """Register settings, build the store, export it under its service name."""
        model, known, store, settings = self.model, self.known, self.store, self.settings
        assert model is not None and known is not None and store is not None
        ident = model.ident(known.serial)
        holder = self.ctx.claim(ident, self.spec)
        if holder is not None:
            raise DuplicateDevice(f"{self.spec} and {holder} are the same device ({model.name} serial "
                                  f"{known.serial}): it runs once, through {holder}; remove one of the two")
        self.ident = ident
        self.bus_ident = model.service_ident(known.serial, self.spec.serial_port, self.spec.unit)
        ci = await settings.claim_device(self.ident, model.default_role, model.device_instance)
        if ci.role not in model.allowed_roles:  # a role this model cannot take (edited by hand)
            self.log.warning("stored role %r not allowed for %s; using %s", ci.role, model.name, model.default_role)
            ci = await settings.set_class_and_instance(self.ident, model.default_role, ci.instance)
        self.role, self.instance = ci.role, ci.instance
        self._set_driver_role(self.role)

        defs = [Setting(self._setting("CustomName"), "")]
        if self._has_position_setting():
            defs.append(Setting(self._setting("Position"), 0, 0, 2))
        values = await settings.add(defs)

        sp.add_generic_paths(
            store,
            process_name=self.cfg.process_name,
            connection=f"{self.link.name}:{self.spec.unit}",
            instance=self.instance,
            product_id=model.product_id,
            product_name=model.product_name,
            known=known,
            custom_name=str(values.get(self._setting("CustomName"), "")),
        )
        stored_name = values.get(self._setting("CustomName"), "")
        if store[sp.P_CUSTOM_NAME] != stored_name:  # edited elsewhere: setting and service agree
            self.log.warning("CustomName %r tidied to %r (no control characters, at most %d)", stored_name,
                             store[sp.P_CUSTOM_NAME], sp.CUSTOM_NAME_MAX)
            await settings.set(self._setting("CustomName"), store[sp.P_CUSTOM_NAME])
        if len(model.allowed_roles) > 1:
            sp.add_role_paths(store, self.role, model.allowed_roles, self._on_role_write)
        self.driver.add_items()
        limiter = getattr(self.driver, "limiter", None)
        if limiter is not None:  # a limitable inverter: the zero-export controller rides along
            self.dyngen = DynamicGeneration(store, limiter, settings, bus_address=self.cfg.bus_address)
        self.health = HealthPublisher(store, lambda: self.link.stats(self.spec.unit), self.cfg.stats_interval)
        self.health.add_items()
        self._undo.append(mirror_setting(settings, store, sp.P_CUSTOM_NAME, self._setting("CustomName")))
        await self._update_position(self.role)
        store.set(sp.P_CONNECTED, 1 if connected else 0)
        if connected:
            await self._first_poll()
        self.health.update(time.monotonic(), force=True)
        store.flush()

        await self._remember()  # first: a restart right after publishing still knows it
        self.export = ServiceExport(store, self.cfg.bus_address)
        vreglink = getattr(self.driver, "vreglink", None)
        if vreglink is not None:  # Victron meters: VictronConnect's VREG access, before the name
            attach_vreglink(self.export, vreglink)
        await self.export.start(self.service_name)
        self._attach_demand()
        self._undo.append(self._detach)
        self._undo.append(settings.watch_device(self.ident, self._class_instance_changed, self._class_instance_invalid))
        if self.dyngen is not None:
            self._undo.append(self._start_controller(self.dyngen))
        self.published.set()
        for hook in list(self.ctx.on_published):
            hook(self)

    def _start_controller(self, controller: DynamicGeneration) -> Callable[[], None]:
        """Run the controller beside the poll loop, for as long as the service is published.
        Its failure is logged and never takes the device down (the limit stays as it is).
        While it steers, the grid meter it follows is polled fast if it is one of ours, and
        the controller judges that meter's freshness by its last successful read and takes
        its readings from its item store rather than over D-Bus."""
        scope = anyio.CancelScope()
        demand, interval = self.ctx.demand, self.cfg.control_poll

        def follow(service: str | None) -> None:
            demand.want(controller, service, interval)

        async def run() -> None:
            with scope:
                try:
                    await controller.run()
                except Exception as exc:  # noqa: BLE001 - contained to the controller
                    self.log.error("dynamic generation stopped: %s", reason(exc))
                finally:
                    demand.want(controller, None)

        controller.on_follow = follow
        controller.read_age = demand.read_age
        controller.tracker.local_store = demand.store  # our own meters' readings in process
        self._spawn(run)
        return scope.cancel

    def _attach_demand(self) -> None:
        """Hear how fast a controller wants our FAST registers, under our current name."""
        self._detach()

        def heard(interval: float | None) -> None:
            if self.driver is not None:
                self.driver.set_fast_interval(interval)
                if interval is not None:
                    self.log.info("a controller follows this device: FAST class every %.2f s", interval)

        def last_read() -> float | None:
            return self.last_ok if self.last_ok > 0 else None

        self._detach_demand = self.ctx.demand.attach(self.service_name, heard, last_read, self.store)

    def _detach(self) -> None:
        if self._detach_demand is not None:
            self._detach_demand()
            self._detach_demand = None
            if self.driver is not None:
                self.driver.set_fast_interval(None)

    async def _update_position(self, role: str) -> None:
        """/Position for roles that have one (value from settings), none for the others."""
        store = self.store
        choices = self._position_choices(role)
        value = 0
        if choices:
            value = await self.settings.get(self._setting("Position"))
        if self._undo_position is not None:
            self._undo_position()
            self._undo_position = None
        sp.set_position_path(store, choices, int(value or 0), None)
        if sp.P_POSITION in store:
            self._undo_position = mirror_setting(self.settings, store, sp.P_POSITION, self._setting("Position"))

    async def _first_poll(self) -> None:
        """One poll before the name appears, so consumers' single scan sees real values."""
        now = time.monotonic()
        try:
            await self.driver.poll(now)
            self.last_ok = now
        except ModbusExceptionResponse:
            self.last_ok = now
        except ModbusError as exc:
            self.log.debug("first poll failed (%s)", reason(exc))

    async def _unpublish(self) -> None:
        for undo in (*self._undo, self._undo_position):
            if undo is not None:
                try:
                    undo()
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
        self._undo.clear()
        self._undo_position = None
        export, self.export = self.export, None
        if export is not None:
            try:
                await export.stop()
            except Exception as exc:  # noqa: BLE001 - the bus may already be gone at shutdown
                self.log.debug("stopping service: %s", exc)
        if self.ident:
            self.ctx.release(self.ident, self.spec)

    # ------------------------------------------------------------------------------- roles
    def _set_driver_role(self, role: str) -> None:
        """Tell the driver its role; the one role-dependent device path is handled here.

        A meter in any role but grid is a "generic energy meter" (upstream convention);
        the driver adds that path in ``add_items`` from its role, so after a later role
        change the runtime adds or removes it.
        """
        driver, store = self.driver, self.store
        if driver.role == role:
            return
        driver.role = role
        if self.model.is_meter and store is not None and sp.P_CONNECTED in store:
            if role == "grid":
                store.remove("/IsGenericEnergyMeter")
            elif "/IsGenericEnergyMeter" not in store:
                store.add("/IsGenericEnergyMeter", 1, kind=int)

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._tg is not None:
            self._tg.start_soon(fn, *args)

    def _on_role_write(self, value: Any) -> bool:
        """SetValue on /Role (validated against /AllowedRoles by the store)."""
        if value != self.role:
            self._spawn(self._change_role, str(value), None)
        return True

    def _class_instance_changed(self, ci: ClassAndInstance) -> None:
        """ClassAndVrmInstance changed in settings (GUI VRM-instance page, or our own write)."""
        if self.store is None:
            return
        if ci.role != self.role:
            self._spawn(self._change_role, ci.role, ci.instance)
        elif ci.instance != self.instance:
            self.instance = ci.instance
            self.store.set(sp.P_INSTANCE, ci.instance)
            self.store.flush()
            self.log.info("device instance now %d", ci.instance)

    def _class_instance_invalid(self, value: Any) -> None:
        """Not a class and instance (``grid:-5``, garbage): the service keeps its own, and
        the setting is set back to it, so the two never disagree."""
        self.log.warning("ClassAndVrmInstance %r is not '<class>:<instance>' with an instance >= 0: "
                         "set back to %s:%d", value, self.role, self.instance)
        self._spawn(self._restore_class_instance)

    async def _restore_class_instance(self) -> None:
        async with self._role_lock:
            try:
                await self.settings.set(self._setting("ClassAndVrmInstance"), f"{self.role}:{self.instance}")
            except Exception as exc:  # noqa: BLE001 - the next change tries again
                self.log.warning("cannot restore ClassAndVrmInstance: %s", reason(exc))

    async def _change_role(self, role: str, instance: int | None) -> None:
        """Move the service to its new name (consumers rescan it) keeping the instance."""
        async with self._role_lock:
            store, export = self.store, self.export
            if role == self.role or store is None or export is None:
                return
            if role not in self.model.allowed_roles:
                asked = "/Role" if instance is None else f"ClassAndVrmInstance {role}:{instance}"
                self.log.warning("%s: role %r not allowed for %s; keeping %s:%d", asked, role, self.model.name,
                                 self.role, self.instance)
                if sp.P_ROLE in store:
                    store.set(sp.P_ROLE, self.role)
                    store.flush()
                if instance is not None:  # it came from the setting: set it back, never disagree
                    await self.settings.set(self._setting("ClassAndVrmInstance"), f"{self.role}:{self.instance}")
                return
            if instance is None:  # asked on /Role: write the class, settings settle the number
                ci = await self.settings.set_class_and_instance(self.ident, role, self.instance)
            else:  # already changed in settings
                ci = ClassAndInstance(role, instance)
            old_name = self.service_name
            self.role, self.instance = ci.role, ci.instance
            if sp.P_ROLE in store:
                store.set(sp.P_ROLE, ci.role)
            store.set(sp.P_INSTANCE, ci.instance)
            self._set_driver_role(ci.role)
            await self._update_position(ci.role)
            store.flush()
            await export.rename(self.service_name)
            self._attach_demand()
            self.log.info("role changed: %s is now %s (instance %d)", old_name, self.service_name, ci.instance)

    # ------------------------------------------------------------------------------- states
    def _enter(self, state: DeviceState, now: float, message: str) -> None:
        self.state = state
        self.was_online = self.was_online or state is DeviceState.ONLINE
        self.since = now
        if self.health is not None:
            self.health.set_state(state.value)
        self.log.info("%s", message)

    def _ok(self, now: float) -> None:
        self.last_ok = now
        self.failures = 0
        if self.state is DeviceState.ONLINE:
            return
        prev, since = self.state, self.since
        self.backoff.reset()
        self.store.set(sp.P_CONNECTED, 1)
        self._enter(DeviceState.ONLINE, now, f"online again ({prev.value} for {now - since:.1f} s)")

    def _failed(self, now: float, exc: ModbusError) -> None:
        self.failures += 1
        link_down = isinstance(exc, LinkDown)
        if self.state is DeviceState.ONLINE and self.failures < self.cfg.fail_threshold and not link_down:
            self.log.debug("%s (%d in a row)", reason(exc), self.failures)
            return  # one lost reply on a noisy line is not a state change
        delay = self.backoff.next()
        if link_down:
            delay = min(delay, self.cfg.link_down_cap)
        self.next_probe = now + delay
        if link_down:  # no grace for a lost port: nothing can answer until it is back
            if self.state is not DeviceState.ASLEEP:
                self._go_asleep(now, reason(exc))
            return
        if self.state is DeviceState.ONLINE:
            self._enter(DeviceState.FAILING, now,
                        f"failing: {reason(exc)} ({self.failures} in a row); probing with backoff")
        self._check_grace(now)

    def _check_grace(self, now: float) -> None:
        if self.state is DeviceState.FAILING and now - self.last_ok >= self.cfg.grace:
            self._go_asleep(now, f"no answer for {now - self.last_ok:.1f} s")

    def _go_asleep(self, now: float, why: str) -> None:
        if self.cfg.exit_on_error and self.was_online:
            raise DeviceFailed(f"failed: {why}")
        self.store.set(sp.P_CONNECTED, 0)
        self.driver.go_offline()
        self.health.refresh.gap()
        self._enter(DeviceState.ASLEEP, now, f"asleep: {why}; /Connected=0, live values invalid")

    # ---------------------------------------------------------------------------- polling
    async def _wait(self, until: float) -> None:
        """Sleep until ``until``, or (online) until the driver has a write to send."""
        delay = until - time.monotonic()
        wakeup = self.driver.wakeup
        if delay <= 0 or (self.state is DeviceState.ONLINE and wakeup.is_set()):
            await anyio.sleep(0)  # let the other devices and D-Bus run between cycles
            return
        if self.state is not DeviceState.ONLINE:
            await anyio.sleep(delay)  # writes wait for the device to answer again
            return
        expect = getattr(self.link, "expect", None)
        poll_due = self.driver.poll_deadline()
        if expect is None or poll_due > until:
            await wakeup.wait_until(until)  # one timer, no cancel scope: this runs on every idle wait
            return
        # The link may wake us a little before the poll is due: when the line is taken
        # until then anyway, the poll queues at once instead of waking on its own timer
        # while another unit's transaction is on the line, and again when it is handed
        # the line. The cycle then polls as at ``poll_due`` (``_poll_at``).
        def early() -> None:
            self._poll_at = poll_due
            wakeup.poke()

        expect(self, poll_due, early)
        try:
            await wakeup.wait_until(until)
        finally:
            self.link.unexpect(self)

    async def _poll_once(self, now: float) -> None:
        """An ONLINE cycle: pending writes first (priority lane), then what is due (by the
        time the link woke us for, if that is a little later)."""
        driver = self.driver
        await driver.service_writes(now)
        at = max(now, self._poll_at)
        self._poll_at = 0.0
        if driver.due(at):
            refreshes = driver.fast_refreshes
            await driver.poll(at, interleave=True)
            # when it last answered, not when the cycle began: a read that waited for its
            # turn behind others (devices due on the same slot) is that much younger, and a
            # controller counts its input's age from here (``PollDemand.read_age``)
            self._ok(time.monotonic())
            if driver.fast_refreshes != refreshes:  # slow blocks have cycles of their own
                self.health.refresh.mark(now)

    async def _probe(self, now: float) -> None:
        """A FAILING/ASLEEP probe: one transaction; a full poll only once it answers.

        While asleep, /Connected is 0 and live values are invalid; the poll's values are
        held back until it completes and /Connected = 1 goes out with them. A poll that
        fails half-way (the device falls silent again) withdraws what it read before
        anyone saw it."""
        await self._liveness_probe(self.probe_timeout)
        if self.never_answered:
            await self._confirm_identity()
        now = time.monotonic()
        store, asleep = self.store, self.state is DeviceState.ASLEEP
        with store.held() if asleep else contextlib.nullcontext():
            try:
                await self.driver.poll(now)
            except ModbusExceptionResponse:
                raise  # it answered, so it is awake: the poll loop marks it online as read
            except ModbusError:
                if asleep:
                    self.driver.go_offline()
                raise
            self._ok(now)
        self.health.refresh.mark(now)

    async def _confirm_identity(self) -> None:
        """First answer of a device published from memory: is it still the same one?"""
        try:
            identity = await self.driver.read_identity()
        except ModbusExceptionResponse as exc:
            raise DeviceReplaced(f"unit answers {exc}, not as a {self.model.name}") from None
        fresh = KnownIdentity.from_driver(self.model.name, identity)
        if fresh.serial != self.known.serial:
            raise DeviceReplaced(f"serial {fresh.serial} answers where {self.known.serial} was")
        self.never_answered = False
        if fresh != self.known:
            self.known = fresh
            sp.set_identity(self.store, fresh, self.model.product_name)
            await self._remember()

    async def _poll_loop(self) -> None:
        stats = self.link.stats(self.spec.unit)
        idle_turns = 0  # consecutive cycles that sent nothing yet found their deadline passed
        while True:
            now = time.monotonic()
            sent = stats.transactions + stats.timeouts + stats.frame_errors
            refused = False
            try:
                if self.state is DeviceState.ONLINE:
                    await self._poll_once(now)
                elif now >= self.next_probe:
                    await self._probe(now)
            except ModbusExceptionResponse as exc:
                # Awake, but refusing a register: a model/firmware mismatch, not a sleeping
                # device. Warn once per kind and keep going.
                self._ok(now)
                refused = True
                key = (exc.function, exc.code)
                if key not in self._exceptions_seen:
                    self._exceptions_seen.add(key)
                    self.log.warning("unit answers %s", exc)
            except ModbusError as exc:
                self._failed(now, exc)
            now = time.monotonic()
            self._check_grace(now)
            self.health.update(now)
            self.store.flush()
            if self.state is DeviceState.ONLINE:
                until = min(self.driver.next_deadline(now), now + self.cfg.idle_tick)
            else:
                until = self.next_probe
                if self.state is DeviceState.FAILING:
                    until = min(until, self.last_ok + self.cfg.grace)
                until = min(until, now + self.cfg.stats_interval)
            if refused:  # whatever was refused is still due: do not ask again at once
                until = max(until, now + self.cfg.refused_pause)
            if until <= now and stats.transactions + stats.timeouts + stats.frame_errors == sent:
                # Due now, yet this cycle had nothing to send: a deadline that nothing
                # services (a bug) would turn the loop into a busy wait taking a whole core.
                idle_turns += 1
                if idle_turns > 1:
                    if not self._spin_warned:
                        self._spin_warned = True
                        self.log.warning("a deadline in the past that nothing services; "
                                         "pausing %.2f s between cycles until it is gone", SPIN_PAUSE)
                    until = now + SPIN_PAUSE
            else:
                idle_turns = 0
            await self._wait(until)
