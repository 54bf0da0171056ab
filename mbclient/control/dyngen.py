"""The dynamic generation limit: a zero-export controller attached to one limitable inverter.

``DynamicGeneration(store, limiter, settings, bus_address=..., options=...)`` is built by the
runtime when an inverter has a power limiter; ``await dyngen.run()`` runs inside that
device's task group until cancelled. It

* registers its settings under ``/Settings/DynamicGeneration/`` and follows their changes;
* follows the grid meter, vebus and battery services over D-Bus (:mod:`.inputs`) and the
  inverter's own ``/Ac/Power`` and ``/Ac/MaxPower`` in its item store;
* on every input change runs the decision ladder (:mod:`.ladder`) and hands the result to
  the limiter as ``limiter.request(watts | None, "dyngen")`` — the limiter owns the
  deadband, the minimum write interval, the priority lane and the read-back;
* stands aside while Victron's ESS drives ``/Ac/PowerLimit`` (``limiter.ess_active``);
* publishes on the inverter's service: ``/dynamicGenerationStatus``,
  ``/dynamicGenerationPower`` (W demanded), ``/dynamicGenerationPowerMax`` (W applied),
  ``/dynamicGenerationWritesPerHour``, ``/dynamicGenerationFailSafe`` (0/1) and
  ``/dynamicGenerationInputs`` (which services are followed and their state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

from ..dbus.settings import Setting as DbusSetting
from ..errors import ConfigError
from ..items import Item, ItemStore
from . import ladder as L
from .inputs import BATTERY, GRID, VEBUS, InputTracker, RoleView, next_tick

log = logging.getLogger(__name__)

SOURCE = "dyngen"
SETTINGS = "/Settings/DynamicGeneration/"

STATUS = "/dynamicGenerationStatus"
POWER = "/dynamicGenerationPower"
POWER_MAX = "/dynamicGenerationPowerMax"
WRITES = "/dynamicGenerationWritesPerHour"
FAIL_SAFE = "/dynamicGenerationFailSafe"
INPUTS = "/dynamicGenerationInputs"


class Limiter(Protocol):
    """What the controller needs of ``mbclient.control.limiter.PowerLimiter``."""

    ess_active: bool
    applied_watts: float | None
    max_power: float | None
    writes_per_hour: float

    def request(self, watts: float | None, source: str, *, urgent: bool = False,
                exporting: bool = False) -> bool: ...


@dataclass(frozen=True, slots=True)
class Setting:
    """One localsettings entry: its name under /Settings/DynamicGeneration/, default and
    range, and the controller attribute it feeds."""

    name: str
    default: float | int | str
    min: float | int | None = None
    max: float | int | None = None
    field: str | None = None  # LadderSettings field, if any

    @property
    def path(self) -> str:
        return SETTINGS + self.name


# The seed's two settings keep their names; the rest are new, with the seed's constants as
# defaults. Types follow the default (localsettings: int → i, float → d, str → s).
SETTING_TABLE = (
    Setting("energyDifference", 0.0, -1e6, 1e6, "energy_difference"),
    Setting("derateGeneration", 0, 0, 1, "derate"),
    Setting("batterySocThreshold", 90.0, 0.0, 100.0, "soc_threshold"),
    Setting("batteryOffsetVoltage", 54.5, 0.0, 1000.0, "offset_voltage"),
    Setting("batteryFullPowerVoltage", 54.0, 0.0, 1000.0, "full_power_voltage"),
    Setting("batteryChargePowerCeiling", 3200.0, 0.0, 1e6, "charge_power_ceiling"),
    Setting("batteryDischargeThreshold", -100.0, -1e6, 0.0, "discharge_threshold"),
    Setting("safeLimit", 0.0, 0.0, 1e6, "safe_limit"),
    Setting("targetGridPower", 30.0, -1e4, 1e4, "target_grid_power"),  # W imported while limiting
    Setting("hysteresis", 50.0, 0.0, 1e4, "hysteresis"),  # W a raise must exceed before it is asked
    Setting("smoothing", 0.2, 0.01, 1.0, "smoothing"),  # EMA weight on the way up; 1 = none
    Setting("staleTimeout", 5.0, 0.2, 60.0),
    Setting("gridService", ""),
    Setting("vebusService", ""),
    Setting("batteryService", ""),
)
_BY_PATH = {s.path: s for s in SETTING_TABLE}
_LADDER_FIELDS = {f.name for f in fields(L.LadderSettings)}


@dataclass(slots=True)
class Options:
    """Per-process tunables (not user settings). Any ``LadderSettings`` field or setting name
    may also be given to change its default."""

    tick: float = 0.1  # the grid deadlines are rounded to (and the look-again period while in motion)
    call_timeout: float = 1.0  # D-Bus calls of the input tracker
    defaults: dict[str, Any] | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> Options:
        opts = cls(defaults={})
        assert opts.defaults is not None
        known_settings = {s.name for s in SETTING_TABLE}
        for key, value in (options or {}).items():
            if key == "publish_interval":
                continue  # gone: the limiter's state is published when it changes; old configurations still load
            if key in ("tick", "call_timeout"):
                try:
                    setattr(opts, key, float(value))
                except (TypeError, ValueError):
                    raise ConfigError(f"dynamic generation option {key}={value!r}: not a number") from None
            elif key in known_settings or key in _LADDER_FIELDS:
                opts.defaults[key] = value
            # anything else belongs to the device, not to us
        return opts


class DynamicGeneration:
    """The controller coroutine of one inverter (see the module docstring)."""

    def __init__(
        self,
        store: ItemStore,
        limiter: Limiter,
        settings: Any | None,
        *,
        bus_address: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.settings_client = settings
        self.bus_address = bus_address
        self.options = Options.parse(options)
        defaults = self.options.defaults or {}
        ladder_defaults = {k: v for k, v in defaults.items() if k in _LADDER_FIELDS}
        try:
            self.ladder = L.Ladder(L.LadderSettings(**ladder_defaults))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"dynamic generation: {exc}") from None
        self.values: dict[str, Any] = {s.path: defaults.get(s.name, s.default) for s in SETTING_TABLE}
        self.wake = asyncio.Event()
        self.tracker = InputTracker(
            bus_address, (GRID, VEBUS, BATTERY),
            stale_after=float(self.values[SETTINGS + "staleTimeout"]),
            call_timeout=self.options.call_timeout, tick=self.options.tick, changed=self.wake,
        )
        self._idle = False  # the settings leave nothing to control (Not Configured, G100)
        self.last: L.Step | None = None
        #: (monotonic time, watts or None) of the latest limiter requests, for diagnostics
        self.request_log: deque[tuple[float, float | None]] = deque(maxlen=1000)
        self.evaluations = 0
        self._ess = False
        self._held = False  # the last evaluation kept the limit because the grid was quiet
        self._views: tuple[RoleView, ...] = ()
        self._unsubscribe: Callable[[], None] | None = None
        self._unwatch: Callable[[], None] | None = None
        #: Told which grid meter service the controller steers on (``None``: none, or the
        #: controller is idle); the runtime polls that meter fast if it is one of its own.
        self.on_follow: Callable[[str | None], None] | None = None
        self._following: str | None = None
        #: Age in seconds of the last successful read of one of this process's own services
        #: (``None``: not ours). Set by the runtime: our own meter's D-Bus service keeps
        #: answering with its last value while the device is silent, so for it the read,
        #: not the service, tells whether the value is fresh.
        self.read_age: Callable[[str | None], float | None] | None = None
        self._own_silent = False
        # the grid reading in hand and the inverter output that was in hand when it arrived
        self._paired: tuple[float | None, float | None] = (None, None)
        self._apply_settings()
        self.add_items()

    # -- items -----------------------------------------------------------------------------------
    def add_items(self) -> None:
        """Define our paths on the inverter's service (idempotent; before export if possible)."""
        s = self.store
        if STATUS in s:
            return
        s.add(STATUS, L.NOT_CONFIGURED, kind=str)
        s.add(POWER, None, unit="W", precision=0, kind=float)
        s.add(POWER_MAX, None, unit="W", precision=0, kind=float)
        s.add(WRITES, 0.0, unit="/h", precision=1, kind=float)
        s.add(FAIL_SAFE, 0, kind=int)
        s.add(INPUTS, "", kind=str)

    # -- settings --------------------------------------------------------------------------------
    async def _register_settings(self) -> None:
        """Declare our settings (one AddSettings call) and follow their changes."""
        client = self.settings_client
        if client is None:
            return
        current = await client.add([
            DbusSetting(s.path, self.values[s.path], s.min, s.max) for s in SETTING_TABLE
        ])
        for path, value in current.items():
            if path in _BY_PATH and value is not None:
                self.values[path] = value
        self._unwatch = client.watch(SETTINGS.rstrip("/"), self._setting_changed)
        self._apply_settings()

    def _setting_changed(self, path: str, value: Any) -> None:
        if path not in _BY_PATH or value is None:
            return
        self.values[path] = value
        self._apply_settings()
        self.wake.set()

    def _apply_settings(self) -> None:
        changes: dict[str, Any] = {}
        for s in SETTING_TABLE:
            if s.field is None:
                continue
            raw = self.values[s.path]
            try:
                changes[s.field] = bool(int(raw)) if s.field == "derate" else float(raw)
            except (TypeError, ValueError):
                log.warning("ignoring setting %s=%r", s.path, raw)
        self.ladder.settings = replace(self.ladder.settings, **changes)
        cfg = self.ladder.settings
        self._idle = not cfg.energy_difference or not cfg.derate  # the ladder's first two rungs
        t = self.tracker
        try:
            t.set_stale_after(max(0.2, float(self.values[SETTINGS + "staleTimeout"])))
        except (TypeError, ValueError):
            pass
        t.prefer("grid", str(self.values[SETTINGS + "gridService"] or "") or None)
        t.prefer("vebus", str(self.values[SETTINGS + "vebusService"] or "") or None)
        t.prefer("battery", str(self.values[SETTINGS + "batteryService"] or "") or None)

    # -- run -------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Control until cancelled.

        On the way out the limit is left as it is: handing the inverter back to full power
        while nobody watches the grid meter would be the one unsafe choice.
        """
        self._following = None  # announce the followed meter afresh on every run
        await self._register_settings()
        _raise_if_cancelling()
        self.tracker.active = not self._idle  # idle: no service is followed until configured
        self._unsubscribe = self.store.subscribe(self._on_store_flush)
        try:
            async with asyncio.TaskGroup() as tg:
                tracker = tg.create_task(self.tracker.run())
                ready = asyncio.ensure_future(self.tracker.ready())
                await asyncio.wait({tracker, ready}, return_when=asyncio.FIRST_COMPLETED)
                if not ready.done():
                    ready.cancel()
                    return  # the tracker failed; the task group re-raises its error
                await self._loop()
        finally:
            if self._unsubscribe is not None:
                self._unsubscribe()
            if self._unwatch is not None:
                self._unwatch()

    def _on_store_flush(self, batch: dict[str, Item]) -> None:
        """The inverter's values changed: the ladder's inputs among them wake the loop
        unless the controller is idle, as does a change of the limiter's published state."""
        if not self._idle and ("/Ac/Power" in batch or "/Ac/MaxPower" in batch or "/Ac/PowerLimit" in batch):
            self.wake.set()
        elif self._limiter_state() != (self.store.get(POWER_MAX), self.store.get(WRITES)):
            self.wake.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            _raise_if_cancelling()
            due = self._next_look(loop.time())
            if due is None:
                await self.wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(due):  # not wait_for (see inputs.run)
                        await self.wake.wait()
            woken = self.wake.is_set()
            self.wake.clear()
            if self.tracker.active == self._idle:  # configured or idle from now on
                await self.tracker.set_active(not self._idle)
                _raise_if_cancelling()
                woken = True
            if self._idle:
                # the ladder releases whatever the inputs say: only a change is looked at
                look = woken or self.last is None
            else:
                ess = bool(self.limiter.ess_active)
                # a rise waiting for its confirmation is looked at every tick: a steady import
                # sends no signals, and the average must not wait for the next one
                look = (woken or ess != self._ess or self.last is None
                        or (self._held and not self._grid_quiet()) or self.ladder.shaper.rising
                        or self._own_silent != (self._own_meter_fault(self.tracker.view("grid")) is not None))
            if look:
                self.evaluate()
            else:
                self._publish_limiter_state()
                self.store.flush()

    def _next_look(self, now: float) -> float | None:
        """When to look again without being woken (loop time, on the tick grid shared with
        the input tracker; ``None``: only when woken). Idle (Not Configured, G100): the
        writes per hour counting down, nothing else. Else the next tick while something is
        in motion (no evaluation yet, a rise waiting for its confirmation - a steady import
        sends no signals -, a hold on a quiet grid, our own meter silent), or the first
        deadline: our own meter turning silent (its last read + the stale timeout), ESS's
        last write expiring, the writes per hour counting down. Changes of inputs, of the
        settings and of the limiter's published state wake the loop (``wake``)."""
        tick = self.options.tick
        expire = getattr(self.limiter, "writes_expire_in", None)
        left = expire() if expire is not None else None
        due = math.inf if left is None else now + left + 0.001
        if self._idle:
            return None if due == math.inf and self.last is not None else next_tick(min(due, now), tick)
        if self.last is None or self.ladder.shaper.rising or self._held or self._own_silent:
            return next_tick(now, tick)
        if self.read_age is not None:
            age = self.read_age(self._views[0].service if self._views else None)
            if age is not None:
                due = min(due, now + max(0.0, self.tracker.stale_after - age))
        ess_left = getattr(self.limiter, "ess_remaining", None)
        if ess_left is not None:
            due = min(due, now + ess_left)
        return None if due == math.inf else next_tick(max(due, now), tick)

    # -- one evaluation --------------------------------------------------------------------------
    def snapshot(self) -> L.Snapshot:
        """The ladder's inputs now (stale battery/vebus values arrive as None)."""
        now = self.tracker.clock()
        grid = self.tracker.view("grid", now)
        own = self._own_meter_fault(grid)
        self._own_silent = own is not None
        if own is not None and grid.fault is None:
            grid = replace(grid, fault=own)
        vebus = self.tracker.view("vebus", now)
        battery = self.tracker.view("battery", now)
        self._views = (grid, vebus, battery)
        rated = _num(self.store.get("/Ac/MaxPower")) if "/Ac/MaxPower" in self.store else None
        if not rated:
            rated = _num(getattr(self.limiter, "max_power", None))
        self._ess = bool(self.limiter.ess_active)
        self._held = self._grid_quiet(grid)
        grid_power = _num(grid.get("/Ac/Power"))
        return L.Snapshot(
            grid_quiet=self._held,
            grid_power=grid_power,
            grid_energy=_net_import(grid),
            grid_fault=grid.fault,
            pv_power=self._pv_paired_with(grid_power),
            rated_power=rated,
            vebus_power=_num(vebus.get("/Ac/ActiveIn/P")),
            vebus_state=_int(vebus.get("/State")),
            led_bulk=_num(vebus.get("/Leds/Bulk")),
            led_absorption=_num(vebus.get("/Leds/Absorption")),
            battery_power=_num(battery.get("/Dc/0/Power")),
            battery_voltage=_num(battery.get("/Dc/0/Voltage")),
            soc=_num(battery.get("/Soc")),
            ess_active=self._ess,
        )

    def _pv_paired_with(self, grid_power: float | None) -> float | None:
        """The inverter's output to add to this grid reading: the one in hand when the
        reading arrived, not a newer one.

        Output + grid is the site's need only for readings of the same moment. The output
        (read in process) is often newer than the grid reading (which crossed the bus and
        D-Bus); while the output falls after a lower limit, a newer output with an older,
        still exporting grid reading would ask for less than the site needs, again and
        again. Paired this way the output is the older of the two: while it falls the need
        comes out a little high (the next grid reading corrects it), never too low."""
        pv = _num(self.store.get("/Ac/Power")) if "/Ac/Power" in self.store else None
        if grid_power is None or pv is None or self._paired[0] != grid_power or self._paired[1] is None:
            self._paired = (grid_power, pv)
        return self._paired[1]

    def _own_meter_fault(self, grid: RoleView) -> str | None:
        """``'silent'`` if the grid meter is one of ours and has not been read successfully
        for the stale timeout, whatever its D-Bus service still says."""
        if self.read_age is None or grid.service is None:
            return None
        age = self.read_age(grid.service)
        if age is None or age <= self.tracker.stale_after:
            return None
        return "silent"

    def _grid_quiet(self, grid: RoleView | None = None) -> bool:
        grid = grid or self.tracker.view("grid")
        return grid.fault is None and grid.age is not None and grid.age > self.quiet_after()

    def quiet_after(self) -> float:
        """Grid silence after which no new limit is steered from the old reading.

        Chosen so that the limiter's minimum write interval has passed by the time the
        silence becomes a fault and the safe limit goes out without waiting. Guaranteed
        when the stale timeout is at least 1.5 x (interval + 0.5 s): 3.75 s for the
        limiter's default 2 s; our default is 5 s. A probe answer ends the hold.
        """
        stale = self.tracker.stale_after
        interval = float(getattr(self.limiter, "min_interval", 2.0) or 0.0)
        return max(stale / 3, min(stale / 2, stale - interval - 0.5))

    def evaluate(self) -> L.Step:
        snap = self.snapshot()
        step = self.ladder.step(snap)
        self.evaluations += 1
        previous = self.last
        self.last = step
        if step.request is not L.KEEP:
            self.request_log.append((self.tracker.clock(), step.request))
            entering_safe = step.decision.action is L.Action.SAFE and (
                previous is None or previous.decision.action is not L.Action.SAFE)
            if self.limiter.request(step.request, SOURCE, urgent=entering_safe,  # type: ignore[arg-type]
                                    exporting=step.fast) is False:
                # refused (limiting disabled, rating unknown yet): ask again next time
                self.ladder.shaper.forget()
        if previous is None or previous.status != step.status or previous.decision.reason != step.decision.reason:
            log.info("dynamic generation: %s%s", step.status,
                     f" ({step.decision.reason})" if step.decision.reason else "")
        self._tell_following(step)
        s = self.store
        s.set(STATUS, step.status)
        s.set(POWER, None if step.decision.demand is None else round(step.decision.demand, 1))
        s.set(FAIL_SAFE, int(step.decision.action is L.Action.SAFE))
        s.set(INPUTS, self._inputs_text())
        self._publish_limiter_state()
        s.flush()
        return step

    def _tell_following(self, step: L.Step) -> None:
        """While configured to limit, ask for the followed grid meter to be read fast."""
        idle = step.status in (L.NOT_CONFIGURED, L.G100)
        service = None if idle else self._views[0].service
        if service != self._following:
            self._following = service
            if self.on_follow is not None:
                self.on_follow(service)

    def _limiter_state(self) -> tuple[float | None, float | None]:
        """(W applied, writes per hour) as published."""
        applied = _num(getattr(self.limiter, "applied_watts", None))
        wph = _num(getattr(self.limiter, "writes_per_hour", None))
        return (None if applied is None else round(applied, 1), None if wph is None else round(wph, 1))

    def _publish_limiter_state(self) -> None:
        applied, wph = self._limiter_state()
        self.store.set(POWER_MAX, applied)
        self.store.set(WRITES, wph)

    def _inputs_text(self) -> str:
        parts = []
        for name, view in zip(("grid", "vebus", "battery"), self._views):
            parts.append(f"{name}: {view.service or '-'} {view.fault or 'ok'}")
        return "; ".join(parts)


# -- helpers -----------------------------------------------------------------------------------
def _raise_if_cancelling() -> None:
    """Honour a cancellation that an awaited library call swallowed.

    Python 3.11's ``asyncio.wait_for`` returns the result instead of raising when the
    cancellation races with completion (SettingsClient calls use it); the task is then
    still marked as cancelling, and without this check the controller would run on.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    v = _num(value)
    return None if v is None else int(v)


def _net_import(grid: RoleView) -> float | None:
    """C: the meter's net import in kWh — ``/Ac/Energy/Consumption`` where a meter publishes
    it (the seed's meter did), else forward − reverse (the standard grid paths)."""
    consumption = _num(grid.get("/Ac/Energy/Consumption"))
    if consumption is not None:
        return consumption
    forward, reverse = _num(grid.get("/Ac/Energy/Forward")), _num(grid.get("/Ac/Energy/Reverse"))
    if forward is None:
        return None
    return forward - (reverse or 0.0)


